"""report.html: the fleet over the day, three inline SVG panels on one time axis (simulated minutes from the first
order): the group (desired and in-service instances, each scale event and each Spot event as a mark), the backlog
(visible orders per instance in service against the target, and the oldest order's age), and the orders each
instance applied per simulated minute. Element ids and classes are what chaos/check-traffic-report.py reads."""

from __future__ import annotations

import html

from harness import parse_time

W, LEFT, RIGHT, H, TOP, BOTTOM = 1000, 60, 20, 200, 24, 30
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]  # fmt: skip


def _poly(cls: str, pts: list[tuple[float, float]], color: str, extra: str = "") -> str:
    d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    return (f'<polyline class="{cls}" data-points="{len(pts)}" points="{d}" fill="none" stroke="{color}" '
            f'stroke-width="2" {extra}/>')  # fmt: skip


def _panel(pid: str, title: str, t1: float, ymax: float, body: list[str], ylabel: str) -> str:
    x = lambda m: LEFT + m / max(t1, 1e-9) * (W - LEFT - RIGHT)  # noqa: E731
    out = [f'<h2>{html.escape(title)}</h2>',
           f'<svg id="{pid}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           'font-family="sans-serif" font-size="11">',
           f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#999"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#999"/>',
           f'<text x="4" y="{TOP - 8}">{html.escape(ylabel)}</text>',
           f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{ymax:g}</text>',
           f'<text x="{LEFT - 6}" y="{H - BOTTOM}" text-anchor="end">0</text>']  # fmt: skip
    step = max(1, int(t1 // 10) or 1)
    for m in range(0, int(t1) + 1, step):
        out.append(f'<text x="{x(m):.1f}" y="{H - 10}" text-anchor="middle">{m}</text>')
    out += body
    out.append("</svg>")
    return "\n".join(out)


def page(report: dict, samples: list[dict], ages: list[float], status: dict, records: list[dict], t0: float,
         scale: float, target: float) -> str:  # fmt: skip
    mins = lambda t: (t - t0) / scale / 60  # noqa: E731
    t1 = max([mins(s["t"]) for s in samples] + [1.0])
    xs = lambda m: LEFT + m / t1 * (W - LEFT - RIGHT)  # noqa: E731
    y = lambda v, vmax: H - BOTTOM - v / max(vmax, 1e-9) * (H - TOP - BOTTOM)  # noqa: E731

    # The group.
    nmax = max([s["desired"] for s in samples] + [s["in_service"] for s in samples] + [1])
    group = [_poly("desired", [(xs(mins(s["t"])), y(s["desired"], nmax)) for s in samples], "#000"),
             _poly("in-service", [(xs(mins(s["t"])), y(s["in_service"], nmax)) for s in samples], "#2ca02c")]  # fmt: skip
    for e in report["figures"]["scale_events"]:
        at = parse_time(e["at"])
        if at is None:
            continue
        xx = xs(mins(at))
        color = "#d62728" if e["kind"] == "scale_out" else "#1f77b4"
        group.append(f'<line class="scale-event" data-kind="{e["kind"]}" x1="{xx:.1f}" y1="{TOP}" x2="{xx:.1f}" '
                     f'y2="{H - BOTTOM}" stroke="{color}" stroke-dasharray="4 3"><title>{html.escape(e["event"])}'
                     "</title></line>")  # fmt: skip
    for s in report.get("spot_timeline", []):
        xx = xs(mins(s["at"]))
        group.append(f'<text class="spot-event" data-kind="{s["kind"]}" x="{xx:.1f}" y="{TOP + 10}" '
                     f'text-anchor="middle" fill="#7b61ff">{"S" if s["kind"] == "fis" else "R"}</text>')  # fmt: skip
    group.append(f'<text x="{W - RIGHT}" y="{TOP - 8}" text-anchor="end">black: desired, green: in service, '
                 'red dashes: scale out, blue dashes: scale in, S: Spot interruption, R: rebalance</text>')  # fmt: skip

    # The backlog.
    per = [s["visible"] / max(1, s["in_service"]) for s in samples]
    bmax = max([*per, target * 1.2])
    amax = max([*ages, 1.0])
    age = [_poly("oldest-age", [(xs(mins(s["t"])), y(a, amax)) for s, a in zip(samples, ages, strict=True)],
                 "#8c564b"),
           f'<text x="{W - RIGHT}" y="{TOP - 8}" text-anchor="end">the age of the oldest order sent and not yet '
           "recorded, real seconds</text>"]  # fmt: skip
    backlog = [_poly("per-instance", [(xs(mins(s["t"])), y(v, bmax)) for s, v in zip(samples, per, strict=True)],
                     "#d62728"),
               f'<line class="target" x1="{LEFT}" y1="{y(target, bmax):.1f}" x2="{W - RIGHT}" '
               f'y2="{y(target, bmax):.1f}" stroke="#555" stroke-dasharray="6 4"/>',
               f'<text x="{W - RIGHT}" y="{TOP - 8}" text-anchor="end">red: visible orders per instance in service, '
               f'grey dashes: the target ({target:g})</text>']  # fmt: skip

    # Orders applied per instance, per simulated minute.
    by: dict[str, list[float]] = {}
    for r in records:
        at = parse_time(r.get("ProcessedAt"))
        if at is not None:
            by.setdefault(r.get("ProcessedBy") or "?", []).append(mins(at))
    buckets = int(t1) + 1
    series = {}
    for inst, ts in by.items():
        counts = [0] * buckets
        for m in ts:
            if 0 <= m < buckets:
                counts[int(m)] += 1
        series[inst] = counts
    omax = max([max(c) for c in series.values()] + [1])
    lanes = []
    for k, (inst, counts) in enumerate(sorted(series.items())):
        pts = [(xs(m + 0.5), y(c, omax)) for m, c in enumerate(counts)]
        lanes.append(_poly("instance", pts, COLORS[k % len(COLORS)], f'data-instance="{html.escape(inst)}"')
                     .replace("/>", f"><title>{html.escape(inst)}: {sum(counts)} orders</title></polyline>"))  # fmt: skip
    lanes.append(f'<text x="{W - RIGHT}" y="{TOP - 8}" text-anchor="end">{len(series)} instances, one line each</text>')

    f = report["figures"]
    head = (f'<p id="verdict" class="{report["verdict"]}">Verdict: <b>{report["verdict"]}</b> — '
            f'{f["orders_recorded"]} of {f["orders_sent"]} orders recorded; lost {report["verify"].get("lost")}, '
            f'twice {report["verify"].get("applied_twice")}, out of order {report["verify"].get("out_of_order")}, '
            f'gaps {report["verify"].get("position_gaps")}, second-consumer receives '
            f'{report["second_consumer"]["second_consumer_receives"]}</p>')  # fmt: skip
    text = html.escape(report.get("text", ""))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Traffic run: the fleet over the day</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1040px}} .OK b{{color:#2ca02c}} .FAIL b{{color:#b00020}}
pre{{background:#f6f6f6;padding:8px;white-space:pre-wrap}}</style></head>
<body><h1>Traffic run: the fleet over the day</h1>
{head}
<p>Time axis: simulated minutes from the first order (time scale {scale:g}: one minute is {60 * scale:g} s real).</p>
{_panel("fleet", "The group: desired and in service, scale and Spot events", t1, nmax, group, "instances")}
{
        _panel(
            "backlog",
            "The backlog: visible orders per instance in service",
            t1,
            round(bmax),
            backlog,
            "orders / instance",
        )
    }
{_panel("age", "The oldest order's age", t1, round(amax, 1), age, "seconds")}
{_panel("orders", "Orders applied per instance per simulated minute", t1, omax, lanes, "orders / min")}
<pre id="summary">{text}</pre>
</body></html>
"""
