"""The soak's checks: what the worker logs say (drains, lost holds, releases), the no-second-consumer check,
and the invariants that fail a run. Pure functions of what the run collected (logs, records, the manifest, the
fault timeline, spot-sim's status, verify's report), so that each can be tested on its own."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from harness import parse_time, sim, worker_log

from .faults import HOLD_BREAKING, NEVER_RECEIVES_AGAIN


def drains(log_dir: Path, before: str | None = None) -> list[dict]:
    """Every drain report (`drain complete`) of every worker log, optionally only those stamped before `before`
    (an RFC 3339 UTC time: the soak's own shutdown drains are not counted)."""
    return [
        {**d, "instance": p.stem} for p in sorted(log_dir.glob("*.log")) for d in worker_log.drain_reports(p, before)
    ]


# What the worker logs when a hold is lost or given back: how the messages of src/dispatch/*.rs, src/store.rs and
# src/queue.rs begin, counted per run.
LOG_SIGNS = {
    "hold_lost": "visibility extension refused: the hold is lost",
    "extension_failed": "visibility extension failed; retrying",
    "release_refused": "release refused",
    "release_not_done": "release not done within its budget",
    "run_released": "run not committed; releasing it",
    "drain_deadline_release": "drain deadline: releasing the rest",
    "delete_refused": "delete refused",
    "delete_not_done": "delete not done within its budget",
    "ddb_refuses_every_write": "DynamoDB refuses every write",
    "sqs_refuses": "SQS refuses this worker",
}


def scan_worker_logs(log_dir: Path, before: str | None = None) -> dict:
    """Counts of LOG_SIGNS over every worker log (lines stamped before `before` only), the message ids whose hold
    was lost, and the releases of a group after a failure (group, instance, time), which explain a later receive
    of the group's messages."""
    counts = {k: 0 for k in LOG_SIGNS}
    hold_lost: list[dict] = []
    releases: list[dict] = []
    for p in sorted(log_dir.glob("*.log")):
        for o in worker_log.events(p, before):
            message = str(o.get("message", ""))
            sign = next((k for k, v in LOG_SIGNS.items() if message.startswith(v)), None)
            if sign is None:
                continue
            counts[sign] += 1
            at = o["t"]
            if sign == "hold_lost":
                hold_lost.append(
                    {
                        "message_id": o.get("message_id"),
                        "instance": p.stem,
                        "at": o.get("timestamp"),
                        "code": o.get("code"),
                    }
                )
            elif sign in ("run_released", "drain_deadline_release") and o.get("group") and at:
                releases.append({"group": o["group"], "instance": p.stem, "at": at})
    return {"counts": counts, "hold_lost": hold_lost, "releases": releases}


def second_consumer(records: list[dict], manifest: Path, timeline: list[dict], releases: list[dict], vis: float,
                    drain_timeout: float) -> dict:  # fmt: skip
    """The no-second-consumer check (chaos/SOAK.md has the definition). A record's ReceiveCount is SQS's
    ApproximateReceiveCount at the receive that applied it: 1 means no consumer had the message before. For every
    record with ReceiveCount > 1 some hold-breaking event must have been in effect between the message's send and
    its application: a fault of a HOLD_BREAKING kind whose window [start, end + visibility timeout + drain
    timeout + 2 s] overlaps [sent - 2 s, applied + 1 s] (a kill or drain of one instance explains only a record
    applied by another instance: that one never receives again), or a release of the message's group logged by a
    worker after a failure (window [release, release + visibility timeout + 2 s]). The others are
    `second_consumer_receives`: a message received by a second consumer while nothing took it from the first."""
    sent: dict[str, float] = {}
    with open(manifest) as mf:
        for line in mf:
            m = json.loads(line)
            if m.get("sent_at") is not None:
                sent[m["message_id"]] = float(m["sent_at"])
    slack = vis + drain_timeout + 2
    windows = [(f["at"], f["end"] + slack, f["kind"], f["target"]) for f in timeline
               if f["kind"] in HOLD_BREAKING and "at" in f]  # fmt: skip
    hist: dict[int, int] = {}
    unexplained: list[dict] = []
    explained_by: dict[str, int] = {}
    for rec in records:
        rc = int(rec.get("ReceiveCount") or 0)
        hist[rc] = hist.get(rc, 0) + 1
        if rc <= 1:
            continue
        s0 = sent.get(rec.get("SqsMessageId"))
        applied = parse_time(rec.get("ProcessedAt", ""))
        if s0 is None or applied is None:
            unexplained.append({**_brief(rec), "why": "no send time or ProcessedAt"})
            continue
        lo, hi = s0 - 2, applied + 1
        # Credited to the latest such fault that began before the application (the likeliest cause).
        by, began = None, 0.0
        for a, b, kind, target in windows:
            if (
                a <= hi
                and b >= lo
                and a >= began
                and not (kind in NEVER_RECEIVES_AGAIN and target == rec.get("ProcessedBy"))
            ):
                by, began = kind, a
        if by is None:
            for rel in releases:
                if rel["group"] == rec.get("MessageGroupId") and rel["at"] <= hi and rel["at"] + vis + 2 >= lo:
                    by = "release"
                    break
        if by is None:
            unexplained.append({**_brief(rec), "sent_at": s0, "applied_at": applied})
        else:
            explained_by[by] = explained_by.get(by, 0) + 1
    return {
        "receive_count_histogram": {str(k): v for k, v in sorted(hist.items())},
        "redelivered": sum(v for k, v in hist.items() if k > 1),
        "explained_by": explained_by,
        "second_consumer_receives": len(unexplained),
        "unexplained": unexplained[:50],
    }


def _brief(rec: dict) -> dict:
    return {k: rec.get(k) for k in ("OrderID", "MessageGroupId", "GroupPosition", "SqsMessageId", "ReceiveCount",
                                    "ProcessedBy", "ProcessedAt")}  # fmt: skip


def summarize_drains(ds: list[dict]) -> dict:
    if not ds:
        return {"count": 0}
    took = sorted(d["took_ms"] for d in ds)
    by: dict[str, int] = {}
    for d in ds:
        by[d["trigger"]] = by.get(d["trigger"], 0) + 1
    return {
        "count": len(ds),
        "by_trigger": by,
        "took_ms": {
            "min": took[0],
            "median": int(statistics.median(took)),
            "p95": took[int(0.95 * (len(took) - 1))],
            "max": took[-1],
        },
        "deadline_hit": sum(1 for d in ds if d.get("deadline_hit")),
        "released": sum(int(d.get("released") or 0) for d in ds),
        "hooks_completed": sum(1 for d in ds if d.get("hook") == "Completed"),
    }


def hook_timeouts_not_killed(instances: list[dict], timeline: list[dict]) -> list[dict]:
    """Instances whose termination went ahead only because the hook timed out, though no kill explains it (a
    kill's hook always times out): the worker did not complete its own hook. Reported, not a failure."""
    killed = {f["target"] for f in timeline if f["kind"] == "kill"}
    return [
        {"instance": i["id"], "at": e["at"], "faults": [f["kind"] for f in timeline if f["target"] == i["id"]]}
        for i in instances if i["id"] not in killed
        for e in [sim.hook_timed_out(i)] if e
    ]  # fmt: skip


def rule_hits(added: list[dict], rules: list[dict]) -> dict[str, dict]:
    """How many requests each fault kind's proxy rules failed, stalled or reset: `added` the rules the faults
    added ({"id", "kind"}), `rules` the proxy's view of them (GET /rules). A rule no fault added is "other"."""
    hits: dict[str, dict] = {}
    kind_of = {r["id"]: r["kind"] for r in added}
    for rule in rules:
        k = kind_of.get(rule.get("id"), "other")
        h = hits.setdefault(k, {"rules": 0, "hits": 0, "matched": 0})
        h["rules"] += 1
        h["hits"] += int(rule.get("hits") or 0)
        h["matched"] += int(rule.get("matched") or 0)
    return hits


def stall_drains(timeline: list[dict], ds: list[dict]) -> list[dict]:
    """For each sqs_stall_drain fault, the first drain report of its instance (None fields when it has none):
    every instance interrupted while SQS stalled must still have completed its own lifecycle hook."""
    out = []
    for f in timeline:
        if f["kind"] == "sqs_stall_drain":
            mine = next((d for d in ds if d["instance"] == f["target"]), {})
            out.append(
                {"instance": f["target"], **{k: mine.get(k) for k in ("hook", "took_ms", "released", "deadline_hit")}}
            )
    return out


def manifest_kinds(manifest: Path) -> dict[str, int]:
    """Messages sent, by kind (order, malformed, duplicate), from the manifest."""
    kinds: dict[str, int] = {}
    with open(manifest) as mf:
        for line in mf:
            k = json.loads(line).get("kind", "order")
            kinds[k] = kinds.get(k, 0) + 1
    return kinds


def invariants_broken(v: dict, redrive: dict | None, dlq: int, sc: dict, stall: list[dict]) -> list[str]:
    """What fails the run, from verify's report `v`, the queue's RedrivePolicy and DLQ depth, second_consumer()'s
    answer and stall_drains()'s: one line each."""
    out = []
    lost, twice, ooo = v.get("lost"), v.get("applied_twice"), v.get("out_of_order")
    if lost is None or twice is None or ooo is None:
        out.append(f"verify produced no report (exit {v.get('exit_code')}): {v.get('text', '')[-500:]}")
    else:
        for name, val in (("lost", lost), ("applied twice", twice), ("out of order", ooo),
                          ("position gaps", v.get("position_gaps") or 0),
                          ("wrong verdicts", v.get("wrong_status") or 0),
                          ("orphan markers", v.get("orphan_markers") or 0),
                          ("unexpected items", v.get("unexpected") or 0),
                          ("misplaced items", v.get("misplaced") or 0)):  # fmt: skip
            if val:
                out.append(f"INVARIANT BROKEN: {name} = {val}")
        if v.get("verdict_ok") is False and not out:
            out.append("INVARIANT BROKEN: verify's verdict is FAILED")
    if redrive is None:
        out.append("the queue has no RedrivePolicy: the DLQ invariant would mean nothing")
    if dlq:
        out.append(f"INVARIANT BROKEN: messages in the DLQ = {dlq}")
    if sc["second_consumer_receives"]:
        out.append(f"INVARIANT BROKEN: second-consumer receives = {sc['second_consumer_receives']} "
                   f"(ReceiveCount > 1 that no hold-breaking fault or release explains)")  # fmt: skip
    if bad := [d for d in stall if d["hook"] != "Completed"]:
        out.append(f"lifecycle hook not completed after an interruption under an SQS stall: {bad}")
    return out
