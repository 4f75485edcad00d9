"""The report as text (summary.txt, and what the command prints): the audit, orders per instance, each
interruption told in full (what the instance held, what its drain did and how fast, who went on from which
position, every event in time order), the EMF figures, the problems and the verdict."""

from __future__ import annotations

from harness import hms, parse_time

from .model import hook_time, short_group


def summary(title: str, sent: int, records: list[dict], verify: dict | None, per_instance: dict, stories: dict,
            fis: dict | None, busiest: dict | None, interrupted: list[dict], handovers: dict, figures: dict,
            problems: list[str]) -> str:  # fmt: skip
    v = verify or {}
    lost, dup, ooo, wrong = (v.get(k) for k in ("lost", "applied_twice", "out_of_order", "wrong_status"))
    lines = [f"{title}", ""]
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
    lines.append("VERDICT: " + ("FAILED" if problems else "OK"))
    return "\n".join(lines) + "\n"


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
