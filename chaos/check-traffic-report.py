#!/usr/bin/env python3
"""Check the traffic run's fleet chart as a person sees it: open report.html in a real headless browser (the
browser and DOM helpers of chaos/check-report.py), read the page as rendered and assert, against report.json:

- the verdict shown is the run's;
- the group panel: a desired and an in-service curve with points, one mark per scale event of the run (and at
  least one scale-out when the run scaled out), the Spot events marked;
- the backlog panel: the backlog-per-instance curve and the target line; the oldest-age curve;
- the orders panel: one curve per instance that applied orders.

    chaos/check-traffic-report.py OUT_DIR [--screenshot FILE.png]
    chaos/check-traffic-report.py --self-test OUT_DIR   # plant broken copies of a good page: each must fail

Exit status: 0 when every check holds, 1 when one fails, 2 when no browser can be run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("check_report", HERE / "check-report.py")
cr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cr)


def check_dom(dom: str, report: dict) -> tuple[list[str], str]:
    doc = cr.parse(dom)
    bad: list[str] = []
    v = doc.by_id("verdict")
    if v is None or f"Verdict: {report['verdict']}" not in " ".join(v.text().split()):
        bad.append(f"verdict {report['verdict']} not shown")
    svgs = {i: doc.by_id(i) for i in ("fleet", "backlog", "age", "orders")}
    for name, node in svgs.items():
        if node is None or node.tag != "svg":
            bad.append(f"no svg#{name}")
    if bad:
        return bad, "panels missing"

    def curve(svg, cls: str, least: int = 3) -> None:
        nodes = svg.find_all("polyline", cls)
        if not nodes or int(nodes[0].attrs.get("data-points", 0)) < least:
            bad.append(f"svg#{svg.attrs['id']}: no {cls} curve with {least}+ points")

    curve(svgs["fleet"], "desired")
    curve(svgs["fleet"], "in-service")
    curve(svgs["backlog"], "per-instance")
    curve(svgs["age"], "oldest-age")
    if not svgs["backlog"].find_all("line", "target"):
        bad.append("svg#backlog: no target line")
    events = report["figures"]["scale_events"]
    marks = svgs["fleet"].find_all("line", "scale-event")
    if len(marks) != len(events):
        bad.append(f"{len(marks)} scale-event marks for {len(events)} scale events")
    outs = [m for m in marks if m.attrs.get("data-kind") == "scale_out"]
    if any(e["kind"] == "scale_out" for e in events) and not outs:
        bad.append("the run scaled out but no scale-out is marked")
    spots = svgs["fleet"].find_all("text", "spot-event")
    if len(spots) != len(report.get("spot_timeline", [])):
        bad.append(f"{len(spots)} Spot marks for {len(report.get('spot_timeline', []))} Spot events")
    lines = svgs["orders"].find_all("polyline", "instance")
    want = {k for k in report["figures"]["orders_per_instance"] if k != "?"}
    got = {n.attrs.get("data-instance") for n in lines}
    if got != want:
        bad.append(f"orders panel: {len(got)} instance curves for {len(want)} instances with orders")
    seen = (f"verdict {report['verdict']}, {len(marks)} scale events ({len(outs)} out), {len(spots)} Spot marks, "
            f"{len(lines)} instance curves")  # fmt: skip
    return bad, seen


def self_test(out: Path, report: dict) -> int:
    html = (out / "report.html").read_text()
    plants = {
        "desired curve removed": re.sub(r'<polyline class="desired"[^>]*/>', "", html, count=1),
        "a scale event dropped": re.sub(r'<line class="scale-event".*?</line>', "", html, count=1, flags=re.S),
        "an instance curve dropped": re.sub(r'<polyline class="instance".*?</polyline>', "", html, count=1, flags=re.S),
        "the verdict changed": html.replace("Verdict: <b>OK", "Verdict: <b>FAIL", 1)
        if report["verdict"] == "OK"
        else html.replace("Verdict: <b>FAIL", "Verdict: <b>OK", 1),
        "the target line removed": re.sub(r'<line class="target"[^>]*/>', "", html, count=1),
    }
    failed = 0
    with tempfile.TemporaryDirectory(prefix="traffic-selftest-") as d:
        for name, text in plants.items():
            if text == html:
                print(f"self-test: plant '{name}' changed nothing", file=sys.stderr)
                failed += 1
                continue
            p = Path(d) / "report.html"
            p.write_text(text)
            bad, _ = check_dom(cr.rendered_dom(p), report)
            print(f"self-test: {name}: {'caught: ' + bad[0] if bad else 'NOT caught'}")
            failed += 0 if bad else 1
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the traffic run's --out directory")
    p.add_argument("--screenshot", type=Path)
    p.add_argument("--self-test", action="store_true")
    a = p.parse_args()
    report = json.loads((a.out / "report.json").read_text())
    try:
        if a.self_test:
            return self_test(a.out, report)
        bad, seen = check_dom(cr.rendered_dom(a.out / "report.html"), report)
        if a.screenshot:
            cr.screenshot(a.out / "report.html", a.screenshot, 1080, 1250)
            seen += f"; screenshot {a.screenshot}"
    except cr.NoBrowser as e:
        print(f"check-traffic-report: {e}", file=sys.stderr)
        return 2
    for b in bad:
        print(f"check-traffic-report: FAIL: {b}", file=sys.stderr)
    print(f"check-traffic-report: {'FAIL' if bad else 'OK'}: {seen}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
