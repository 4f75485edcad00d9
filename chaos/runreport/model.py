"""The report's data model: who applied which order (a worker that recorded `unknown-<pid>` attributed), which
instances were interrupted, what each of them held and who went on with its groups (the handover), the instances
worth drawing and their colours, and the per-group view's data. Pure functions of the records and the stories."""

from __future__ import annotations

import re

from harness import parse_time


def attribute_unknown_workers(records: list[dict], instances: list[dict]) -> None:
    """A worker that took work before it learned its instance id records `unknown-<pid>-<random>` (older builds:
    `unknown-<pid>`): spot-sim knows the pid. Rewrites ProcessedBy in place, keeping what was recorded as
    RecordedProcessedBy."""
    by_pid = {str(i["pid"]): i["id"] for i in instances if i.get("pid")}
    for r in records:
        name = r.get("ProcessedBy") or ""
        pid = name.removeprefix("unknown-").split("-")[0] if name.startswith("unknown-") else None
        if pid in by_pid:
            r["RecordedProcessedBy"] = name
            r["ProcessedBy"] = by_pid[pid]


def interrupted_instances(status: dict, stories: dict) -> list[dict]:
    """The stories of the interrupted instances: the FIS experiments' targets, else whatever got a notice."""
    targets = sorted(
        {i for e in status.get("experiments", []) for ids in (e.get("targets") or {}).values() for i in ids}
    )
    return [stories[i] for i in targets if i in stories] or [s for s in stories.values() if s.get("notice")]


def applied_per_instance(records: list[dict]) -> dict[str, int]:
    per_instance: dict[str, int] = {}
    for r in records:
        per_instance[r.get("ProcessedBy", "?")] = per_instance.get(r.get("ProcessedBy", "?"), 0) + 1
    return per_instance


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


def short_group(g: str) -> str:
    m = re.search(r"(cust-\w+)$", g)
    return m.group(1) if m else g


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def shown_instances(stories: dict, per_instance: dict) -> tuple[list[str], dict[str, str]]:
    """The instances worth a lane (applied orders, interrupted, or a replacement), in launch order, and the
    colour of each: the same in the timeline and in the per-group view."""
    shown = [i for i in stories if i in per_instance or stories[i].get("notice") or stories[i].get("replaces")]
    for i in per_instance:
        if i not in shown:
            shown.append(i)
    return shown, {i: PALETTE[k % len(PALETTE)] for k, i in enumerate(shown)}


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
