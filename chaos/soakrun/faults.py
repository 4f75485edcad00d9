"""The soak's faults: the kinds (chaos/soak.py's docstring says what each does), which of them can take a hold
away (the second-consumer check's explanations), and the thread that injects them at random."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import TYPE_CHECKING

from harness import log, metrics

if TYPE_CHECKING:  # annotations only: the region (and boto3) is not needed to import this module
    from .region import SoakRegion


FAULT_KINDS = ("fis", "rebalance", "rebalance_notice", "kill", "freeze", "imds", "network",
               "sqs_stall_drain", "visibility_fail", "ddb_throttle", "denied", "lost_response")  # fmt: skip
DEFAULT_WEIGHTS = {"fis": 2, "rebalance": 1, "rebalance_notice": 1, "kill": 2, "freeze": 2, "imds": 1, "network": 2,
                   "sqs_stall_drain": 2, "visibility_fail": 1, "ddb_throttle": 2, "denied": 1, "lost_response": 1}  # fmt: skip
# Faults that can take a hold away from the worker holding a message (or hide a handed-out message until its
# visibility times out), so that a later receive of the message is expected; see checks.second_consumer() and SOAK.md.
HOLD_BREAKING = {"fis", "rebalance", "rebalance_notice", "kill", "freeze", "network", "sqs_stall_drain",
                 "visibility_fail"}  # fmt: skip
# Of those, the faults on one instance after which that instance never receives again (a kill; a drain, which
# takes nothing new): they explain another worker's receive of a message only.
NEVER_RECEIVES_AGAIN = {"fis", "rebalance", "rebalance_notice", "kill"}
# The worker's DynamoDB writes: a group's claim, and the batches of record inserts.
DDB_WRITE_OPS = ("UpdateItem", "BatchExecuteStatement")


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
                roleArn=r.fis_role_arn(),  # the stack's FIS role: the gate authorises its interruptions
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
