#!/usr/bin/env python3
"""The run report: a short text summary and an HTML page with an inline SVG timeline of orders applied per
instance over time (from the orders table's ProcessedAt / ProcessedBy), with each instance's rebalance
recommendation, interruption notice, drain, hook completion and termination marked (from spot-sim's status
events and the worker logs).

    chaos/report.py --dir out/demo-X [--status FILE] [--manifest FILE] [--verify FILE] [--table orders]
                    [--require-interruption] [--title TEXT]

Reads from DIR by default: spot-sim-status.json, manifest.jsonl, verify.json (from `order-worker verify
--json`), fis/fis-run.json (optional); writes DIR/records.json, DIR/report.html and DIR/summary.txt, and prints
the summary. The table is scanned with boto3 at AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL (real AWS when
unset), keeping only the manifest's groups.

Exit status: 0 when the audit is clean (nothing lost, applied twice or out of order) and, with
--require-interruption, at least one instance was interrupted and each interrupted instance drained, completed
its lifecycle hook, was terminated and was replaced. 1 otherwise.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import hms, parse_time, sim, worker_log

# ---- inputs --------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def scan_table(table: str, groups: set[str]) -> list[dict]:
    import boto3  # the project's venv has it (requirements/chaos.txt)

    from harness import ddb

    endpoint = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("dynamodb", endpoint_url=endpoint)
    return ddb.scan(client, table, keep=lambda r: not groups or r.get("MessageGroupId") in groups)


# The story's name for each kind of spot-sim event (its `kind`, snake_case EventKind) that the timeline shows.
EVENT_KINDS = {
    "launched": "launched",
    "in_service": "in_service",
    "rebalance": "rebalance",
    "notice": "notice",
    "terminating_wait": "terminating_wait",
    "hook_completed": "hook_completed",
    "terminating_proceed": "terminating_proceed",
    "sigterm": "sigterm",
    "sigkill": "sigkill",
    "worker_exited": "exited",
    "terminated": "terminated",
}


def instance_story(inst: dict) -> dict:
    """First time of each kind of event of one instance, plus the drain from its worker log."""
    st: dict = {"id": inst["id"], "replaces": inst.get("replaces"), "state": inst.get("lifecycle_state")}
    for ev in inst.get("events", []):
        kind = EVENT_KINDS.get(ev.get("kind"))
        if kind is None:
            continue
        what = ev.get("event", "")
        st.setdefault(kind, parse_time(ev.get("at")))
        if kind == "notice":
            st.setdefault("notice_text", what)
        if kind == "hook_completed":
            st.setdefault("hook_result", what.split()[-1])  # the result (CONTINUE): the event's last word
    if timed_out := sim.hook_timed_out(inst):
        st.setdefault("hook_timed_out", parse_time(timed_out.get("at")))
    st.setdefault("launched", parse_time(inst.get("launched_at")))
    if inst.get("terminated_at"):
        st.setdefault("terminated", parse_time(inst["terminated_at"]))
    log_path = inst.get("log_path")
    # Drains of instances the region is terminating (a drain at the end of the run, on shutdown, is not news).
    if log_path and Path(log_path).exists() and (st.get("notice") or st.get("terminating_wait")):
        for e in worker_log.events(log_path):
            t, message = e["t"], str(e.get("message", ""))
            if t is None:
                continue
            if message.startswith("rebalance recommendation: taking no new message groups") and "paused" not in st:
                st["paused"] = t
            elif message == "draining" and "drain_start" not in st:
                st["drain_start"] = t
                st["drain_trigger"] = str(e.get("trigger", ""))
                for k in ("groups_held", "messages_held"):
                    if isinstance(e.get(k), int):
                        st[f"drain_{k}"] = e[k]
            elif message.startswith("lifecycle hook completed") and "drain_start" in st and "hook_logged" not in st:
                st["hook_logged"] = t
            elif message == "drain complete" and "drain_end" not in st:
                # Logged once the worker's last long poll has returned (its took_ms counts that wait too): the
                # honest drain time is from "draining" to the hook completion, both by timestamp.
                st["drain_end"] = t
                for k in ("finished", "released", "took_ms", "deadline_hit"):
                    if k in e:
                        st[f"drain_{k}"] = e[k]
    return st


# The figures CloudWatch would extract from each worker's EMF records (src/emf.rs): interval records carry
# deltas, so their sums are the totals; the drain record says what the drain did.
EMF_SUMS = ("OrdersAccepted", "OrdersRejected", "OrdersDuplicate", "OrdersConflict", "MessagesReleased")
EMF_DRAIN = ("DrainOrdersFinished", "DrainOrdersReleased", "DrainDeadlineHit", "HookCompleted", "DrainSeconds")


def emf_figures(inst: dict) -> dict | None:
    """Totals of one worker's EMF interval records and its last drain record, or None without any."""
    log_path = inst.get("log_path")
    if not log_path or not Path(log_path).exists():
        return None
    sums = dict.fromkeys(EMF_SUMS, 0.0)
    drain: dict = {}
    seen = False
    for j in worker_log.emf_records(log_path):
        seen = True
        if j.get("record") == "interval":
            for k in EMF_SUMS:
                sums[k] += float(j.get(k, 0) or 0)
        elif j.get("record") == "drain":
            drain = {k: j.get(k) for k in EMF_DRAIN}
    if not seen:
        return None
    return {**{k: int(v) for k, v in sums.items()}, "drain": drain}


def render_figures(figures: dict) -> str:
    rows = []
    for inst, f in sorted(figures.items()):
        if not f:
            continue
        d = f["drain"]
        drain = (
            f"finished {d.get('DrainOrdersFinished')}, released {d.get('DrainOrdersReleased')}, "
            f"deadline hit {d.get('DrainDeadlineHit')}, hook completed {d.get('HookCompleted')}, "
            f"{d.get('DrainSeconds')} s"
            if d
            else "-"
        )
        cells = "".join(f"<td>{f[k]}</td>" for k in EMF_SUMS)
        rows.append(
            f'<tr class="emf-row" data-instance="{html.escape(inst)}"><td>{html.escape(inst)}</td>{cells}<td>{html.escape(drain)}</td></tr>'
        )
    if not rows:
        return ""
    head = "".join(f"<th>{k}</th>" for k in ("instance", *EMF_SUMS, "drain record"))
    return (
        "<h2>Figures, as CloudWatch would extract them</h2><p>From each worker's EMF records in its JSON log "
        "(the same lines the CloudWatch agent ships on AWS): interval deltas summed, and the drain record.</p>"
        f'<table id="emf-figures" border="1" cellpadding="3" style="border-collapse:collapse;font-size:13px">'
        f"<tr>{head}</tr>{''.join(rows)}</table>"
    )


# ---- the report ----------------------------------------------------------------------------------------------


def build(args) -> tuple[str, str, bool]:
    d = Path(args.dir)
    manifest = read_jsonl(Path(args.manifest) if args.manifest else d / "manifest.jsonl")
    verify_path = Path(args.verify) if args.verify else d / "verify.json"
    verify = json.loads(verify_path.read_text()) if verify_path.exists() else None
    status_path = Path(args.status) if args.status else d / "spot-sim-status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {"instances": [], "timeline": []}
    fis_path = d / "fis" / "fis-run.json"
    fis = json.loads(fis_path.read_text()) if fis_path.exists() else None
    busiest_path = d / "fis" / "busiest.json"
    busiest = json.loads(busiest_path.read_text()) if busiest_path.exists() else None
    groups = {m["group"] for m in manifest}
    if args.records:
        records = json.loads(Path(args.records).read_text())
    else:
        records = scan_table(args.table, groups)
        (d / "records.json").write_text(json.dumps(records, indent=1))

    stories = {i["id"]: instance_story(i) for i in status.get("instances", [])}
    # A worker that took work before it learned its instance id records `unknown-<pid>`: spot-sim knows the pid.
    by_pid = {f"unknown-{i['pid']}": i["id"] for i in status.get("instances", []) if i.get("pid")}
    for r in records:
        if r.get("ProcessedBy") in by_pid:
            r["RecordedProcessedBy"] = r["ProcessedBy"]
            r["ProcessedBy"] = by_pid[r["ProcessedBy"]]
    # The interrupted instances: the FIS experiments' targets, else whatever got a notice.
    targets = sorted(
        {i for e in status.get("experiments", []) for ids in (e.get("targets") or {}).values() for i in ids}
    )
    interrupted = [stories[i] for i in targets if i in stories] or [s for s in stories.values() if s.get("notice")]
    problems: list[str] = []

    # The audit.
    sent = len(manifest)
    if verify is None:
        problems.append(f"no verification ({verify_path} missing)")
        lost = dup = ooo = wrong = None
    else:
        lost, dup, ooo, wrong = (
            verify.get("lost"),
            verify.get("applied_twice"),
            verify.get("out_of_order"),
            verify.get("wrong_status"),
        )
        for name, v in (("lost", lost), ("applied twice", dup), ("out of order", ooo), ("wrong verdict", wrong)):
            if v:
                problems.append(f"{v} orders {name}")
    per_instance: dict[str, int] = {}
    for r in records:
        per_instance[r.get("ProcessedBy", "?")] = per_instance.get(r.get("ProcessedBy", "?"), 0) + 1

    # The interruption.
    handovers = {s["id"]: handover(s, records) for s in interrupted}
    if args.require_interruption:
        if not interrupted:
            problems.append("no instance was interrupted")
        for s in interrupted:
            i = s["id"]
            if not s.get("notice"):
                problems.append(f"{i}: no interruption notice was shown (terminated before it?)")
            if not s.get("drain_start"):
                problems.append(f"{i}: no drain in its worker log")
            if not s.get("hook_completed"):
                why = "timed out" if s.get("hook_timed_out") else "never completed"
                problems.append(f"{i}: lifecycle hook {why} (the worker must complete it)")
            if not s.get("terminated"):
                problems.append(f"{i}: not terminated")
            repl = [r for r in stories.values() if r.get("replaces") == i and r.get("in_service")]
            in_service = sum(1 for r in stories.values() if r.get("state") == "InService")
            if not repl and in_service < (status.get("desired") or 0):
                problems.append(f"{i}: no replacement InService")
    if args.require_busy:
        for s in interrupted:
            i, h = s["id"], handovers[s["id"]]
            if not s.get("drain_end"):
                problems.append(f"{i}: no drain report (finished/released) in its worker log")
            elif as_int(s.get("drain_finished")) + as_int(s.get("drain_released")) == 0:
                problems.append(f"{i} was idle when interrupted: its drain finished 0 and released 0 orders")
            if not any(g["continued"] for g in h):
                problems.append(f"{i}: none of the groups it held went on on another instance")

    ok = not problems
    # ---- text summary
    lines = [f"{args.title}", ""]
    lines.append(
        f"orders sent {sent}, applied {len(records)}"
        + (f" (accepted {verify.get('accepted')}, rejected {verify.get('rejected')})" if verify else "")
    )
    lines.append(f"lost {fmt(lost)}, duplicates {fmt(dup)}, order violations {fmt(ooo)}, wrong verdicts {fmt(wrong)}")
    lines.append("per instance:")
    for inst, n in sorted(per_instance.items(), key=lambda kv: -kv[1]):
        s = stories.get(inst, {})
        note = []
        if s.get("replaces"):
            note.append(f"replacement for {s['replaces']}")
        if s.get("notice"):
            note.append("interrupted")
        lines.append(f"  {inst}: {n}" + (f" ({', '.join(note)})" if note else ""))
    if fis:
        lines.append(f"experiment {fis.get('experiment')}: {fis.get('status')}")
    if busiest:
        lines.append(
            f"target chosen at {hms(parse_time(busiest.get('at')))} as the busiest worker: "
            + ", ".join(f"{w['id']} {w['groups']} groups/{w['messages']} messages" for w in busiest.get("workers", []))
        )
    for s in interrupted:
        lines += interruption_lines(s, stories, handovers[s["id"]])
    figures = {i["id"]: emf_figures(i) for i in status.get("instances", [])}
    if any(figures.values()):
        lines.append("figures from the workers' EMF records (what CloudWatch would extract):")
        for inst, f in sorted(figures.items()):
            if f:
                d = f["drain"]
                tail = (
                    f"; drain: finished {d.get('DrainOrdersFinished')}, released {d.get('DrainOrdersReleased')}, "
                    f"hook completed {d.get('HookCompleted')}"
                    if d
                    else ""
                )
                lines.append(
                    f"  {inst}: accepted {f['OrdersAccepted']}, rejected {f['OrdersRejected']}, "
                    f"duplicate {f['OrdersDuplicate']}, conflict {f['OrdersConflict']}, "
                    f"released {f['MessagesReleased']}{tail}"
                )
    lines.append("")
    for p in problems:
        lines.append(f"PROBLEM: {p}")
    lines.append("VERDICT: " + ("OK" if ok else "FAILED"))
    summary = "\n".join(lines) + "\n"
    page = render_html(args.title, summary, records, stories, per_instance, verify, ok, interrupted, handovers, figures)
    return summary, page, ok


def as_int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def hook_time(s: dict) -> float | None:
    """When the worker's hook completion took effect: spot-sim's CompleteLifecycleAction, else the worker's log."""
    return s.get("hook_completed") or s.get("hook_logged")


def by_group(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(str(r.get("MessageGroupId")), []).append(r)
    for g in out.values():
        g.sort(key=lambda r: r.get("GroupPosition") or 0)
    return out


def handover(s: dict, records: list[dict]) -> list[dict]:
    """The groups the interrupted instance held when its drain started, from the table alone: a group whose
    order it committed during the drain (finished), or whose first order applied after the drain started came
    from a message received before (ReceiveCount > 1: released by the drain, received again). For each: the
    positions it applied, the ones it finished in the drain, and who went on from which position."""
    iid, t_d = s["id"], s.get("drain_start") or s.get("notice")
    if not t_d:
        return []
    t_h = hook_time(s) or (t_d + 120)
    out = []
    for g, rs in sorted(by_group(records).items()):
        at = [(r, parse_time(r.get("ProcessedAt"))) for r in rs]
        finished = [r["GroupPosition"] for r, t in at if r.get("ProcessedBy") == iid and t and t_d <= t <= t_h + 0.5]
        after = [(r, t) for r, t in at if t and t > t_d and r.get("ProcessedBy") != iid]
        released = bool(after) and (after[0][0].get("ReceiveCount") or 1) > 1
        if not finished and not released:
            continue
        mine = [r["GroupPosition"] for r, _ in at if r.get("ProcessedBy") == iid]
        continued, seen = [], set()
        for r, _ in after:
            if r["ProcessedBy"] not in seen:
                seen.add(r["ProcessedBy"])
                continued.append({"instance": r["ProcessedBy"], "from": r["GroupPosition"]})
        out.append(
            {
                "group": g,
                "positions": mine,
                "finished": finished,
                "redelivered": [r["GroupPosition"] for r, _ in after if (r.get("ReceiveCount") or 1) > 1],
                "continued": continued,
                "last": rs[-1].get("GroupPosition") if rs else 0,
                "in_order": [r.get("GroupPosition") for r in rs] == list(range(1, len(rs) + 1)),
            }
        )
    return out


def ranges(ps: list[int]) -> str:
    """[3, 4, 5, 8] -> "#3-#5, #8"."""
    out, ps = [], sorted(ps)
    k = 0
    while k < len(ps):
        j = k
        while j + 1 < len(ps) and ps[j + 1] == ps[j] + 1:
            j += 1
        out.append(f"#{ps[k]}" if j == k else f"#{ps[k]}-#{ps[j]}")
        k = j + 1
    return ", ".join(out)


def short_group(g: str) -> str:
    m = re.search(r"(cust-\w+)$", g)
    return m.group(1) if m else g


def secs(a: float | None, b: float | None) -> str:
    return "?" if a is None or b is None else f"{b - a:.2f} s"


def interruption_lines(s: dict, stories: dict, hand: list[dict]) -> list[str]:
    """The interruption of one instance: what it held, what its drain did and how fast, who went on, and every
    event in the order it happened (by timestamp)."""
    i = s["id"]
    lines = [f"interruption of {i}:"]
    t_h = hook_time(s)
    if s.get("drain_start"):
        lines.append(
            f"  busy when interrupted: held {s.get('drain_groups_held', '?')} groups, "
            f"{s.get('drain_messages_held', '?')} messages when its drain started"
        )
        lines.append(
            f"  drain: finished {s.get('drain_finished', '?')} in flight, released {s.get('drain_released', '?')} "
            f"not started; drain started -> hook completed {secs(s['drain_start'], t_h)}, "
            f"notice -> hook completed {secs(s.get('notice'), t_h)}"
        )
    for h in hand:
        fin = f" ({ranges(h['finished'])} finished in the drain)" if h["finished"] else ""
        mine = f"{ranges(h['positions'])} on {i}{fin}" if h["positions"] else f"none applied by {i}"
        went = (
            "; ".join(
                f"from #{c['from']}"
                + (" (received again)" if c["from"] in h["redelivered"] else "")
                + f" on {c['instance']}"
                + (" (its replacement)" if stories.get(c["instance"], {}).get("replaces") == i else "")
                for c in h["continued"]
            )
            or "nothing left after it"
        )
        order = f"positions 1-{h['last']} in order" if h["in_order"] else "POSITIONS NOT 1..n"
        lines.append(f"  {short_group(h['group'])}: {mine}; went on {went}; {order}")
    events: list[tuple[float, str]] = []
    add = lambda key, label: events.append((s[key], label)) if s.get(key) else None  # noqa: E731
    add("rebalance", "rebalance recommendation")
    add("paused", "worker takes no new groups (--on-rebalance soft)")
    if s.get("notice"):
        add("notice", "interruption notice  " + s.get("notice_text", "").replace("spot interruption notice: ", ""))
    add("terminating_wait", "Terminating:Wait (hook started)")
    if s.get("drain_start"):
        add(
            "drain_start",
            f"drain started: {s.get('drain_groups_held', '?')} groups, {s.get('drain_messages_held', '?')} messages held",
        )
    add("hook_completed", f"lifecycle hook completed by the worker  {s.get('hook_result', '')}".rstrip())
    add("hook_timed_out", "lifecycle hook timed out")
    if s.get("drain_end"):
        add(
            "drain_end",
            f"drain report logged: finished {s.get('drain_finished', '?')}, released {s.get('drain_released', '?')}",
        )
    add("exited", "worker exited")
    add("terminated", "terminated")
    for r in stories.values():
        if r.get("replaces") == i:
            if r.get("launched"):
                events.append((r["launched"], f"replacement {r['id']} launched"))
            if r.get("in_service"):
                events.append((r["in_service"], f"replacement {r['id']} InService"))
    lines.append("  events, in the order they happened:")
    for t, label in sorted(events, key=lambda e: e[0]):
        lines.append(f"  {hms(t)}  {label}")
    return lines


def fmt(v) -> str:
    return "?" if v is None else str(v)


# ---- HTML + SVG ----------------------------------------------------------------------------------------------

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
MARKS = [
    ("rebalance", "R", "#7b61ff", "rebalance recommendation"),
    ("notice", "N", "#d62728", "interruption notice"),
    ("drain_start", "D", "#ff7f0e", "drain started"),
    ("drain_end", "C", "#a05a00", "drain report logged"),
    ("hook_completed", "H", "#2ca02c", "lifecycle hook completed"),
    ("hook_timed_out", "H!", "#b00020", "lifecycle hook timed out"),
    ("terminated", "T", "#000000", "terminated"),
]


def shown_instances(stories: dict, per_instance: dict) -> tuple[list[str], dict[str, str]]:
    """The instances worth a lane (applied orders, interrupted, or a replacement), in launch order, and the
    colour of each: the same in the timeline and in the per-group view."""
    shown = [i for i in stories if i in per_instance or stories[i].get("notice") or stories[i].get("replaces")]
    for i in per_instance:
        if i not in shown:
            shown.append(i)
    return shown, {i: PALETTE[k % len(PALETTE)] for k, i in enumerate(shown)}


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


def group_data(records: list[dict], stories: dict, per_instance: dict, interrupted: list[dict]) -> dict:
    """What the per-group view draws (the page's script renders it): each group's orders by position, who applied
    each and when, and the interruptions' times."""
    shown, color = shown_instances(stories, per_instance)
    role = {}
    for i in shown:
        st = stories.get(i, {})
        role[i] = (
            "interrupted" if any(x["id"] == i for x in interrupted) else ("replacement" if st.get("replaces") else "")
        )
    groups = []
    for g, rs in sorted(by_group(records).items()):
        groups.append(
            {
                "group": g,
                "label": short_group(g),
                "orders": [
                    {
                        "pos": r.get("GroupPosition"),
                        "id": r.get("OrderID"),
                        "by": r.get("ProcessedBy"),
                        "at": parse_time(r.get("ProcessedAt")),
                        "rc": r.get("ReceiveCount") or 1,
                    }
                    for r in rs
                ],
            }
        )
    return {
        "instances": [
            {"id": i, "color": color[i], "role": role[i], "replaces": stories.get(i, {}).get("replaces")} for i in shown
        ],
        "interruptions": [
            {
                "id": x["id"],
                "notice": x.get("notice") or x.get("drain_start"),
                "drain_start": x.get("drain_start"),
                "hook": hook_time(x),
            }
            for x in interrupted
        ],
        "groups": groups,
    }


GROUP_VIEW_JS = r"""
(function () {
  var err = document.getElementById('render-error');
  window.addEventListener('error', function (e) { err.textContent = 'The page failed to render: ' + e.message; });
  var data = JSON.parse(document.getElementById('group-data').textContent);
  var colour = {}, role = {};
  data.instances.forEach(function (i) { colour[i.id] = i.color; role[i.id] = i.role; });
  function hms(t) { return new Date(t * 1000).toISOString().substr(11, 12); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  var legend = document.getElementById('group-legend');
  data.instances.forEach(function (i) {
    var item = el('span', 'legend-instance');
    item.dataset.instance = i.id;
    item.dataset.role = i.role;
    var sw = el('span', 'swatch');
    sw.style.background = i.color;
    item.appendChild(sw);
    item.appendChild(document.createTextNode(i.id + (i.role === 'interrupted' ? ' (interrupted)' :
      i.role === 'replacement' ? ' (replaces ' + i.replaces + ')' : '')));
    legend.appendChild(item);
  });
  var view = document.getElementById('groups');
  data.groups.forEach(function (g) {
    var row = el('div', 'group-row');
    row.dataset.group = g.group;
    row.appendChild(el('span', 'group-name', g.label));
    var cells = el('span', 'cells');
    var marks = data.interruptions.slice().sort(function (a, b) { return a.notice - b.notice; });
    var m = 0;
    g.orders.forEach(function (o) {
      while (m < marks.length && o.at > marks[m].notice) {
        var mk = el('span', 'mark-interruption', '\u26a1');
        mk.dataset.instance = marks[m].id;
        mk.title = 'interruption notice to ' + marks[m].id + ' at ' + hms(marks[m].notice);
        cells.appendChild(mk);
        m++;
      }
      var c = el('span', 'cell', String(o.pos));
      c.dataset.pos = o.pos;
      c.dataset.instance = o.by;
      c.style.background = colour[o.by] || '#999';
      var it = data.interruptions.filter(function (x) { return x.id === o.by; })[0];
      if (it && it.drain_start && o.at >= it.drain_start && (!it.hook || o.at <= it.hook + 0.5)) {
        c.classList.add('finished-in-drain');
      }
      if (o.rc > 1) c.classList.add('received-again');
      c.title = o.id + ' #' + o.pos + ' applied by ' + o.by + ' at ' + hms(o.at) + (o.rc > 1 ? ' (received ' + o.rc + ' times)' : '');
      cells.appendChild(c);
    });
    row.appendChild(cells);
    view.appendChild(row);
  });
  view.dataset.rendered = String(data.groups.length);
})();
"""


def render_html(
    title, summary, records, stories, per_instance, verify, ok, interrupted, handovers, figures=None
) -> str:
    svg = render_svg(records, stories, per_instance)
    data = group_data(records, stories, per_instance, interrupted)
    examples = "".join(f"<li>{html.escape(e)}</li>" for e in (verify or {}).get("examples", []))
    verdict = f'<b id="verdict" style="color:{"#2a2" if ok else "#c22"}">{"OK" if ok else "FAILED"}</b>'
    story = []
    for s in interrupted:
        h = handovers.get(s["id"], [])
        went = sorted({c["instance"] for g in h for c in g["continued"]})
        story.append(
            f'<li class="interruption-story" data-instance="{html.escape(s["id"])}"><b>{html.escape(s["id"])}</b> was interrupted '
            f"while holding {s.get('drain_groups_held', '?')} groups and {s.get('drain_messages_held', '?')} messages: its drain "
            f"<b>finished {html.escape(str(s.get('drain_finished', '?')))}</b> orders in flight and "
            f"<b>released {html.escape(str(s.get('drain_released', '?')))}</b>, and completed the lifecycle hook "
            f"{secs(s.get('drain_start'), hook_time(s))} after the drain started ({secs(s.get('notice'), hook_time(s))} after the notice). "
            f"Its {len(h)} groups went on on {html.escape(', '.join(went) or 'no other instance')}, in order.</li>"
        )
    # The JSON sits in a script element: only "</" could end it early.
    blob = json.dumps(data).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1060px}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}
.legend span{{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px}}
#render-error{{color:#c22;font-weight:bold}}
.group-row{{display:flex;align-items:center;margin:3px 0}}
.group-name{{width:80px;font-size:13px;color:#333}}
.cells{{display:flex;align-items:center;flex-wrap:wrap}}
.cell{{display:inline-block;width:30px;height:24px;line-height:24px;margin:1px;text-align:center;color:#fff;
  font-size:12px;font-weight:bold;border-radius:3px;position:relative;box-sizing:border-box}}
.cell.finished-in-drain{{border:3px solid #000;line-height:18px}}
.cell.received-again::after{{content:"";position:absolute;top:2px;right:2px;width:6px;height:6px;border-radius:3px;background:#fff}}
.mark-interruption{{display:inline-block;width:14px;height:30px;line-height:30px;margin:0 2px;text-align:center;
  background:#222;color:#ffd700;font-size:12px;border-radius:2px}}
.legend-instance{{display:inline-block;margin:0 14px 4px 0;font-size:13px}}
.legend-instance .swatch{{display:inline-block;width:14px;height:14px;margin-right:4px;vertical-align:-2px;border-radius:3px}}
.key span{{margin-right:14px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Verdict: {verdict}. Generated {time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())} UTC.</p>
<ul>{"".join(story)}</ul>
<h2>Each group in order</h2>
<p>One row per message group: its orders by position (1, 2, 3…), each coloured by the instance that applied it.
<span class="key"><span><span class="mark-interruption">&#x26a1;</span> the interruption notice</span>
<span><span class="cell finished-in-drain" style="background:#888">n</span> finished by the interrupted instance during its drain</span>
<span><span class="cell received-again" style="background:#888">n</span> received again (released by the drain)</span></span></p>
<div id="group-legend"></div>
<p id="render-error"></p>
<div id="groups"></div>
<noscript><p>The per-group view needs JavaScript; the summary below has the same facts.</p></noscript>
<script type="application/json" id="group-data">{blob}</script>
<script>{GROUP_VIEW_JS}</script>
<h2>Timeline</h2>
<p>Top: orders applied per instance over time (cumulative, from the orders table's <code>ProcessedAt</code> and
<code>ProcessedBy</code>). Below: one lane per instance, its lifecycle state as the background
<span class="legend"><span style="background:#d8f0d8"></span>InService<span style="background:#ffe0a0"></span>Terminating:Wait
<span style="background:#f4b0a0"></span>Terminating:Proceed</span>, one tick per order applied, and the marks of the
interruption (from spot-sim's events and the worker's log).</p>
{svg}
{render_figures(figures or {})}
<h2>Summary</h2>
<pre id="summary">{html.escape(summary)}</pre>
{"<h2>Audit examples</h2><ul>" + examples + "</ul>" if examples else ""}
</body></html>
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="the run directory (inputs and outputs)")
    p.add_argument("--status", help="spot-sim status JSON (default DIR/spot-sim-status.json)")
    p.add_argument("--manifest", help="default DIR/manifest.jsonl")
    p.add_argument("--verify", help="order-worker verify --json output (default DIR/verify.json)")
    p.add_argument("--records", help="records JSON instead of scanning the table")
    p.add_argument("--table", default=os.environ.get("ORDERS_TABLE", "orders"))
    p.add_argument("--require-interruption", action="store_true")
    p.add_argument(
        "--require-busy",
        action="store_true",
        help="the interrupted instance must have finished or released orders, and its groups gone on elsewhere",
    )
    p.add_argument("--title", default="order-worker: orders through a Spot interruption")
    a = p.parse_args(argv)
    summary, page, ok = build(a)
    d = Path(a.dir)
    (d / "report.html").write_text(page)
    (d / "summary.txt").write_text(summary)
    print(summary, end="")
    print(f"report: {d / 'report.html'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
