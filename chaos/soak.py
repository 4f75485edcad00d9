#!/usr/bin/env python3
"""The chaos soak against the local region: a stream of orders over many message groups into a fleet of real
order-worker processes while faults are injected at random, then an audit of the table.

    chaos/soak.py --orders 2000 --groups 20 --fault-every 3 --duration 60 --out target/soak/short

What runs (chaos/localregion.py starts and stops it): the SQS/DynamoDB emulator, spot-sim (instance metadata,
Auto Scaling, FIS) with `--workers` order-worker processes, and chaos/proxy.py between the workers and the
emulator. The producer talks to the emulator directly; the workers only through the proxy.

The producer sends `--orders` orders spread over `--groups` groups, paced over `--duration` seconds, 10 per
SendMessageBatch, and records every message it sent (order id, group, expected verdict, MessageId) in a manifest
in send order. A share of the orders is sent twice (the same order id and body under a new deduplication id,
as a producer retrying after a timeout would), and a share of the messages are not valid orders (expected
REJECTED; those with no usable id are found by MessageId).

Faults, one every `--fault-every` seconds on average (uniform in [0.5, 1.5] x), on a random healthy worker:

    fis               FIS experiment aws:ec2:send-spot-instance-interruptions (rebalance now, the 2-minute
                      notice time-scaled, then reclaimed) through the FIS API
    rebalance         a rebalance recommendation only (capacity rebalancing replaces the instance via the hook)
    rebalance_notice  a rebalance recommendation, then an interruption notice 0.1-0.6 s later
    kill              SIGKILL, no notice, of a worker holding messages (mid-batch: read from its
                      order_worker_messages_in_flight); its instance is then replaced (scale-in
                      without decrement: the hook times out, the group launches a replacement)
    freeze            SIGSTOP of a worker holding messages, past the visibility timeout, then SIGCONT: its
                      messages go to another worker while it still holds them
    imds              instance metadata failing for a few seconds: 500s, hanging requests, or every token
                      expired (the next read is a 401)
    network           the SQS/DynamoDB endpoint unreachable for 2-8 s for every worker: the proxy stalls
                      (holds every byte) or drops (resets) every connection

Faults stop when the last order is sent; the soak then waits for the queue to empty and the table to hold every
expected record ("backlog clear"), waits one more visibility timeout for any late double apply to land, and
runs `order-worker verify`. The report (printed; `report.json` and `report.txt` in `--out`) gives orders sent,
applied, rejected, lost, applied twice, out of order, faults by kind, drains and their durations, and the time
for the backlog to clear. Exit status 1 when lost, applied twice or out of order is not 0 (or the backlog does
not clear, or verify cannot run); 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localregion  # noqa: E402
from localregion import LocalRegion, log, wait_for  # noqa: E402

HERE = Path(__file__).resolve().parent
FAULT_KINDS = ("fis", "rebalance", "rebalance_notice", "kill", "freeze", "imds", "network")
DEFAULT_WEIGHTS = {"fis": 2, "rebalance": 1, "rebalance_notice": 1, "kill": 2, "freeze": 2, "imds": 2, "network": 2}


# ---- the region, plus the proxy ----------------------------------------------------------------------------------


class SoakRegion(LocalRegion):
    """LocalRegion with chaos/proxy.py between the workers and the emulator. The producer, verify and the soak's
    own reads use the emulator directly (they are not under test)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.proxy_proc: Optional[localregion.Proc] = None
        self.proxy_url: Optional[str] = None
        self.proxy_control: Optional[str] = None

    def start(self) -> "SoakRegion":
        self.start_emulator()
        self.create_resources()
        self.start_proxy()
        self.worker_env.update(
            {
                "AWS_ENDPOINT_URL": self.proxy_url,
                "AWS_ENDPOINT_URL_SQS": self.proxy_url,
                "AWS_ENDPOINT_URL_DYNAMODB": self.proxy_url,
            }
        )
        self.start_sim(timeout=90)
        return self

    def start_proxy(self) -> None:
        ready = self.out_dir / "proxy.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        self.proxy_proc = self._spawn(
            "proxy", [sys.executable, HERE / "proxy.py", "--upstream", self.endpoint, "--ready-file", ready]
        )

        def up():
            if not self.proxy_proc.alive():
                raise RuntimeError(f"proxy exited; see {self.proxy_proc.log_path}")
            with contextlib.suppress(OSError, ValueError):
                return json.loads(ready.read_text())
            return None

        info = wait_for("the proxy's ready file", 20, up)
        self.proxy_url, self.proxy_control = info["listen"], info["control"]
        self.say(f"proxy {self.proxy_url} -> {self.endpoint} (control {self.proxy_control})")

    def worker_defaults(self) -> list[str]:
        """LocalRegion's defaults less any flag the caller sets itself (clap refuses a flag given twice)."""
        mine = {a for a in self.worker_args if a.startswith("--")}
        out, d = [], super().worker_defaults()
        for i in range(0, len(d), 2):
            if d[i] not in mine:
                out += d[i : i + 2]
        return out

    def proxy_fault(self, mode: str, seconds: float) -> dict:
        return localregion.http_json("POST", f"{self.proxy_control}/fault", {"mode": mode, "seconds": seconds})

    def proxy_status(self) -> dict:
        return localregion.http_json("GET", f"{self.proxy_control}/status")


# ---- orders ------------------------------------------------------------------------------------------------------


def valid_body(oid: str, group: str, rng: random.Random) -> str:
    items = [
        {"sku": f"SKU-{rng.randrange(1, 500)}", "qty": rng.randrange(1, 5), "unit_price_cents": rng.randrange(0, 100000)}
        for _ in range(rng.randrange(1, 4))
    ]
    return json.dumps(
        {"order_id": oid, "customer_id": group, "items": items, "currency": "EUR", "placed_at": "2026-11-26T01:00:00Z"},
        separators=(",", ":"),
    )


def malformed(oid: str, group: str, rng: random.Random) -> tuple[str, Optional[str]]:
    """A body the worker must reject, and the order id it will be recorded under (None: by MessageId)."""
    kind = rng.randrange(6)
    if kind == 0:
        return f"not an order {oid}", None
    if kind == 1:
        return "   ", None  # whitespace only (SQS refuses an empty body)
    if kind == 2:
        return json.dumps({"order_id": f"{oid} with spaces", "customer_id": group}), None
    body = json.loads(valid_body(oid, group, rng))
    if kind == 3:
        body["currency"] = "eur"
    elif kind == 4:
        body["customer_id"] = group + "-elsewhere"
    else:
        body["items"][0]["qty"] = 0
    return json.dumps(body, separators=(",", ":")), oid


def plan_messages(n: int, groups: int, prefix: str, dup_rate: float, bad_rate: float, rng: random.Random) -> list[dict]:
    """The send stream: `n` orders (valid or malformed) over `groups` groups, plus duplicate re-sends of some
    valid ones a little later in the stream. Each: body, group, dedup, manifest fields."""
    names = [f"{prefix}-g{g:03d}" for g in range(groups)]
    out: list[dict] = []
    pending_dups: list[tuple[int, dict]] = []
    for i in range(n):
        g = names[rng.randrange(groups)] if i >= groups else names[i]
        oid = f"{prefix}-{i:06d}"
        if rng.random() < bad_rate:
            body, key = malformed(oid, g, rng)
            out.append({"body": body, "group": g, "dedup": f"{oid}-bad", "order_id": key, "expect": "rejected", "kind": "malformed"})
        else:
            m = {"body": valid_body(oid, g, rng), "group": g, "dedup": oid, "order_id": oid, "expect": "accepted", "kind": "order"}
            out.append(m)
            if rng.random() < dup_rate:
                pending_dups.append((i + rng.randrange(1, 200), m))
        while pending_dups and pending_dups[0][0] <= i:
            _, m = pending_dups.pop(0)
            out.append({**m, "dedup": f"{m['order_id']}-resend", "kind": "duplicate"})
        pending_dups.sort(key=lambda x: x[0])
    for _, m in pending_dups:
        out.append({**m, "dedup": f"{m['order_id']}-resend", "kind": "duplicate"})
    return out


class Producer(threading.Thread):
    def __init__(self, region: SoakRegion, messages: list[dict], duration: float, manifest: Path):
        super().__init__(name="producer", daemon=True)
        self.region, self.messages, self.duration, self.manifest = region, messages, duration, manifest
        self.sent = 0
        self.error: Optional[str] = None
        self.started_at = self.finished_at = 0.0
        self.retries = 0

    def run(self) -> None:
        sqs = self.region.client("sqs")
        self.started_at = time.monotonic()
        batches = [self.messages[i : i + 10] for i in range(0, len(self.messages), 10)]
        gap = self.duration / max(1, len(batches))
        try:
            with open(self.manifest, "w") as mf:
                for b, chunk in enumerate(batches):
                    due = self.started_at + b * gap
                    if (d := due - time.monotonic()) > 0:
                        time.sleep(d)
                    entries = [
                        {"Id": str(k), "MessageBody": m["body"], "MessageGroupId": m["group"], "MessageDeduplicationId": m["dedup"]}
                        for k, m in enumerate(chunk)
                    ]
                    for attempt in range(6):
                        try:
                            out = sqs.send_message_batch(QueueUrl=self.region.queue_url, Entries=entries)
                            break
                        except Exception as e:  # a retry with the same dedup ids is deduplicated by SQS
                            if attempt == 5:
                                raise
                            self.retries += 1
                            log(f"producer: SendMessageBatch failed ({e}); retrying")
                            time.sleep(1 + attempt)
                    if out.get("Failed"):
                        # A partial failure would break the send order within a group: stop, loudly.
                        raise RuntimeError(f"SendMessageBatch partly failed: {out['Failed']}")
                    ok = {e["Id"]: e for e in out["Successful"]}
                    for k, m in enumerate(chunk):
                        line = {"order_id": m["order_id"], "group": m["group"], "expect": m["expect"],
                                "message_id": ok[str(k)]["MessageId"], "kind": m["kind"]}  # fmt: skip
                        mf.write(json.dumps(line) + "\n")
                    mf.flush()
                    self.sent += len(chunk)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            log(f"producer failed: {self.error}")
        finally:
            self.finished_at = time.monotonic()


# ---- faults ------------------------------------------------------------------------------------------------------


class Chaos(threading.Thread):
    """Injects one fault every `every` seconds on average until stopped; remembers what it did."""

    def __init__(self, region: SoakRegion, every: float, weights: dict, rng: random.Random, vis_timeout: float, time_scale: float):
        super().__init__(name="chaos", daemon=True)
        self.region, self.every, self.weights, self.rng = region, every, weights, rng
        self.vis_timeout, self.time_scale = vis_timeout, time_scale
        self.stop_event = threading.Event()
        self.busy: set[str] = set()  # instances under a fault that is still running
        self.lock = threading.Lock()
        self.counts = {k: 0 for k in FAULT_KINDS}
        self.timeline: list[dict] = []
        self.errors: list[str] = []
        self.helpers: list[threading.Thread] = []
        self.skipped = 0  # faults not injected: fewer than two healthy workers
        self.notices_too_late = 0  # rebalance_notice whose instance was replaced before the notice
        self.t0 = time.monotonic()

    def note(self, kind: str, target: str, detail: str) -> None:
        with self.lock:
            self.counts[kind] += 1
            self.timeline.append({"t": round(time.monotonic() - self.t0, 2), "kind": kind, "target": target, "detail": detail})
        log(f"fault {kind} on {target}: {detail}")

    def later(self, delay: float, fn, *args) -> None:
        """Run fn(*args) after `delay` on a helper thread (the end of a fault), even after stop."""

        def run():
            time.sleep(delay)
            try:
                fn(*args)
            except Exception as e:
                self.errors.append(f"{fn.__name__}: {e}")

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.helpers.append(t)

    def healthy(self) -> list[dict]:
        with self.lock:
            busy = set(self.busy)
        return [
            i for i in self.region.instances("InService")
            if i.get("process_alive") and i["id"] not in busy and not i.get("notices")
        ]  # fmt: skip

    def run(self) -> None:
        kinds = [k for k in FAULT_KINDS if self.weights.get(k, 0) > 0]
        w = [self.weights[k] for k in kinds]
        while not self.stop_event.wait(self.every * self.rng.uniform(0.5, 1.5)):
            kind = self.rng.choices(kinds, w)[0]
            try:
                self.inject(kind)
            except Exception as e:
                self.errors.append(f"{kind}: {type(e).__name__}: {e}")
                log(f"fault {kind} could not be injected: {e}")

    def release(self, iid: str) -> None:
        with self.lock:
            self.busy.discard(iid)

    def inject(self, kind: str) -> None:
        r = self.region
        if kind == "network":
            mode = self.rng.choice(["stall", "drop"])
            secs = round(self.rng.uniform(2, 8), 1)
            r.proxy_fault(mode, secs)
            self.note(kind, "all workers", f"endpoint {mode} for {secs}s")
            return
        cands = self.healthy()
        # Keep one healthy worker, so the fleet as a whole can always make progress.
        if len(cands) < 2:
            log(f"fault {kind} skipped: fewer than 2 healthy workers")
            with self.lock:
                self.skipped += 1
            return
        held = ""
        if kind in ("kill", "freeze"):
            # The hard case is a worker holding messages: prefer the one with the most in flight.
            # Sample for up to 3 s until one holds some (mid-batch), else take the busiest seen.
            give_up = time.monotonic() + 3
            while True:
                load = [(in_flight(i), self.rng.random(), i) for i in cands]
                n, _, inst = max(load, key=lambda x: (x[0], x[1]))
                if n > 0 or time.monotonic() > give_up or self.stop_event.is_set():
                    break
                time.sleep(0.05)
            held = f"; {n} messages in flight" if n >= 0 else ""
        else:
            inst = self.rng.choice(cands)
        iid = inst["id"]
        with self.lock:
            self.busy.add(iid)
        base = f"/_sim/instances/{iid}"
        if kind == "fis":
            fis = r.client("fis")
            tpl = fis.create_experiment_template(
                clientToken=str(uuid.uuid4()),
                description="soak: interrupt one worker",
                roleArn="arn:aws:iam::123456789012:role/fis-soak",
                stopConditions=[{"source": "none"}],
                targets={"spot": {"resourceType": "aws:ec2:spot-instance", "resourceArns": [inst["arn"]], "selectionMode": "ALL"}},
                actions={"interrupt": {"actionId": "aws:ec2:send-spot-instance-interruptions",
                                       "parameters": {"durationBeforeInterruption": "PT2M"},
                                       "targets": {"SpotInstances": "spot"}}},
            )["experimentTemplate"]  # fmt: skip
            exp = fis.start_experiment(clientToken=str(uuid.uuid4()), experimentTemplateId=tpl["id"])["experiment"]
            self.note(kind, iid, f"experiment {exp['id']} (PT2M = {120 * self.time_scale:.1f}s)")
        elif kind == "rebalance":
            r.sim_post(f"{base}/rebalance")
            self.note(kind, iid, "rebalance recommendation, no notice")
        elif kind == "rebalance_notice":
            r.sim_post(f"{base}/rebalance")
            # Soon after: capacity rebalancing replaces the instance within about a second at small time scales.
            delay = round(self.rng.uniform(0.1, 0.6), 2)
            self.later(delay, self.notice, iid)
            self.note(kind, iid, f"rebalance recommendation, interruption notice {delay}s later")
        elif kind == "kill":
            r.sim_post(f"{base}/signal", {"signal": "KILL"})
            # On EC2 the health check would replace the instance; here: scale-in without decrement.
            self.later(1, r.sim_post, f"{base}/scale-in", {"decrement": False})
            self.note(kind, iid, f"SIGKILL, no notice{held}; instance replaced")
        elif kind == "freeze":
            secs = round(self.vis_timeout + self.rng.uniform(1, 4), 1)
            r.sim_post(f"{base}/signal", {"signal": "STOP"})
            self.later(secs, self.thaw, iid)
            self.note(kind, iid, f"SIGSTOP for {secs}s (visibility timeout {self.vis_timeout:.0f}s){held}, then SIGCONT")
            return  # busy until thawed
        elif kind == "imds":
            mode = self.rng.choice(["error500", "hang", "expire_tokens"])
            secs = round(self.rng.uniform(3, 8), 1)
            if mode == "expire_tokens":
                r.sim_post(f"{base}/imds-fault", {"mode": "error500", "expire_tokens": True})
            else:
                r.sim_post(f"{base}/imds-fault", {"mode": mode})
            self.later(secs, self.imds_ok, iid)
            self.note(kind, iid, f"metadata {mode} for {secs}s")
            return  # busy until metadata answers again
        # Instances on their way out are never picked again (notices / lifecycle), so release at once.
        self.release(iid)

    def notice(self, iid: str) -> None:
        """The interruption notice after a rebalance recommendation, unless the instance is already gone."""
        try:
            self.region.sim_post(f"/_sim/instances/{iid}/interrupt", {"in_seconds": 120})
        except RuntimeError as e:
            if " 409 " not in str(e):
                raise
            with self.lock:
                self.notices_too_late += 1

    def thaw(self, iid: str) -> None:
        try:
            self.region.sim_post(f"/_sim/instances/{iid}/signal", {"signal": "CONT"})
        finally:
            self.release(iid)

    def imds_ok(self, iid: str) -> None:
        try:
            self.region.sim_post(f"/_sim/instances/{iid}/imds-fault", {"mode": "none"})
        finally:
            self.release(iid)

    def finish(self, timeout: float = 30) -> None:
        self.stop_event.set()
        self.join(timeout)
        for t in self.helpers:
            t.join(timeout)


def in_flight(inst: dict) -> int:
    """order_worker_messages_in_flight of a live worker (its /metrics), or -1 when it cannot be read."""
    addr = inst.get("metrics_addr")
    if not addr:
        return -1
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("order_worker_messages_in_flight"):
            with contextlib.suppress(ValueError):
                return int(float(line.rsplit(" ", 1)[1]))
    return -1


# ---- the run -----------------------------------------------------------------------------------------------------


def queue_depth(region: SoakRegion) -> int:
    a = region.client("sqs").get_queue_attributes(
        QueueUrl=region.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return sum(int(v) for v in a.values())


def dlq_depth(region: SoakRegion) -> int:
    a = region.client("sqs").get_queue_attributes(
        QueueUrl=region.dlq_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return sum(int(v) for v in a.values())


def count_records(region: SoakRegion) -> int:
    ddb = region.client("dynamodb")
    n, kw = 0, {"TableName": region.orders_table, "Select": "COUNT", "ConsistentRead": True}
    while True:
        out = ddb.scan(**kw)
        n += out["Count"]
        if "LastEvaluatedKey" not in out:
            return n
        kw["ExclusiveStartKey"] = out["LastEvaluatedKey"]


DRAIN_TEXT = re.compile(r"drain complete.*?trigger=(\w+).*?took_ms=(\d+)")


def drains(log_dir: Path, before: Optional[str] = None) -> list[dict]:
    """Every `drain complete` line of every worker log (JSON or text format), optionally only those stamped
    before `before` (an RFC 3339 UTC time: the soak's own shutdown drains are not counted)."""
    out = []
    for p in sorted(log_dir.glob("*.log")):
        for line in p.read_text(errors="replace").splitlines():
            if "drain complete" not in line:
                continue
            d = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    o = json.loads(line)
                    f = {**o, **o.get("fields", {})}
                    if before and str(o.get("timestamp", "")) >= before:
                        continue
                    d = {"trigger": re.split(r"[({ ]", str(f.get("trigger", "?")))[0],
                         "took_ms": int(f.get("took_ms", 0)), "finished": f.get("finished"),
                         "released": f.get("released"), "deadline_hit": f.get("deadline_hit"),
                         "hook": f.get("hook"), "at": o.get("timestamp")}  # fmt: skip
            if d is None and (m := DRAIN_TEXT.search(line)):
                d = {"trigger": m.group(1), "took_ms": int(m.group(2))}
            if d:
                d["instance"] = p.stem
                out.append(d)
    return out


def plant_bug(region: SoakRegion, kind: str) -> str:
    """Damage the table the way a broken worker would, so a run proves the audit catches it."""
    ddb = region.client("dynamodb")
    recs = [r for r in region.records() if r.get("Status") == "ACCEPTED"]
    by_group: dict[str, list[dict]] = {}
    for r in recs:
        by_group.setdefault(r["MessageGroupId"], []).append(r)
    group, rs = max(by_group.items(), key=lambda kv: len(kv[1]))
    rs.sort(key=lambda r: r["GroupPosition"])
    if kind == "lost":
        victim = rs[-1]
        ddb.delete_item(TableName=region.orders_table, Key={"OrderID": {"S": victim["OrderID"]}})
        return f"deleted record {victim['OrderID']} of group {group}"
    if kind == "twice":
        ddb.update_item(
            TableName=region.groups_table,
            Key={"MessageGroupId": {"S": group}},
            UpdateExpression="SET LastPosition = LastPosition + :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
        return f"advanced LastPosition of group {group} by one (an order applied a second time)"
    x, y = rs[0], rs[1]
    for rec, pos in ((x, y["GroupPosition"]), (y, x["GroupPosition"])):
        ddb.update_item(
            TableName=region.orders_table,
            Key={"OrderID": {"S": rec["OrderID"]}},
            UpdateExpression="SET GroupPosition = :p",
            ExpressionAttributeValues={":p": {"N": str(pos)}},
        )
    return f"swapped the positions of {x['OrderID']} and {y['OrderID']} in group {group}"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1e6):06d}Z"


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
        "took_ms": {"min": took[0], "median": int(statistics.median(took)), "p95": took[int(0.95 * (len(took) - 1))], "max": took[-1]},
        "deadline_hit": sum(1 for d in ds if d.get("deadline_hit")),
        "released": sum(int(d.get("released") or 0) for d in ds),
        "hooks_completed": sum(1 for d in ds if d.get("hook") == "Completed"),
    }


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
    expected_keys = len({m["order_id"] for m in messages if m["order_id"]}) + sum(1 for m in messages if m["order_id"] is None)
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
    with SoakRegion(out_dir=out, workers=a.workers, time_scale=a.time_scale, worker_args=worker_args,
                    sim_args=["--max-size", str(max(10, a.workers * 3))], kill_grace="2s") as region:  # fmt: skip
        manifest = out / "manifest.jsonl"
        producer = Producer(region, messages, a.duration, manifest)
        chaos = Chaos(region, a.fault_every, weights, random.Random(seed + 1), vis, a.time_scale)
        producer.start()
        chaos.start()
        last_print = 0.0
        while producer.is_alive():
            producer.join(1)
            if time.monotonic() - last_print > 15:
                last_print = time.monotonic()
                with contextlib.suppress(Exception):
                    log(f"progress: sent {producer.sent}/{len(messages)}, queue {queue_depth(region)}, "
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
                if queue_depth(region) == 0:
                    records = count_records(region)
                    if records >= expected_keys:
                        backlog_s = time.monotonic() - sent_done
                        break
            time.sleep(1)
        if backlog_s is None:
            with contextlib.suppress(Exception):
                records = count_records(region)
            failures.append(f"backlog not clear after {a.backlog_timeout}s: {records}/{expected_keys} records, "
                            f"queue depth {queue_depth(region)}")  # fmt: skip
        else:
            log(f"backlog clear {backlog_s:.1f}s after the last send; waiting {vis + 2}s for late applies")
            time.sleep(vis + 2)
        report["dlq_depth"] = dlq_depth(region)
        with contextlib.suppress(Exception):
            report["proxy"] = region.proxy_status()
        status = region.status()
        region.save_status(out / "spot-sim-status.json")
        if a.plant_bug:
            report["planted_bug"] = plant_bug(region, a.plant_bug)
            log(f"PLANTED BUG (self-test of the audit): {report['planted_bug']}")
        v = region.verify(manifest, out / "verify.json")
        (out / "verify.txt").write_text(v.get("text", ""))
        report["instances"] = {
            "launched": len(status["instances"]),
            "terminated": sum(1 for i in status["instances"] if i["lifecycle_state"] == "Terminated"),
        }
        report["chaos_errors"] = chaos.errors
        report["faults_skipped"] = chaos.skipped
        report["notices_after_replacement"] = chaos.notices_too_late
        report["producer_retries"] = producer.retries
        # Drains: read the logs while the workers still run (the final shutdown drains are not soak drains).
        ds = drains(region.worker_log_dir, before=utc_now())
    total_s = time.monotonic() - t_start
    kinds = {}
    with open(manifest) as mf:
        for line in mf:
            k = json.loads(line).get("kind", "order")
            kinds[k] = kinds.get(k, 0) + 1
    lost, twice, ooo = v.get("lost"), v.get("applied_twice"), v.get("out_of_order")
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
            "lost": lost,
            "applied_twice": twice,
            "out_of_order": ooo,
            "wrong_verdict": v.get("wrong_status"),
            "unexpected": v.get("unexpected"),
            "per_instance": v.get("per_instance"),
            "verify_examples": v.get("examples"),
            "verify_exit_code": v.get("exit_code"),
            "faults": dict(chaos.counts),
            "faults_total": sum(chaos.counts.values()),
            "fault_timeline": chaos.timeline,
            "drains": summarize_drains(ds),
            "drain_list": ds,
            "send_seconds": round(sent_done - producer.started_at, 1),
            "backlog_clear_seconds": None if backlog_s is None else round(backlog_s, 1),
            "total_seconds": round(total_s, 1),
        }
    )
    if lost is None or twice is None or ooo is None:
        failures.append(f"verify produced no report (exit {v.get('exit_code')}): {v.get('text', '')[-500:]}")
    else:
        for name, val in (("lost", lost), ("applied twice", twice), ("out of order", ooo)):
            if val:
                failures.append(f"INVARIANT BROKEN: {name} = {val}")
    report["failures"] = failures
    report["verdict"] = "FAILED" if failures else "OK"
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = render(report)
    (out / "report.txt").write_text(text)
    print(text, flush=True)
    return 1 if failures else 0


def render(r: dict) -> str:
    d = r["drains"]
    faults = ", ".join(f"{k} {v}" for k, v in r["faults"].items() if v) or "none"
    lines = [
        "== chaos soak report ==",
        f"seed {r['seed']}, {r['workers']} workers, {r['groups']} groups; instances launched {r['instances']['launched']}, "
        f"terminated {r['instances']['terminated']}",
        f"orders sent      {r['orders_sent']} ({r['valid_orders_sent']} valid, {r['malformed_sent']} malformed) "
        f"+ {r['duplicate_sends']} duplicate sends = {r['messages_sent']} messages",
        f"records          {r['records']} of {r['expected_records']} expected: applied {r['applied']}, rejected {r['rejected']}",
        f"lost             {r['lost']}",
        f"applied twice    {r['applied_twice']}",
        f"out of order     {r['out_of_order']}",
        f"wrong verdict    {r['wrong_verdict']}   unexpected {r['unexpected']}   in DLQ {r['dlq_depth']}",
        f"faults           {r['faults_total']}: {faults} (skipped {r.get('faults_skipped', 0)}: under two healthy workers; "
        f"rebalance_notice on an instance already replaced {r.get('notices_after_replacement', 0)})",
    ]
    if r.get("proxy"):
        p = r["proxy"]
        lines.append(f"proxy            {p['connections']} connections, {p['reset']} reset, stalls {p['faults']['stall']}, drops {p['faults']['drop']}")
    if d["count"]:
        t = d["took_ms"]
        lines.append(
            f"drains           {d['count']} ({', '.join(f'{k} {v}' for k, v in d['by_trigger'].items())}); took ms min {t['min']}, "
            f"median {t['median']}, p95 {t['p95']}, max {t['max']}; deadline hit {d['deadline_hit']}; "
            f"messages released {d['released']}; hooks completed {d['hooks_completed']}"
        )
    else:
        lines.append("drains           0")
    lines.append(f"timing           sending {r['send_seconds']}s, backlog clear {r['backlog_clear_seconds']}s after the last send, total {r['total_seconds']}s")
    for e in r.get("verify_examples") or []:
        lines.append(f"  ! {e}")
    for e in r.get("chaos_errors") or []:
        lines.append(f"  fault error: {e}")
    for f in r["failures"]:
        lines.append(f"FAIL: {f}")
    lines.append(f"VERDICT: {r['verdict']}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Fault kinds: " + ", ".join(FAULT_KINDS))  # fmt: skip
    p.add_argument("--orders", type=int, default=2000, help="orders to send (before duplicate re-sends)")
    p.add_argument("--groups", type=int, default=20, help="message groups (customers)")
    p.add_argument("--fault-every", type=float, default=3.0, help="mean seconds between faults")
    p.add_argument("--duration", type=float, default=60.0, help="seconds over which the orders are sent")
    p.add_argument("--workers", type=int, default=4, help="worker instances (spot-sim desired capacity)")
    p.add_argument("--faults", help="comma-separated fault kinds to use (default: all)")
    p.add_argument("--dup-rate", type=float, default=0.03, help="share of valid orders sent twice")
    p.add_argument("--malformed-rate", type=float, default=0.02, help="share of messages that are not valid orders")
    p.add_argument("--time-scale", type=float, default=0.05, help="spot-sim time scale (0.05: PT2M lasts 6 s)")
    p.add_argument("--visibility-timeout", type=int, default=6, help="worker --visibility-timeout, seconds")
    p.add_argument("--drain-timeout", type=int, default=4, help="worker --drain-timeout, seconds")
    p.add_argument("--work-delay", default="5ms", help="worker --work-delay (keeps orders in flight)")
    p.add_argument("--backlog-timeout", type=float, default=180, help="seconds allowed for the backlog to clear")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--plant-bug", choices=["lost", "twice", "out_of_order"],
                   help="self-test: damage the table before verify (delete a record / advance a group's LastPosition / "
                        "swap two positions); the soak must then FAIL")  # fmt: skip
    p.add_argument("--out", default=str(localregion.target_dir() / "soak" / time.strftime("%Y%m%dT%H%M%S")))
    a = p.parse_args(argv)
    if a.faults and (bad := set(a.faults.split(",")) - set(FAULT_KINDS)):
        p.error(f"unknown fault kinds {sorted(bad)}; known: {', '.join(FAULT_KINDS)}")
    try:
        return run(a)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
