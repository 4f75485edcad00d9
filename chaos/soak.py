#!/usr/bin/env python3
"""The chaos soak against the local region: a stream of orders over many message groups into a fleet of real
order-worker processes while faults are injected at random, then an audit of the table.

    chaos/soak.py --orders 2000 --groups 20 --fault-every 3 --duration 60 --out target/soak/short

What runs (harness.LocalRegion starts and stops it): the SQS/DynamoDB emulator (`--dynamodb dynamodb-local`:
DynamoDB on DynamoDB Local, AWS's own engine, SQS still on the emulator), spot-sim (instance metadata,
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
    sqs_stall_drain   SQS stops answering every worker for 2-6 s (proxy rule: stall) and at the same moment a
                      worker holding messages gets an interruption notice: its releases stall, its hook must
                      still be completed
    visibility_fail   ChangeMessageVisibilityBatch answers 503 ServiceUnavailable (the next 1-3, or for 1-3 s)
    ddb_throttle      the claims (UpdateItem) or the inserts (BatchExecuteStatement) throttled (ThrottlingException
                      or ProvisionedThroughputExceededException) for 2-6 s, every call or each with probability 0.5
    denied            DynamoDB AccessDeniedException on every operation for --denied-seconds (at most
                      --denied-max per run)
    lost_response     the next claim (UpdateItem) or batch of inserts (BatchExecuteStatement) is applied but its
                      answer is lost (pass-then-reset)

Every kind in use is injected once first (in random order), then kinds are drawn by weight.

Faults stop when the last order is sent; the soak then waits for the queue to empty and the table to hold every
expected record ("backlog clear"), waits one more visibility timeout for any late double apply to land, and
runs `order-worker verify`. The report (printed; `report.json` and `report.txt` in `--out`) gives orders sent,
applied, rejected, lost, applied twice, out of order, position gaps, messages in the DLQ, second-consumer
receives (a ReceiveCount > 1 that no hold-breaking fault explains; see second_consumer()), the histogram of
ReceiveCount, faults by kind, proxy rule hits, drains and their durations, and the time for the backlog to
clear. Exit status 1 when any of lost, applied twice, out of order, position gaps, DLQ depth or second-consumer
receives is not 0 (or the backlog does not clear, verify cannot run, or an instance interrupted under an SQS
stall did not complete its hook); 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import DYNAMODB_BACKENDS, LocalRegion, Proc, http_json, log, parse_time, sim, target_dir, utc_now, wait_for  # noqa: I001 - after the path is set
from harness import metrics, orders, worker_log

HERE = Path(__file__).resolve().parent
FAULT_KINDS = ("fis", "rebalance", "rebalance_notice", "kill", "freeze", "imds", "network",
               "sqs_stall_drain", "visibility_fail", "ddb_throttle", "denied", "lost_response")  # fmt: skip
DEFAULT_WEIGHTS = {"fis": 2, "rebalance": 1, "rebalance_notice": 1, "kill": 2, "freeze": 2, "imds": 1, "network": 2,
                   "sqs_stall_drain": 2, "visibility_fail": 1, "ddb_throttle": 2, "denied": 1, "lost_response": 1}  # fmt: skip
# Faults that can take a hold away from the worker holding a message (or hide a handed-out message until its
# visibility times out), so that a later receive of the message is expected; see second_consumer() and SOAK.md.
HOLD_BREAKING = {"fis", "rebalance", "rebalance_notice", "kill", "freeze", "network", "sqs_stall_drain",
                 "visibility_fail"}  # fmt: skip
# Of those, the faults on one instance after which that instance never receives again (a kill; a drain, which
# takes nothing new): they explain another worker's receive of a message only.
NEVER_RECEIVES_AGAIN = {"fis", "rebalance", "rebalance_notice", "kill"}
# The worker's DynamoDB writes: a group's claim, and the batches of record inserts.
DDB_WRITE_OPS = ("UpdateItem", "BatchExecuteStatement")


# ---- the region, plus the proxy ----------------------------------------------------------------------------------


class SoakRegion(LocalRegion):
    """LocalRegion with chaos/proxy.py between the workers and the emulators (one proxy: its faults cover SQS and
    DynamoDB together, wherever each is served). The producer, verify and the soak's own reads use the emulators
    directly (they are not under test)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.proxy_proc: Proc | None = None
        self.proxy_url: str | None = None
        self.proxy_control: str | None = None

    def start(self) -> SoakRegion:
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
        cmd = [sys.executable, HERE / "proxy.py", "--upstream", self.endpoint, "--ready-file", ready]
        if self.ddb_endpoint != self.endpoint:
            cmd += ["--upstream-for", f"dynamodb={self.ddb_endpoint}"]
        self.proxy_proc = self._spawn("proxy", cmd)

        def up():
            if not self.proxy_proc.alive():
                raise RuntimeError(f"proxy exited; see {self.proxy_proc.log_path}")
            with contextlib.suppress(OSError, ValueError):
                return json.loads(ready.read_text())
            return None

        info = wait_for("the proxy's ready file", 20, up)
        self.proxy_url, self.proxy_control = info["listen"], info["control"]
        self.say(
            f"proxy {self.proxy_url} -> {self.endpoint}, DynamoDB {self.ddb_endpoint} (control {self.proxy_control})"
        )

    def proxy_fault(self, mode: str, seconds: float) -> dict:
        return http_json("POST", f"{self.proxy_control}/fault", {"mode": mode, "seconds": seconds})

    def proxy_status(self) -> dict:
        return http_json("GET", f"{self.proxy_control}/status")

    def proxy_rule(self, rule: dict) -> dict:
        """A per-service / per-operation fault rule (chaos/proxy.py POST /rules); returns it with its id."""
        return http_json("POST", f"{self.proxy_control}/rules", rule)

    def proxy_rules(self) -> list[dict]:
        return http_json("GET", f"{self.proxy_control}/rules")["rules"]


# ---- orders ------------------------------------------------------------------------------------------------------


def valid_order(oid: str, group: str, rng: random.Random) -> dict:
    items = [orders.item(f"SKU-{rng.randrange(1, 500)}", rng.randrange(1, 5), rng.randrange(0, 100000))
             for _ in range(rng.randrange(1, 4))]  # fmt: skip
    return orders.order(oid, group, items, "2026-11-26T01:00:00Z")


def valid_body(oid: str, group: str, rng: random.Random) -> str:
    return orders.body(valid_order(oid, group, rng))


def malformed(oid: str, group: str, rng: random.Random) -> tuple[str, str | None]:
    """A body the worker must reject, and the order id it will be recorded under (None: by MessageId)."""
    kind = rng.randrange(6)
    if kind == 0:
        return f"not an order {oid}", None
    if kind == 1:
        return "   ", None  # whitespace only (SQS refuses an empty body)
    if kind == 2:
        return json.dumps({"order_id": f"{oid} with spaces", "customer_id": group}), None
    body = valid_order(oid, group, rng)
    if kind == 3:
        body["currency"] = "eur"
    elif kind == 4:
        body["customer_id"] = group + "-elsewhere"
    else:
        body["items"][0]["qty"] = 0
    return orders.body(body), oid


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
            out.append(
                {
                    "body": body,
                    "group": g,
                    "dedup": f"{oid}-bad",
                    "order_id": key,
                    "expect": "rejected",
                    "kind": "malformed",
                }
            )
        else:
            m = {
                "body": valid_body(oid, g, rng),
                "group": g,
                "dedup": oid,
                "order_id": oid,
                "expect": "accepted",
                "kind": "order",
            }
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
        self.error: str | None = None
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
                    entries = orders.batch_entries(chunk)
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
                    sent_at = round(time.time(), 3)
                    for k, m in enumerate(chunk):
                        line = {"order_id": m["order_id"], "group": m["group"], "expect": m["expect"],
                                "message_id": ok[str(k)]["MessageId"], "kind": m["kind"],
                                "sent_at": sent_at}  # fmt: skip
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

    def __init__(self, region: SoakRegion, every: float, weights: dict, rng: random.Random, vis_timeout: float,
                 time_scale: float, denied_seconds: float = 10, denied_max: int = 1, drain_timeout: float = 4):  # fmt: skip
        super().__init__(name="chaos", daemon=True)
        self.region, self.every, self.weights, self.rng = region, every, weights, rng
        self.vis_timeout, self.time_scale = vis_timeout, time_scale
        self.denied_seconds, self.denied_max, self.drain_timeout = denied_seconds, denied_max, drain_timeout
        self.denied_until = 0.0  # wall time the current denial window ends
        self.rules: list[dict] = []  # proxy rules added: {"id", "kind", ...}
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

    def note(self, kind: str, target: str, detail: str, lasts: float = 0.0, at: float | None = None) -> None:
        """Record a fault: `target` an instance id or "all workers"; `lasts` seconds of effect after `at` (wall
        time the fault began; default now)."""
        at = time.time() if at is None else at
        with self.lock:
            self.counts[kind] += 1
            self.timeline.append({"t": round(time.monotonic() - self.t0, 2), "kind": kind, "target": target,
                                  "detail": detail, "at": round(at, 3), "end": round(at + lasts, 3)})  # fmt: skip
        log(f"fault {kind} on {target}: {detail}")

    def rule(self, kind: str, rule: dict) -> dict:
        r = self.region.proxy_rule(rule)
        with self.lock:
            self.rules.append({"id": r["id"], "kind": kind})
        return r

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
        # Every kind once first (in a random order), so that even a short soak has each; then by weight.
        cover = list(kinds)
        self.rng.shuffle(cover)
        while not self.stop_event.wait(self.every * self.rng.uniform(0.5, 1.5)):
            left = [
                k
                for k in kinds
                if k != "denied" or (self.counts["denied"] < self.denied_max and time.time() > self.denied_until)
            ]
            if not left:
                continue
            cover = [k for k in cover if k in left]
            if cover:
                kind = cover.pop(0)
            else:
                kind = self.rng.choices(left, [self.weights[k] for k in left])[0]
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
            self.note(kind, "all workers", f"endpoint {mode} for {secs}s", secs)
            return
        if kind == "visibility_fail":
            rule = {"service": "sqs", "operation": "ChangeMessageVisibilityBatch", "action": "error",
                    "code": "ServiceUnavailable", "status": 503}  # fmt: skip
            # Mostly "the next N": extensions and releases are sparse (a hold is extended only after half the
            # visibility timeout), so a short time window often fails none.
            if self.rng.random() < 0.7:
                rule["count"] = self.rng.randint(1, 3)
                what, secs = f"the next {rule['count']}", 1.0
            else:
                rule["seconds"] = secs = round(self.rng.uniform(1, 3), 1)
                what = f"every one for {secs}s"
            rid = self.rule(kind, rule)["id"]
            self.note(
                kind,
                "all workers",
                f"ChangeMessageVisibilityBatch: {what} fail 503 ServiceUnavailable (rule {rid})",
                secs,
            )
            return
        if kind == "ddb_throttle":
            code = self.rng.choice(["ThrottlingException", "ProvisionedThroughputExceededException"])
            secs = round(self.rng.uniform(2, 6), 1)
            op = self.rng.choice(DDB_WRITE_OPS)
            rule = {
                "service": "dynamodb",
                "operation": op,
                "action": "error",
                "code": code,
                "seconds": secs,
            }
            if self.rng.random() < 0.5:
                rule["probability"] = 0.5
            rid = self.rule(kind, rule)["id"]
            prob = f", probability {rule['probability']}" if "probability" in rule else ""
            self.note(kind, "all workers", f"{op} {code} for {secs}s{prob} (rule {rid})", secs)
            return
        if kind == "denied":
            secs = self.denied_seconds
            rid = self.rule(
                kind, {"service": "dynamodb", "action": "error", "code": "AccessDeniedException", "seconds": secs}
            )["id"]
            self.denied_until = time.time() + secs
            self.note(
                kind, "all workers", f"DynamoDB AccessDeniedException on every operation for {secs}s (rule {rid})", secs
            )
            return
        if kind == "lost_response":
            op = self.rng.choice(DDB_WRITE_OPS)
            rid = self.rule(
                kind,
                {"service": "dynamodb", "operation": op, "action": "pass-then-reset", "count": 1},
            )["id"]
            self.note(kind, "all workers", f"the next {op} applied, its answer lost (reset) (rule {rid})")
            return
        cands = self.healthy()
        # Keep one healthy worker, so the fleet as a whole can always make progress.
        if len(cands) < 2:
            log(f"fault {kind} skipped: fewer than 2 healthy workers")
            with self.lock:
                self.skipped += 1
            return
        held = ""
        if kind in ("kill", "freeze", "sqs_stall_drain"):
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
            self.note(kind, iid, f"experiment {exp['id']} (PT2M = {120 * self.time_scale:.1f}s)", self.drain_lasts())
        elif kind == "rebalance":
            r.sim_post(f"{base}/rebalance")
            self.note(kind, iid, "rebalance recommendation, no notice", self.drain_lasts())
        elif kind == "rebalance_notice":
            r.sim_post(f"{base}/rebalance")
            # Soon after: capacity rebalancing replaces the instance within about a second at small time scales.
            delay = round(self.rng.uniform(0.1, 0.6), 2)
            self.later(delay, self.notice, iid)
            self.note(kind, iid, f"rebalance recommendation, interruption notice {delay}s later", self.drain_lasts())
        elif kind == "sqs_stall_drain":
            # SQS stops answering every worker and, at the same moment, this one (holding messages) is told it is
            # interrupted: its drain can release nothing (the releases stall), yet it must complete its hook.
            secs = round(self.rng.uniform(2, 6), 1)
            at = time.time()
            rid = self.rule(kind, {"service": "sqs", "action": "stall", "seconds": secs})["id"]
            r.sim_post(f"{base}/interrupt", {"in_seconds": 120})
            self.note(kind, iid, f"SQS stalled for {secs}s (rule {rid}) and an interruption notice at once{held}",
                      max(secs, self.drain_lasts()), at)  # fmt: skip
        elif kind == "kill":
            r.sim_post(f"{base}/signal", {"signal": "KILL"})
            # On EC2 the health check would replace the instance; here: scale-in without decrement.
            self.later(1, r.sim_post, f"{base}/scale-in", {"decrement": False})
            self.note(kind, iid, f"SIGKILL, no notice{held}; instance replaced", 1.0)
        elif kind == "freeze":
            secs = round(self.vis_timeout + self.rng.uniform(1, 4), 1)
            r.sim_post(f"{base}/signal", {"signal": "STOP"})
            self.later(secs, self.thaw, iid)
            self.note(
                kind, iid, f"SIGSTOP for {secs}s (visibility timeout {self.vis_timeout:.0f}s){held}, then SIGCONT", secs
            )
            return  # busy until thawed
        elif kind == "imds":
            mode = self.rng.choice(["error500", "hang", "expire_tokens"])
            secs = round(self.rng.uniform(3, 8), 1)
            if mode == "expire_tokens":
                r.sim_post(f"{base}/imds-fault", {"mode": "error500", "expire_tokens": True})
            else:
                r.sim_post(f"{base}/imds-fault", {"mode": mode})
            self.later(secs, self.imds_ok, iid)
            self.note(kind, iid, f"metadata {mode} for {secs}s", secs)
            return  # busy until metadata answers again
        # Instances on their way out are never picked again (notices / lifecycle), so release at once.
        self.release(iid)

    def drain_lasts(self) -> float:
        """How long after a notice or rebalance recommendation the instance's drain may still be running: the
        scaled two-minute notice (or the replacement's launch), then the drain timeout."""
        return 120 * self.time_scale + self.drain_timeout + 2

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
    m = metrics.scrape(addr, timeout=1) if addr else None
    if not m or not any(n == "order_worker_messages_in_flight" for n, _ in m):
        return -1
    return int(metrics.metric_sum(m, "order_worker_messages_in_flight"))


# ---- the run -----------------------------------------------------------------------------------------------------


def queue_depth(region: SoakRegion) -> int:
    return region.depth(region.queue_url)


def dlq_depth(region: SoakRegion) -> int:
    """Messages in the DLQ. The queue's RedrivePolicy (maxReceiveCount 10, as in terraform/queue.tf) moves a
    message there after ten receives without a delete."""
    return region.depth(region.dlq_url)


def redrive_policy(region: SoakRegion) -> dict | None:
    a = region.client("sqs").get_queue_attributes(QueueUrl=region.queue_url, AttributeNames=["RedrivePolicy"])[
        "Attributes"
    ]
    return json.loads(a["RedrivePolicy"]) if a.get("RedrivePolicy") else None


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


def plant_bug(region: SoakRegion, kind: str) -> str:
    """Damage the table the way a broken worker would, so a run proves the audit catches it."""
    if kind == "dlq":
        mid = region.client("sqs").send_message(QueueUrl=region.dlq_url, MessageBody="planted: a message in the DLQ",
                                                MessageGroupId="planted", MessageDeduplicationId=str(uuid.uuid4()))["MessageId"]  # fmt: skip
        return f"sent message {mid} straight into the DLQ {region.dlq_name}"
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


def plant_second_consumer(region: SoakRegion, manifest: Path, prefix: str, quiet_from: float) -> str:
    """Self-test of the second-consumer check: once every fault window is over, one more order is sent into a
    group of its own and received by a second client (the soak's own, directly at the emulator) before any worker
    gets it; that client lets it go without deleting it and a worker then applies it with ReceiveCount 2, which no
    fault explains. The workers are stopped (SIGSTOP) for the few seconds it takes, so that none of their long
    polls takes the message first; nothing is held then (the backlog is clear)."""
    if (d := quiet_from - time.time()) > 0:
        log(f"plant second_consumer: waiting {d:.1f}s for the last fault window to close")
        time.sleep(d)
    sqs = region.client("sqs")
    live = [i["id"] for i in region.instances("InService") if i.get("process_alive")]
    for iid in live:
        region.sim_post(f"/_sim/instances/{iid}/signal", {"signal": "STOP"})
    try:
        time.sleep(3)  # the polls out when they stopped end (wait time 2 s) with nothing
        oid, group = f"{prefix}-planted", f"{prefix}-gplanted"
        body = valid_body(oid, group, random.Random(0))
        mid = sqs.send_message(
            QueueUrl=region.queue_url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=oid
        )["MessageId"]
        with open(manifest, "a") as mf:
            mf.write(json.dumps({"order_id": oid, "group": group, "expect": "accepted", "message_id": mid,
                                 "kind": "order", "sent_at": round(time.time(), 3)}) + "\n")  # fmt: skip
        got = sqs.receive_message(QueueUrl=region.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=1, WaitTimeSeconds=2,
                                  AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])  # fmt: skip
        if not got or got[0]["MessageId"] != mid:
            return f"planted order {oid} sent, but the second client did not receive it ({got})"
        time.sleep(1.5)
    finally:
        for iid in live:
            with contextlib.suppress(Exception):
                region.sim_post(f"/_sim/instances/{iid}/signal", {"signal": "CONT"})
    with contextlib.suppress(Exception):
        wait_for(f"the planted order {oid}", 30, lambda: any(r["OrderID"] == oid for r in region.records()), every=1)
    return f"order {oid} (message {mid}, group {group}) received by a second client before a worker applied it"


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
                    records = region.count_records()
                    if records >= expected_keys:
                        backlog_s = time.monotonic() - sent_done
                        break
            time.sleep(1)
        if backlog_s is None:
            with contextlib.suppress(Exception):
                records = region.count_records()
            failures.append(f"backlog not clear after {a.backlog_timeout}s: {records}/{expected_keys} records, "
                            f"queue depth {queue_depth(region)}")  # fmt: skip
        else:
            log(f"backlog clear {backlog_s:.1f}s after the last send; waiting {vis + 2}s for late applies")
            time.sleep(vis + 2)
        slack = vis + a.drain_timeout + 2
        if a.plant_bug == "second_consumer":
            quiet = max([f["end"] + slack for f in chaos.timeline], default=0)
            report["planted_bug"] = plant_second_consumer(region, manifest, prefix, quiet)
            log(f"PLANTED BUG (self-test of the audit): {report['planted_bug']}")
        logs_before = utc_now()
        wl = scan_worker_logs(region.worker_log_dir, before=logs_before)
        sc = second_consumer(region.records(), manifest, chaos.timeline, wl["releases"], vis, a.drain_timeout)
        if a.plant_bug and a.plant_bug != "second_consumer":
            report["planted_bug"] = plant_bug(region, a.plant_bug)
            log(f"PLANTED BUG (self-test of the audit): {report['planted_bug']}")
        report["redrive_policy"] = redrive_policy(region)
        report["dlq_depth"] = dlq_depth(region)
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
        # Instances whose termination went ahead only because the hook timed out, though no kill explains it
        # (a kill's hook always times out): the worker did not complete its own hook.
        killed = {f["target"] for f in chaos.timeline if f["kind"] == "kill"}
        report["hook_timeouts_not_killed"] = [
            {"instance": i["id"], "at": e["at"], "faults": [f["kind"] for f in chaos.timeline if f["target"] == i["id"]]}
            for i in status["instances"] if i["id"] not in killed
            for e in [sim.hook_timed_out(i)] if e
        ]  # fmt: skip
        report["chaos_errors"] = chaos.errors
        report["faults_skipped"] = chaos.skipped
        report["notices_after_replacement"] = chaos.notices_too_late
        report["producer_retries"] = producer.retries
        # Drains: read the logs while the workers still run (the final shutdown drains are not soak drains).
        ds = drains(region.worker_log_dir, before=logs_before)
    total_s = time.monotonic() - t_start
    # Proxy rules: how many requests each fault kind's rules failed, stalled or reset.
    rule_hits: dict[str, dict] = {}
    kind_of = {r["id"]: r["kind"] for r in chaos.rules}
    for rule in (report.get("proxy") or {}).get("rules", []):
        k = kind_of.get(rule.get("id"), "other")
        h = rule_hits.setdefault(k, {"rules": 0, "hits": 0, "matched": 0})
        h["rules"] += 1
        h["hits"] += int(rule.get("hits") or 0)
        h["matched"] += int(rule.get("matched") or 0)
    # Every instance interrupted while SQS stalled must still have completed its own lifecycle hook.
    stall_drains = []
    for f in chaos.timeline:
        if f["kind"] == "sqs_stall_drain":
            mine = [d for d in ds if d["instance"] == f["target"]]
            stall_drains.append({"instance": f["target"], "hook": mine[0].get("hook") if mine else None,
                                 "took_ms": mine[0]["took_ms"] if mine else None,
                                 "released": mine[0].get("released") if mine else None,
                                 "deadline_hit": mine[0].get("deadline_hit") if mine else None})  # fmt: skip
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
            "position_gaps": v.get("position_gaps"),
            "second_consumer_receives": sc["second_consumer_receives"],
            "receive_counts": sc,
            "worker_log_signs": wl["counts"],
            "hold_lost": wl["hold_lost"][:50],
            "rule_hits": rule_hits,
            "sqs_stall_drains": stall_drains,
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
        for name, val in (("lost", lost), ("applied twice", twice), ("out of order", ooo),
                          ("position gaps", v.get("position_gaps") or 0)):  # fmt: skip
            if val:
                failures.append(f"INVARIANT BROKEN: {name} = {val}")
    if report["redrive_policy"] is None:
        failures.append("the queue has no RedrivePolicy: the DLQ invariant would mean nothing")
    if report["dlq_depth"]:
        failures.append(f"INVARIANT BROKEN: messages in the DLQ = {report['dlq_depth']}")
    if sc["second_consumer_receives"]:
        failures.append(f"INVARIANT BROKEN: second-consumer receives = {sc['second_consumer_receives']} "
                        f"(ReceiveCount > 1 that no hold-breaking fault or release explains)")  # fmt: skip
    if bad := [d for d in stall_drains if d["hook"] != "Completed"]:
        failures.append(f"lifecycle hook not completed after an interruption under an SQS stall: {bad}")
    report["failures"] = failures
    report["verdict"] = "FAILED" if failures else "OK"
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = render(report)
    (out / "report.txt").write_text(text)
    print(text, flush=True)
    return 1 if failures else 0


def render(r: dict) -> str:
    d = r["drains"]
    rc = r["receive_counts"]
    faults = ", ".join(f"{k} {v}" for k, v in r["faults"].items() if v) or "none"
    lines = [
        "== chaos soak report ==",
        f"seed {r['seed']}, {r['workers']} workers, {r['groups']} groups; instances launched {r['instances']['launched']}, "
        f"terminated {r['instances']['terminated']}"
        + ("; DynamoDB on DynamoDB Local" if r["config"].get("dynamodb") == "dynamodb-local" else ""),
        f"orders sent      {r['orders_sent']} ({r['valid_orders_sent']} valid, {r['malformed_sent']} malformed) "
        f"+ {r['duplicate_sends']} duplicate sends = {r['messages_sent']} messages",
        f"records          {r['records']} of {r['expected_records']} expected: applied {r['applied']}, rejected {r['rejected']}",
        f"lost             {r['lost']}",
        f"applied twice    {r['applied_twice']}",
        f"out of order     {r['out_of_order']}",
        f"position gaps    {r['position_gaps']}",
        f"in DLQ           {r['dlq_depth']} (redrive: {json.dumps(r.get('redrive_policy'))})",
        (
            f"second consumer  {r['second_consumer_receives']} unexplained of {rc['redelivered']} records with ReceiveCount > 1 "
            f"(explained by {', '.join(f'{k} {v}' for k, v in rc['explained_by'].items()) or '-'}); "
            f"ReceiveCount histogram {', '.join(f'{k}: {v}' for k, v in rc['receive_count_histogram'].items())}"
        ),
        f"wrong verdict    {r['wrong_verdict']}   unexpected {r['unexpected']}",
        f"faults           {r['faults_total']}: {faults} (skipped {r.get('faults_skipped', 0)}: under two healthy workers; "
        f"rebalance_notice on an instance already replaced {r.get('notices_after_replacement', 0)})",
    ]
    if r.get("proxy"):
        p = r["proxy"]
        lines.append(
            f"proxy            {p['connections']} connections, {p['reset']} reset, stalls {p['faults']['stall']}, drops {p['faults']['drop']}"
        )
    if d["count"]:
        t = d["took_ms"]
        lines.append(
            f"drains           {d['count']} ({', '.join(f'{k} {v}' for k, v in d['by_trigger'].items())}); took ms min {t['min']}, "
            f"median {t['median']}, p95 {t['p95']}, max {t['max']}; deadline hit {d['deadline_hit']}; "
            f"messages released {d['released']}; hooks completed {d['hooks_completed']}"
        )
    else:
        lines.append("drains           0")
    if r.get("sqs_stall_drains"):
        sd = r["sqs_stall_drains"]
        lines.append(
            f"sqs_stall_drain  {len(sd)}: hooks completed {sum(1 for x in sd if x['hook'] == 'Completed')}; drains took ms "
            f"{[x['took_ms'] for x in sd]}, released {[x['released'] for x in sd]}, deadline hit {sum(1 for x in sd if x['deadline_hit'])}"
        )
    if r.get("hook_timeouts_not_killed"):
        ht = r["hook_timeouts_not_killed"]
        lines.append(
            f"hook timed out  {len(ht)} instances not killed: "
            + ", ".join(f"{x['instance']} ({'/'.join(x['faults']) or '-'})" for x in ht)
        )
    if r.get("rule_hits"):
        lines.append(
            "proxy rules      "
            + ", ".join(f"{k}: {h['rules']} rules, {h['hits']} requests hit" for k, h in r["rule_hits"].items())
        )
    w = r.get("worker_log_signs") or {}
    lines.append(
        "worker logs      " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in w.items() if v) or "worker logs      -"
    )
    lines.append(
        f"timing           sending {r['send_seconds']}s, backlog clear {r['backlog_clear_seconds']}s after the last send, total {r['total_seconds']}s"
    )
    for e in r.get("verify_examples") or []:
        lines.append(f"  ! {e}")
    for e in rc.get("unexplained") or []:
        lines.append(f"  ! ReceiveCount {e.get('ReceiveCount')} unexplained: {json.dumps(e)}")
    for e in r.get("chaos_errors") or []:
        lines.append(f"  fault error: {e}")
    for f in r["failures"]:
        lines.append(f"FAIL: {f}")
    lines.append(f"VERDICT: {r['verdict']}")
    return "\n".join(lines) + "\n"


def main(argv: list | None = None) -> int:
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
    p.add_argument(
        "--denied-seconds", type=float, default=10, help="length of a `denied` window (DynamoDB AccessDeniedException)"
    )
    p.add_argument("--denied-max", type=int, default=1, help="at most this many `denied` windows per run")
    p.add_argument("--plant-bug", choices=["lost", "twice", "out_of_order", "dlq", "second_consumer"],
                   help="self-test: damage the table before verify (delete a record / advance a group's LastPosition / "
                        "swap two positions), put a message in the DLQ, or have a second client receive an order "
                        "before a worker applies it; the soak must then FAIL")  # fmt: skip
    p.add_argument(
        "--dynamodb",
        choices=DYNAMODB_BACKENDS,
        default="ministack",
        help="where the tables live: ministack (with SQS) or dynamodb-local (AWS's own engine)",
    )
    p.add_argument("--out", default=str(target_dir() / "soak" / time.strftime("%Y%m%dT%H%M%S")))
    a = p.parse_args(argv)
    if a.faults and (bad := set(a.faults.split(",")) - set(FAULT_KINDS)):
        p.error(f"unknown fault kinds {sorted(bad)}; known: {', '.join(FAULT_KINDS)}")
    try:
        return run(a)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
