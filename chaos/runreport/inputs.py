"""The report's inputs: the files of a run directory, the orders table, and what spot-sim's status and each
worker's log say about one instance (its story) and its EMF figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness import parse_time, sim, worker_log


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
