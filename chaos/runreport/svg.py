"""The report's timeline, an inline SVG: orders applied per instance over time (cumulative), then one lane per
instance (its lifecycle state as the background, a tick per order, the interruption's marks)."""

from __future__ import annotations

import html

from harness import hms, parse_time

from .model import shown_instances

MARKS = [
    ("rebalance", "R", "#7b61ff", "rebalance recommendation"),
    ("notice", "N", "#d62728", "interruption notice"),
    ("drain_start", "D", "#ff7f0e", "drain started"),
    ("drain_end", "C", "#a05a00", "drain report logged"),
    ("hook_completed", "H", "#2ca02c", "lifecycle hook completed"),
    ("hook_timed_out", "H!", "#b00020", "lifecycle hook timed out"),
    ("terminated", "T", "#000000", "terminated"),
]


def render_svg(records: list[dict], stories: dict, per_instance: dict) -> str:
    times = [parse_time(r.get("ProcessedAt")) for r in records]
    times = [t for t in times if t]
    shown, color = shown_instances(stories, per_instance)
    marks = [stories[i].get(k) for i in shown if i in stories for k, *_ in MARKS]
    marks += [stories[i].get("launched") for i in shown if i in stories and stories[i].get("replaces")]
    allt = times + [t for t in marks if t]
    if not allt:
        return "<p>No records and no events to draw.</p>"
    t0, t1 = min(allt), max(allt)
    pad = max(0.5, (t1 - t0) * 0.04)
    t0, t1 = t0 - pad, t1 + pad
    W, left, right = 1000, 170, 20
    top_h, lane_h, gap = 220, 46, 40
    H = top_h + gap + lane_h * len(shown) + 50
    x = lambda t: left + (t - t0) / (t1 - t0) * (W - left - right)  # noqa: E731
    out = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="12">'
    ]
    out.append(f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>')
    # Time axis ticks.
    span = t1 - t0
    step = next(s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600) if span / s <= 12)
    t = (int(t0 / step) + 1) * step
    while t < t1:
        xx = x(t)
        out.append(f'<line x1="{xx:.1f}" y1="20" x2="{xx:.1f}" y2="{H - 40}" stroke="#eee"/>')
        out.append(f'<text x="{xx:.1f}" y="{H - 24}" text-anchor="middle" fill="#555">{hms(t, millis=step < 1)}</text>')
        t += step
    out.append(f'<text x="{left}" y="{H - 6}" fill="#555">time (UTC)</text>')
    # Top panel: cumulative orders applied per instance.
    n_max = max(per_instance.values()) if per_instance else 1
    y_top = lambda n: 20 + (top_h - 20) * (1 - n / max(1, n_max))  # noqa: E731
    out.append('<text x="10" y="34" fill="#333" font-weight="bold">orders applied</text>')
    out.append('<text x="10" y="50" fill="#555">(cumulative, per instance)</text>')
    out.append(f'<line x1="{left}" y1="{top_h}" x2="{W - right}" y2="{top_h}" stroke="#999"/>')
    out.append(f'<text x="{left - 6}" y="{y_top(n_max) + 4:.1f}" text-anchor="end" fill="#555">{n_max}</text>')
    out.append(f'<text x="{left - 6}" y="{top_h + 4}" text-anchor="end" fill="#555">0</text>')
    for inst in shown:
        ts = sorted(
            parse_time(r.get("ProcessedAt")) for r in records if r.get("ProcessedBy") == inst and r.get("ProcessedAt")
        )
        if not ts:
            continue
        pts = [f"{x(ts[0]):.1f},{y_top(0):.1f}"]
        for k, tt in enumerate(ts, start=1):
            pts.append(f"{x(tt):.1f},{y_top(k - 1):.1f}")
            pts.append(f"{x(tt):.1f},{y_top(k):.1f}")
        out.append(f'<polyline fill="none" stroke="{color[inst]}" stroke-width="2" points="{" ".join(pts)}"/>')
        out.append(f'<text x="{x(ts[-1]) + 4:.1f}" y="{y_top(len(ts)) - 4:.1f}" fill="{color[inst]}">{len(ts)}</text>')
    # Interruption marks across the top panel.
    for inst in shown:
        s = stories.get(inst, {})
        for key, label, c, _ in MARKS:
            if s.get(key) and key in ("notice", "terminated"):
                xx = x(s[key])
                out.append(
                    f'<line x1="{xx:.1f}" y1="20" x2="{xx:.1f}" y2="{top_h}" stroke="{c}" stroke-dasharray="4,3"/>'
                )
                ty = 30 if key == "notice" else 46
                out.append(f'<text x="{xx + 3:.1f}" y="{ty}" fill="{c}">{label} {inst[-6:]}</text>')
    # Lanes: lifetime bar coloured by state, one tick per order, the marks.
    y0 = top_h + gap
    for k, inst in enumerate(shown):
        s = stories.get(inst, {})
        yy = y0 + k * lane_h
        label = inst + (f" (replaces …{s['replaces'][-6:]})" if s.get("replaces") else "")
        out.append(f'<text x="10" y="{yy + 24}" fill="{color[inst]}" font-size="11">{html.escape(label)}</text>')
        start = s.get("launched") or t0
        segs = [
            (start, s.get("in_service") or start, "#ddd", "Pending"),
            (
                s.get("in_service") or start,
                s.get("terminating_wait") or s.get("terminating_proceed") or s.get("terminated") or t1,
                "#d8f0d8",
                "InService",
            ),
        ]
        if s.get("terminating_wait"):
            segs.append(
                (
                    s["terminating_wait"],
                    s.get("terminating_proceed") or s.get("terminated") or t1,
                    "#ffe0a0",
                    "Terminating:Wait",
                )
            )
        if s.get("terminating_proceed"):
            segs.append((s["terminating_proceed"], s.get("terminated") or t1, "#f4b0a0", "Terminating:Proceed"))
        for a, b, c, name in segs:
            a, b = max(a, t0), min(b, t1)
            if b > a:
                out.append(
                    f'<rect x="{x(a):.1f}" y="{yy + 8}" width="{max(1, x(b) - x(a)):.1f}" height="26" fill="{c}"><title>{name}</title></rect>'
                )
        for r in records:
            if r.get("ProcessedBy") == inst and r.get("ProcessedAt"):
                xx = x(parse_time(r["ProcessedAt"]))
                out.append(
                    f'<line x1="{xx:.1f}" y1="{yy + 12}" x2="{xx:.1f}" y2="{yy + 30}" stroke="{color[inst]}" stroke-width="1.2"><title>{html.escape(str(r.get("OrderID")))} {html.escape(str(r.get("MessageGroupId")))} #{r.get("GroupPosition")}</title></line>'
                )
        for key, label, c, title in MARKS:
            if s.get(key):
                xx = x(s[key])
                out.append(
                    f'<line x1="{xx:.1f}" y1="{yy + 4}" x2="{xx:.1f}" y2="{yy + 38}" stroke="{c}" stroke-width="2"/>'
                )
                out.append(
                    f'<text x="{xx + 2:.1f}" y="{yy + 6}" fill="{c}" font-size="10" font-weight="bold">{label}<title>{title} {hms(s[key])}</title></text>'
                )
    # Legend, one line under the top panel.
    lx = 10
    for _, label, c, title in MARKS:
        out.append(
            f'<text x="{lx:.0f}" y="{top_h + 26}" fill="{c}" font-size="10"><tspan font-weight="bold">{label}</tspan> {title}</text>'
        )
        lx += 14 + 5.6 * (len(title) + len(label) + 1)
    out.append("</svg>")
    return "\n".join(out)
