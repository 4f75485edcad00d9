#!/usr/bin/env python3
"""Check the demo's report as a person sees it: open report.html in a real headless browser (Debian's
`chromium`), read the page as rendered (the DOM after its script ran) and assert what a person looks for:

- the verdict (OK unless --expect-verdict says otherwise), and no rendering error;
- the per-group view: one row per group, its cells numbered 1, 2, 3... in order, each coloured like the instance
  that applied it in the legend; an interrupted instance in the legend;
- the interruption marked in the rows, and at least one row where the interrupted instance's cells come before
  the mark and another instance's after it (the handover, visibly);
- a non-empty timeline chart (curves with points, one tick per order).

    chaos/check-report.py REPORT.html [--screenshot FILE.png] [--width 1100] [--height 1400]
                          [--expect-verdict OK] [--expect-orders N]
    chaos/check-report.py --self-test REPORT.html   # plant broken copies of a good report: each must fail

The browser: $CHROMIUM, else chromium / chromium-browser on PATH (scripts/bootstrap installs Debian's).
Exit status: 0 when every check holds, 1 when one fails, 2 when no browser can be run.
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path


class NoBrowser(Exception):
    pass


def browser() -> str:
    for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if c and shutil.which(c):
            return shutil.which(c)
    raise NoBrowser(
        "no chromium found: run scripts/bootstrap (as root it installs Debian's chromium), "
        "`apt-get install -y chromium`, or set CHROMIUM"
    )


def run_browser(url: str, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="check-report-") as profile:
        cmd = [
            browser(),
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
        # check=False: the caller reads the status (a page that fails to render is an answer, not a crash).
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def rendered_dom(path: Path) -> str:
    r = run_browser(path.resolve().as_uri(), "--dump-dom")
    if r.returncode != 0 or "<html" not in r.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {r.returncode}): {r.stderr.strip()[-400:]}")
    return r.stdout


def screenshot(path: Path, png: Path, width: int, height: int) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        png.unlink()
    r = run_browser(path.resolve().as_uri(), f"--window-size={width},{height}", f"--screenshot={png.resolve()}")
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium --screenshot wrote nothing (exit {r.returncode}): {r.stderr.strip()[-400:]}")


# ---- the rendered DOM as a small tree ---------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.walk()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [n for n in self.walk() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)]

    def by_id(self, ident: str) -> Node | None:
        return next((n for n in self.walk() if n.attrs.get("id") == ident), None)


class TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, {k: (v or "") for k, v in attrs}, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: (v or "") for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(dom: str) -> Node:
    b = TreeBuilder()
    b.feed(dom)
    b.close()
    return b.root


def background(node: Node) -> str:
    m = re.search(r"background(?:-color)?:\s*([^;]+)", node.attrs.get("style", ""))
    return re.sub(r"\s+", "", m.group(1)) if m else ""


# ---- the checks -------------------------------------------------------------------------------------------------


def check_dom(dom: str, expect_verdict: str = "OK", expect_orders: int | None = None) -> tuple[list[str], str]:
    """(failures, what was seen)."""
    doc = parse(dom)
    bad: list[str] = []
    verdict = doc.by_id("verdict")
    if verdict is None:
        bad.append("no verdict on the page")
    elif verdict.text().strip() != expect_verdict:
        bad.append(f"verdict {verdict.text().strip()!r}, expected {expect_verdict!r}")
    err = doc.by_id("render-error")
    if err is None or err.text().strip():
        bad.append(
            "the page reports a rendering error: " + (err.text().strip() if err is not None else "(no error slot)")
        )

    legend = {n.attrs.get("data-instance"): n for n in doc.find_all(cls="legend-instance")}
    colours = {}
    for iid, n in legend.items():
        sw = next((c for c in n.find_all(cls="swatch")), None)
        colours[iid] = background(sw) if sw is not None else ""
    interrupted = {i for i, n in legend.items() if n.attrs.get("data-role") == "interrupted"}
    if not legend:
        bad.append("no instance legend")
    if not interrupted:
        bad.append("no interrupted instance in the legend")

    view = doc.by_id("groups")
    rows = view.find_all(cls="group-row") if view is not None else []
    if not rows:
        bad.append("the per-group view is empty")
    cells_total, marked_rows, handover_rows, longest = 0, 0, 0, 0
    for row in rows:
        g = row.attrs.get("data-group", "?")
        items = [n for n in row.walk() if {"cell", "mark-interruption"} & n.classes]
        cells = [n for n in items if "cell" in n.classes]
        cells_total += len(cells)
        longest = max(longest, len(cells))
        pos = [n.attrs.get("data-pos") for n in cells]
        if pos != [str(k) for k in range(1, len(cells) + 1)]:
            bad.append(f"{g}: positions {pos}, not 1..{len(cells)} in order")
        for n in cells:
            if n.text().strip() != n.attrs.get("data-pos"):
                bad.append(f"{g}: cell {n.attrs.get('data-pos')} reads {n.text().strip()!r}")
                break
        for n in cells:
            iid = n.attrs.get("data-instance")
            if iid not in legend:
                bad.append(f"{g}: #{n.attrs.get('data-pos')} applied by {iid}, which the legend does not show")
                break
            if not background(n) or background(n) != colours.get(iid):
                bad.append(
                    f"{g}: #{n.attrs.get('data-pos')} is coloured {background(n)!r}, its instance {iid} {colours.get(iid)!r}"
                )
                break
        marks = [
            k
            for k, n in enumerate(items)
            if "mark-interruption" in n.classes and n.attrs.get("data-instance") in interrupted
        ]
        if marks:
            marked_rows += 1
            k = marks[0]
            who = marks and items[k].attrs.get("data-instance")
            # A handover: the interrupted instance applied some of the row (before the mark, or after it when
            # it finished in-flight orders during its drain) and another instance went on after its last one.
            cells = [n.attrs.get("data-instance") for n in items if "cell" in n.classes]
            if who in cells:
                last = max(i for i, c in enumerate(cells) if c == who)
                if any(c != who for c in cells[last + 1 :]):
                    handover_rows += 1
    if rows and not marked_rows:
        bad.append("no interruption mark in any group row")
    if rows and marked_rows and not handover_rows:
        bad.append("no group row shows the interrupted instance before the mark and another instance after it")
    if expect_orders is not None and cells_total != expect_orders:
        bad.append(f"{cells_total} orders in the per-group view, expected {expect_orders}")

    svg = doc.by_id("timeline")
    curves = ticks = 0
    if svg is None:
        bad.append("no timeline chart")
    else:
        for pl in svg.find_all("polyline"):
            if len(re.findall(r"-?[\d.]+,-?[\d.]+", pl.attrs.get("points", ""))) >= 2:
                curves += 1
        ticks = sum(
            1 for ln in svg.find_all("line") if any(isinstance(c, Node) and c.tag == "title" for c in ln.children)
        )
        if curves == 0:
            bad.append("the timeline chart has no curve")
        if ticks == 0 or (cells_total and ticks != cells_total):
            bad.append(f"the timeline has {ticks} order ticks for {cells_total} orders")
    # The figures the workers' EMF records carry (what CloudWatch extracts on AWS), with the interrupted
    # instance's drain record among them.
    figures = doc.by_id("emf-figures")
    emf_rows = figures.find_all("tr", "emf-row") if figures is not None else []
    if not emf_rows:
        bad.append("no figures from the workers' EMF records")
    elif not any(r.attrs.get("data-instance") in interrupted and "finished" in r.text() for r in emf_rows):
        bad.append("the interrupted instance's EMF drain record is not in the figures")
    seen = (
        f"verdict {verdict.text().strip() if verdict is not None else '-'}; {len(rows)} group rows of up to "
        f"{longest} positions, {cells_total} orders; {len(legend)} instances ({len(interrupted)} interrupted); "
        f"interruption marked in {marked_rows} rows, handover visible in {handover_rows}; "
        f"timeline {curves} curves, {ticks} ticks; EMF figures for {len(emf_rows)} instances"
    )
    return bad, seen


def check_file(path: Path, expect_verdict: str = "OK", expect_orders: int | None = None) -> tuple[list[str], str]:
    return check_dom(rendered_dom(path), expect_verdict, expect_orders)


# ---- planted breakage -------------------------------------------------------------------------------------------

DATA = re.compile(r'(<script type="application/json" id="group-data">)(.*?)(</script>)', re.S)


def with_data(page: str, change) -> str:
    m = DATA.search(page)
    data = json.loads(m.group(2).replace("<\\/", "</"))
    change(data)
    return page[: m.start(2)] + json.dumps(data).replace("</", "<\\/") + page[m.end(2) :]


def swap_two(data):
    g = next(g for g in data["groups"] if len(g["orders"]) >= 2)
    g["orders"][0], g["orders"][1] = g["orders"][1], g["orders"][0]


def recolour(data):
    data["instances"][0]["color"] = "#00ff00"
    for i in data["instances"][1:]:
        if i["color"] == "#00ff00":
            i["color"] = "#000001"


PLANTS = [
    ("a script error (nothing rendered)", lambda p: p.replace("JSON.parse(", "JSON.parse(notDefined + ", 1)),
    ("two positions of a group swapped", lambda p: with_data(p, swap_two)),
    ("no interruption marks", lambda p: with_data(p, lambda d: d.__setitem__("interruptions", []))),
    ("an empty timeline chart", lambda p: re.sub(r"<polyline[^>]*/>", "", p)),
    ("the verdict FAILED", lambda p: re.sub(r'(<b id="verdict"[^>]*>)OK<', r"\1FAILED<", p)),
    (
        "a cell coloured unlike its instance",
        lambda p: p.replace("c.style.background = colour[o.by]", "c.style.background = '#abcdef' || colour[o.by]", 1),
    ),
]


def self_test(path: Path) -> int:
    good = path.read_text()
    bad, seen = check_file(path)
    if bad:
        print(f"check-report self-test: the unplanted report fails: {bad}", file=sys.stderr)
        return 1
    print(f"check-report self-test: unplanted report passes ({seen})")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="check-report-plant-") as d:
        for name, plant in PLANTS:
            planted = plant(good)
            if planted == good:
                print(f"check-report self-test: could not plant {name}", file=sys.stderr)
                failures += 1
                continue
            f = Path(d) / "report.html"
            f.write_text(planted)
            bad, _ = check_file(f)
            if bad:
                print(f"check-report self-test: planted {name}: caught ({bad[0]})")
            else:
                print(f"check-report self-test: planted {name}: NOT caught", file=sys.stderr)
                failures += 1
    print(
        f"check-report self-test: {'OK' if not failures else 'FAILED'}: {len(PLANTS) - failures} of {len(PLANTS)} plants caught"
    )
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("--screenshot", type=Path, help="also write the rendered page as a PNG here")
    p.add_argument("--width", type=int, default=1100)
    p.add_argument("--height", type=int, default=1400)
    p.add_argument("--expect-verdict", default="OK")
    p.add_argument("--expect-orders", type=int)
    p.add_argument("--self-test", action="store_true", help="plant broken copies of the report; each must fail")
    a = p.parse_args(argv)
    if not a.report.exists():
        print(f"check-report: {a.report} does not exist", file=sys.stderr)
        return 1
    try:
        if a.self_test:
            return self_test(a.report)
        bad, seen = check_file(a.report, a.expect_verdict, a.expect_orders)
        if a.screenshot:
            screenshot(a.report, a.screenshot, a.width, a.height)
            seen += f"; screenshot {a.screenshot} ({a.screenshot.stat().st_size // 1024} KB)"
    except NoBrowser as e:
        print(f"check-report: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"check-report: FAILED: {e}", file=sys.stderr)
        return 1
    for b in bad:
        print(f"check-report: FAILED: {b}", file=sys.stderr)
    print(f"check-report: {'OK' if not bad else 'FAILED'}: {a.report} as rendered by chromium: {seen}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
