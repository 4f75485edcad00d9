"""One soak, start to end: the region up, the traffic and the faults at once, the backlog waited for, the checks,
the report written."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time
from pathlib import Path

from harness import log, utc_now

from . import checks
from .faults import DEFAULT_WEIGHTS, FAULT_KINDS, Chaos
from .planted import plant_bug, plant_second_consumer
from .region import SoakRegion
from .text import render
from .traffic import Producer, plan_messages


def run(a: argparse.Namespace) -> int:
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seed = a.seed if a.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    weights = dict(DEFAULT_WEIGHTS)
    if a.faults:
        weights = {k: (DEFAULT_WEIGHTS[k] if k in a.faults.split(",") else 0) for k in FAULT_KINDS}
    prefix = f"s{seed % 100000:05d}"
    messages = plan_messages(a.orders, a.groups, prefix, a.dup_rate, a.malformed_rate, rng)
    expected_keys = len({m["order_id"] for m in messages if m["order_id"]}) + sum(
        1 for m in messages if m["order_id"] is None
    )
    vis = a.visibility_timeout
    worker_args = [
        "--visibility-timeout", f"{vis}s",
        "--drain-timeout", f"{a.drain_timeout}s",
        "--drain-margin", "1s",
        "--work-delay", a.work_delay,
        "--log-format", "json",
        "--rebalance-recovery", "20s",
    ]  # fmt: skip
    cfg = {k: v for k, v in vars(a).items()}
    cfg["seed"] = seed
    log(f"soak: {a.orders} orders ({len(messages)} messages with duplicates), {a.groups} groups, {a.workers} workers, "
        f"a fault every ~{a.fault_every}s over {a.duration}s, seed {seed}, out {out}")  # fmt: skip
    t_start = time.monotonic()
    report: dict = {"config": cfg}
    failures: list[str] = []
    # dead_letter_queue=True although terraform/ has none by default: here the DLQ is an instrument, and
    # "DLQ empty" means no order was received max_receive_count times without being deleted.
    with SoakRegion(out_dir=out, workers=a.workers, time_scale=a.time_scale, worker_args=worker_args,
                    sim_args=["--max-size", str(max(10, a.workers * 3))], kill_grace="2s",
                     dynamodb=a.dynamodb, dead_letter_queue=True) as region:  # fmt: skip
        manifest = out / "manifest.jsonl"
        producer = Producer(region, messages, a.duration, manifest)
        chaos = Chaos(region, a.fault_every, weights, random.Random(seed + 1), vis, a.time_scale,
                      denied_seconds=a.denied_seconds, denied_max=a.denied_max, drain_timeout=a.drain_timeout)  # fmt: skip
        producer.start()
        chaos.start()
        last_print = 0.0
        while producer.is_alive():
            producer.join(1)
            if time.monotonic() - last_print > 15:
                last_print = time.monotonic()
                with contextlib.suppress(Exception):
                    log(f"progress: sent {producer.sent}/{len(messages)}, queue {region.queue_depth()}, "
                        f"faults {sum(chaos.counts.values())}")  # fmt: skip
        chaos.finish()
        if producer.error:
            failures.append(f"producer: {producer.error}")
        sent_done = time.monotonic()
        log(f"all {producer.sent} messages sent in {sent_done - producer.started_at:.1f}s; faults stopped "
            f"({sum(chaos.counts.values())} injected); waiting for the backlog")  # fmt: skip
        # Backlog: the queue empty and the table holding every expected record.
        backlog_s = None
        deadline = sent_done + a.backlog_timeout
        records = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if region.queue_depth() == 0:
                    records = region.count_records()
                    if records >= expected_keys:
                        backlog_s = time.monotonic() - sent_done
                        break
            time.sleep(1)
        if backlog_s is None:
            with contextlib.suppress(Exception):
                records = region.count_records()
            failures.append(f"backlog not clear after {a.backlog_timeout}s: {records}/{expected_keys} records, "
                            f"queue depth {region.queue_depth()}")  # fmt: skip
        else:
            log(f"backlog clear {backlog_s:.1f}s after the last send; waiting {vis + 2}s for late applies")
            time.sleep(vis + 2)
        slack = vis + a.drain_timeout + 2
        if a.plant_bug == "second_consumer":
            quiet = max([f["end"] + slack for f in chaos.timeline], default=0)
            report["planted_bug"] = plant_second_consumer(region, manifest, prefix, quiet)
            log(f"PLANTED BUG (self-test of the audit): {report['planted_bug']}")
        logs_before = utc_now()
        wl = checks.scan_worker_logs(region.worker_log_dir, before=logs_before)
        sc = checks.second_consumer(region.records(), manifest, chaos.timeline, wl["releases"], vis, a.drain_timeout)
        if a.plant_bug and a.plant_bug != "second_consumer":
            report["planted_bug"] = plant_bug(region, a.plant_bug)
            log(f"PLANTED BUG (self-test of the audit): {report['planted_bug']}")
        report["redrive_policy"] = region.redrive_policy()
        report["dlq_depth"] = region.dlq_depth()
        with contextlib.suppress(Exception):
            report["proxy"] = region.proxy_status()
        status = region.status()
        region.save_status(out / "spot-sim-status.json")
        v = region.verify(manifest, out / "verify.json")
        (out / "verify.txt").write_text(v.get("text", ""))
        report["instances"] = {
            "launched": len(status["instances"]),
            "terminated": sum(1 for i in status["instances"] if i["lifecycle_state"] == "Terminated"),
        }
        report["hook_timeouts_not_killed"] = checks.hook_timeouts_not_killed(status["instances"], chaos.timeline)
        report["chaos_errors"] = chaos.errors
        report["faults_skipped"] = chaos.skipped
        report["notices_after_replacement"] = chaos.notices_too_late
        report["producer_retries"] = producer.retries
        # Drains: read the logs while the workers still run (the final shutdown drains are not soak drains).
        ds = checks.drains(region.worker_log_dir, before=logs_before)
    total_s = time.monotonic() - t_start
    stall_drains = checks.stall_drains(chaos.timeline, ds)
    kinds = checks.manifest_kinds(manifest)
    report.update(
        {
            "seed": seed,
            "messages_sent": producer.sent,
            "orders_sent": kinds.get("order", 0) + kinds.get("malformed", 0),
            "valid_orders_sent": kinds.get("order", 0),
            "duplicate_sends": kinds.get("duplicate", 0),
            "malformed_sent": kinds.get("malformed", 0),
            "groups": a.groups,
            "workers": a.workers,
            "expected_records": expected_keys,
            "records": v.get("records"),
            "applied": v.get("accepted"),
            "rejected": v.get("rejected"),
            # Positions held by duplicate:/conflict: markers (a re-sent order or a reused id): items, not orders.
            "markers": v.get("markers") or 0,
            "lost": v.get("lost"),
            "applied_twice": v.get("applied_twice"),
            "out_of_order": v.get("out_of_order"),
            "position_gaps": v.get("position_gaps"),
            "second_consumer_receives": sc["second_consumer_receives"],
            "receive_counts": sc,
            "worker_log_signs": wl["counts"],
            "hold_lost": wl["hold_lost"][:50],
            "rule_hits": checks.rule_hits(chaos.rules, (report.get("proxy") or {}).get("rules", [])),
            "sqs_stall_drains": stall_drains,
            "wrong_verdict": v.get("wrong_status"),
            "unexpected": v.get("unexpected"),
            "per_instance": v.get("per_instance"),
            "verify_examples": v.get("examples"),
            "verify_exit_code": v.get("exit_code"),
            "faults": dict(chaos.counts),
            "faults_total": sum(chaos.counts.values()),
            "fault_timeline": chaos.timeline,
            "drains": checks.summarize_drains(ds),
            "drain_list": ds,
            "send_seconds": round(sent_done - producer.started_at, 1),
            "backlog_clear_seconds": None if backlog_s is None else round(backlog_s, 1),
            "total_seconds": round(total_s, 1),
        }
    )
    failures += checks.invariants_broken(v, report["redrive_policy"], report["dlq_depth"], sc, stall_drains)
    report["failures"] = failures
    report["verdict"] = "FAILED" if failures else "OK"
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = render(report)
    (out / "report.txt").write_text(text)
    print(text, flush=True)
    return 1 if failures else 0
