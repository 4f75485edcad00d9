"""One traffic run, start to end: the region with terraform's scaling policy, the day's orders, Spot
interruptions and rebalance recommendations throughout, an instance refresh (build A -> build B) when asked,
the backlog and the scale-in waited for, the checks, the figures, the report and its fleet chart."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import threading
import time
from pathlib import Path

import prices
from harness import LocalRegion, binary, log, parse_time, scaling, terraform_defaults
from harness.sim import events
from soakrun import checks
from soakrun.planted import plant_bug

from . import chart, figures, shape
from .text import render


class TrafficRegion(LocalRegion):
    """LocalRegion whose group scales by terraform's target-tracking policy on the queue's backlog."""

    with_policy = True
    metric = "backlog"

    def start(self) -> TrafficRegion:
        self.start_emulator()
        self.start_gate()
        self.create_resources()
        if self.with_policy:
            self.sim_args = [*scaling.sim_args(self.tf, self.queue_url), "--scaling-metric", self.metric]
        else:  # --plant no-scaling: the group keeps its desired capacity
            self.sim_args = ["--min-size", str(self.tf["min_size"]), "--max-size", str(self.tf["max_size"])]
        self.start_sim(timeout=90)
        return self


class Producer(threading.Thread):
    """Sends the plan on the day's curve (simulated minutes from `t0`), 10 per SendMessageBatch, and writes the
    manifest (with each order's send time) as each batch succeeds."""

    def __init__(self, region: LocalRegion, plan: list[dict], phases, scale: float, manifest: Path):
        super().__init__(name="producer", daemon=True)
        self.region, self.plan, self.phases, self.scale, self.manifest = region, plan, phases, scale, manifest
        self.sent = 0
        self.sent_at: dict[str, float] = {}
        self.error: str | None = None
        self.t0 = 0.0

    def sim_minutes(self) -> float:
        return (time.time() - self.t0) / self.scale / 60

    def run(self) -> None:
        from harness import orders

        sqs = self.region.client("sqs", "producer")  # the shop's front end
        self.t0 = time.time()
        try:
            with open(self.manifest, "w") as mf:
                while self.sent < len(self.plan):
                    want = shape.due(self.phases, len(self.plan), self.sim_minutes())
                    if want - self.sent < 10 and want < len(self.plan):
                        time.sleep(0.05)
                        continue
                    chunk = self.plan[self.sent : min(want, self.sent + 10)]
                    out = sqs.send_message_batch(QueueUrl=self.region.queue_url, Entries=orders.batch_entries(chunk))
                    if out.get("Failed"):
                        raise RuntimeError(f"SendMessageBatch partly failed: {out['Failed']}")
                    ok = {e["Id"]: e for e in out["Successful"]}
                    at = round(time.time(), 3)
                    for k, m in enumerate(chunk):
                        mf.write(json.dumps({"order_id": m["order_id"], "group": m["group"], "expect": "accepted",
                                             "message_id": ok[str(k)]["MessageId"], "sent_at": at}) + "\n")  # fmt: skip
                        self.sent_at[m["order_id"]] = at
                    mf.flush()
                    self.sent += len(chunk)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            log(f"producer failed: {self.error}")


class Sampler(threading.Thread):
    """The queue and the group every `every` seconds through the real APIs (GetQueueAttributes,
    DescribeAutoScalingGroups): what the chart and the burst figure are drawn from."""

    def __init__(self, region: LocalRegion, every: float = 0.5):
        super().__init__(name="sampler", daemon=True)
        self.region, self.every = region, every
        self.samples: list[dict] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        sqs, asg = self.region.client("sqs"), self.region.client("autoscaling")
        while not self.stop_event.wait(self.every):
            with contextlib.suppress(Exception):
                a = sqs.get_queue_attributes(
                    QueueUrl=self.region.queue_url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )["Attributes"]
                g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.region.group_name])
                g = g["AutoScalingGroups"][0]
                states = [i["LifecycleState"] for i in g["Instances"]]
                self.samples.append(
                    {
                        "t": time.time(),
                        "visible": int(a["ApproximateNumberOfMessages"]),
                        "in_flight": int(a["ApproximateNumberOfMessagesNotVisible"]),
                        "desired": g["DesiredCapacity"],
                        "in_service": states.count("InService"),
                        "pending": states.count("Pending"),
                        "terminating": sum(1 for s in states if s.startswith("Terminating")),
                    }
                )


class Spot(threading.Thread):
    """Spot keeps happening: every `every` simulated minutes (uniform in [0.5, 1.5] x) a random InService
    instance gets an interruption (rebalance recommendation, the two-minute notice, reclaimed) or a rebalance
    recommendation alone (capacity rebalancing replaces it through the hook)."""

    def __init__(self, region: LocalRegion, every_minutes: float, scale: float, rng: random.Random):
        super().__init__(name="spot", daemon=True)
        self.region, self.every, self.scale, self.rng = region, every_minutes, scale, rng
        self.timeline: list[dict] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop_event.wait(self.every * 60 * self.scale * self.rng.uniform(0.5, 1.5)):
            with contextlib.suppress(Exception):
                live = self.region.instances("InService")
                if not live:
                    continue
                iid = self.rng.choice(live)["id"]
                at = time.time()
                if n % 2 == 0:
                    self.region.sim_post(f"/_sim/instances/{iid}/interrupt", {"in_seconds": 120, "rebalance": True})
                    # "fis": the soak's name for an interruption (its checks know which faults break a hold).
                    self.timeline.append({"kind": "fis", "target": iid, "at": at, "end": at + 120 * self.scale})
                    log(f"spot: interruption of {iid}")
                else:
                    self.region.sim_post(f"/_sim/instances/{iid}/rebalance")
                    self.timeline.append({"kind": "rebalance", "target": iid, "at": at, "end": at})
                    log(f"spot: rebalance recommendation for {iid}")
                n += 1


def start_refresh(region: LocalRegion, out: Path, prefs: dict) -> dict:
    """Build B: the worker binary copied to another path (another build) with the same flags, made the group's
    launch template version; then StartInstanceRefresh with terraform's preferences."""
    status = region.status()
    v1 = status["launch_templates"][0]
    b = out / "build-b" / "order-worker"
    b.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary("order-worker", region.profile), b)
    v = region.sim_post("/_sim/launch-template", {"cmd": str(b), "args": v1["args"], "description": "build B"})
    # A release is Terraform's instance_refresh: whoever applies it (the deployer) starts and follows it.
    rid = region.client("autoscaling", "deployer").start_instance_refresh(
        AutoScalingGroupName=region.group_name, Strategy="Rolling", Preferences=prefs
    )["InstanceRefreshId"]
    log(f"instance refresh {rid}: build B (launch template version {v['version']}), preferences {prefs}")
    return {"id": rid, "version": v["version"], "build": str(b), "preferences": prefs, "started": time.time()}


def refresh_status(region: LocalRegion, rid: str) -> dict:
    r = region.client("autoscaling", "deployer").describe_instance_refreshes(
        AutoScalingGroupName=region.group_name, InstanceRefreshIds=[rid]
    )["InstanceRefreshes"][0]
    return {"status": r["Status"], "percentage_complete": r.get("PercentageComplete"),
            "instances_to_update": r.get("InstancesToUpdate")}  # fmt: skip


def leavers(status: dict) -> list[dict]:
    """Instances the group itself sent through the hook (scale-in, instance refresh) and whether their worker
    completed it (a `hook_completed` event) or it timed out."""
    out = []
    for i in status["instances"]:
        waits = events(i, "terminating_wait")
        if not waits:
            continue
        cause = waits[0]["event"]
        if "scale in" in cause:
            why = "scale-in"
        elif "instance refresh" in cause:
            why = "instance refresh"
        else:
            continue
        out.append({"id": i["id"], "why": why, "version": i.get("version"),
                    "hook_completed": bool(events(i, "hook_completed"))})  # fmt: skip
    return out


def day_phase(phases) -> tuple[float, float]:
    """The base-rate phase (the day, or the whole steady profile), in simulated minutes."""
    start = shape.phase_start(phases, "day")
    if start is None:
        return (0.0, shape.length(phases))
    return (start, start + next(p.minutes for p in phases if p.name == "day"))


def run(a: argparse.Namespace) -> int:
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seed = a.seed if a.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    phases = shape.PROFILES[a.profile]
    prefix = f"t{seed % 100000:05d}"
    gidx = shape.groups_for(a.orders, a.groups, a.group_mode, rng)
    names = [f"{prefix}-cust-{g:03d}" for g in range(a.groups)]
    from harness import orders

    plan = []
    for i, g in enumerate(gidx):
        oid = f"{prefix}-{i:06d}"
        items = [orders.item(f"SKU-{rng.randrange(1, 500)}", rng.randrange(1, 4), rng.randrange(100, 9000))]
        plan.append({"order_id": oid, "group": names[g], "body": orders.order_body(oid, names[g], items)})
    worker_args = ["--work-delay", a.work_delay, "--max-groups", str(a.max_groups), "--log-format", "json"]
    if a.plant == "hook":
        worker_args += ["--lifecycle-hook", ""]  # a worker that never completes its hook
    scale = a.time_scale
    report: dict = {"config": {**vars(a), "seed": seed, "phases": [p.__dict__ for p in phases]}}
    failures: list[str] = []
    burst_min = shape.phase_start(phases, "flash sale")
    log(f"traffic: {a.orders} orders over {a.groups} groups ({a.group_mode}), profile {a.profile} "
        f"({shape.length(phases):g} simulated minutes at time scale {scale}), seed {seed}, out {out}")  # fmt: skip
    start = int(terraform_defaults()["desired_capacity"])
    TrafficRegion.with_policy = a.plant != "no-scaling"
    TrafficRegion.metric = a.scaling_metric
    with TrafficRegion(out_dir=out, workers=start, time_scale=scale, worker_args=worker_args,
                       kill_grace="2s", launch_delay=a.launch_delay, profile=a.build) as region:  # fmt: skip
        tf = region.tf
        target = float(tf["backlog_per_instance_target"])
        manifest = out / "manifest.jsonl"
        sampler = Sampler(region)
        producer = Producer(region, plan, phases, scale, manifest)
        spot = Spot(region, a.interrupt_every, scale, random.Random(seed + 1))
        sampler.start()
        producer.start()
        if a.interrupt_every > 0:
            spot.start()
        refresh = None
        last = 0.0
        while producer.is_alive():
            producer.join(0.5)
            t_min = producer.sim_minutes()
            if a.refresh_at is not None and refresh is None and t_min >= a.refresh_at:
                refresh = start_refresh(region, out, scaling.refresh_preferences(tf))
            if time.monotonic() - last > 10:
                last = time.monotonic()
                s = sampler.samples[-1] if sampler.samples else {}
                log(f"minute {t_min:5.1f}: sent {producer.sent}/{len(plan)}, visible {s.get('visible')}, "
                    f"desired {s.get('desired')}, in service {s.get('in_service')}")  # fmt: skip
        if producer.error:
            failures.append(f"producer: {producer.error}")
        log(f"all {producer.sent} orders sent; waiting for the backlog")
        processed: dict[str, float] = {}
        deadline = time.monotonic() + a.backlog_timeout
        while time.monotonic() < deadline:
            if region.count_records() >= producer.sent:
                break
            time.sleep(1)
        backlog_clear = time.time()
        if refresh:
            deadline = time.monotonic() + a.refresh_timeout
            while time.monotonic() < deadline:
                refresh.update(refresh_status(region, refresh["id"]))
                if refresh["status"] not in ("Pending", "InProgress"):
                    break
                time.sleep(1)
            refresh["ended"] = time.time()
            if refresh["status"] != "Successful":
                failures.append(f"instance refresh {refresh['id']} ended {refresh['status']}")
        # Scale-in back to min_size: 15 one-minute datapoints below 90 % of the target after the last warmup.
        log(f"backlog clear; waiting for the group to scale in to min_size {tf['min_size']}")
        deadline = time.monotonic() + a.scale_in_timeout
        scaled_in = None
        while time.monotonic() < deadline:
            s = sampler.samples[-1] if sampler.samples else {}
            if (
                s.get("desired") == tf["min_size"]
                and s.get("terminating") == 0
                and s.get("in_service") == tf["min_size"]
            ):
                scaled_in = time.time()
                break
            time.sleep(1)
        if scaled_in is None and a.require_scale_in:
            failures.append(f"the group did not scale in to min_size {tf['min_size']} within {a.scale_in_timeout}s")
        spot.stop_event.set()
        sampler.stop_event.set()
        end = time.time()
        status = region.save_status(out / "spot-sim-status.json")
        recs = region.records()
        for r in recs:
            if (t := parse_time(r.get("ProcessedAt"))) is not None:
                processed[r["OrderID"]] = t
        if a.plant in ("lost", "twice", "order"):
            log(f"PLANTED ({a.plant}): {plant_bug(region, a.plant)}")
            recs = region.records()
        v = region.verify(manifest)
        logs = checks.scan_worker_logs(region.worker_log_dir)
        timeline = list(spot.timeline)
        # The group's own terminations drain their workers like a rebalance does: they explain a redelivery of a
        # message another instance applied.
        left = leavers(status)
        for i in status["instances"]:
            w = events(i, "terminating_wait")
            if w and i["id"] in {x["id"] for x in left}:
                at = parse_time(w[0]["at"])
                timeline.append({"kind": "rebalance", "target": i["id"], "at": at, "end": at})
        sc = checks.second_consumer(recs, manifest, timeline, logs["releases"], 120 * scale, 90 * scale)
    # ---- figures
    t0 = producer.t0
    lat = figures.latencies(producer.sent_at, processed)
    burst_at = t0 + burst_min * 60 * scale if burst_min is not None else None
    rec = figures.burst_recovery(sampler.samples, burst_at, target) if burst_at else None
    inst = [{"id": i["id"], "launched_at": parse_time(i["launched_at"]),
             "terminated_at": parse_time(i["terminated_at"]) if i.get("terminated_at") else None}
            for i in status["instances"]]  # fmt: skip
    # From the first order until the group is back at min_size (or the run ends): the scale-in's lag is paid for.
    fleet = figures.fleet_figures(inst, sampler.samples, t0, end, scale)
    fleet["backlog_clear_minute"] = (backlog_clear - t0) / scale / 60
    times = [s["t"] for s in sampler.samples]
    ages = figures.oldest_age_series(producer.sent_at, processed, times)
    itype = scaling.instance_types()[0]
    spot_h, od_h = prices.spot_hourly(itype), prices.on_demand_hourly(itype)
    hours, fixed_hours = fleet["instance_minutes"] / 60, fleet["fixed_fleet_instance_minutes"] / 60
    n = len(processed)
    per_instance: dict[str, int] = {}
    for r in recs:
        per_instance[r.get("ProcessedBy") or "?"] = per_instance.get(r.get("ProcessedBy") or "?", 0) + 1
    report["figures"] = {
        "orders_sent": producer.sent,
        "orders_recorded": n,
        "burst_start_to_backlog_under_target": rec,
        "send_to_record_seconds": {
            "p50": figures.quantile(lat, 0.5),
            "p99": figures.quantile(lat, 0.99),
            "max": max(lat, default=None),
        },
        "oldest_message_age_seconds_max": max(ages, default=0),
        "send_rates": figures.send_rates(producer.sent_at, t0, scale, day_phase(phases)),
        "fleet": fleet,
        "instance_type": itype,
        "prices": {"spot_hourly": spot_h, "on_demand_hourly": od_h, "recorded": prices.RECORDED},
        "compute_cost_per_million_orders": {
            "spot": figures.cost_per_million(hours, n, spot_h),
            "on_demand": figures.cost_per_million(hours, n, od_h),
            "fixed_fleet_spot": figures.cost_per_million(fixed_hours, n, spot_h),
            "fixed_fleet_on_demand": figures.cost_per_million(fixed_hours, n, od_h),
        },
        "orders_per_instance": per_instance,
        "scale_events": [e for e in status["timeline"] if e["kind"] in ("scale_out", "scale_in")],
        "spot_events": len(spot.timeline),
    }
    report["verify"] = {
        k: v.get(k) for k in ("lost", "applied_twice", "out_of_order", "position_gaps", "wrong_status", "exit_code")
    }
    report["verify_text"] = v.get("text", "")[-2000:]
    report["second_consumer"] = sc
    report["leavers"] = left
    report["refresh"] = refresh
    for k in ("lost", "applied_twice", "out_of_order", "position_gaps", "wrong_status"):
        if v.get(k):
            failures.append(f"INVARIANT BROKEN: {k} = {v.get(k)}")
    if v.get("exit_code") != 0:
        failures.append(f"order-worker verify exited {v.get('exit_code')}")
    if sc["second_consumer_receives"]:
        failures.append(f"INVARIANT BROKEN: second-consumer receives = {sc['second_consumer_receives']}")
    not_completed = [x for x in left if not x["hook_completed"]]
    if not_completed:
        failures.append(f"{len(not_completed)} instances the group terminated did not complete their hook: "
                        + ", ".join(x["id"] for x in not_completed[:5]))  # fmt: skip
    if refresh:
        replaced = [x for x in left if x["why"] == "instance refresh"]
        report["refresh"]["replaced"] = len(replaced)
        live = [i for i in status["instances"] if i["lifecycle_state"] == "InService"]
        if any(i.get("version") != refresh["version"] for i in live):
            failures.append("after the refresh an InService instance does not run build B")
    if a.expect_scale_out and not any(e["kind"] == "scale_out" for e in report["figures"]["scale_events"]):
        failures.append("the group never scaled out")
    report["spot_timeline"] = spot.timeline
    report["failures"] = failures
    report["verdict"] = "FAIL" if failures else "OK"
    text = render(report)
    report["text"] = text
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "samples.json").write_text(json.dumps({"t0": t0, "samples": sampler.samples, "oldest_age": ages}))
    (out / "report.html").write_text(chart.page(report, sampler.samples, ages, status, recs, t0, scale, target))
    (out / "report.txt").write_text(text)
    print(text)
    return 1 if failures else 0
