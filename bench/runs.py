"""The benchmark's runs: a fresh emulator, queue and tables per run, the load, the consumers (order-worker and the
seed's baseline), their metrics and usage, the audits. Processes, servers, scans, orders, metrics and times come
from the shared harness (../harness/).

Everything started here is registered in PROCS and stopped (its whole process group) when the run ends, also on
Ctrl-C or an exception.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

from harness import (
    REPO,
    HarnessError,
    Registry,
    audit,
    ddb,
    free_port,
    http_json,
    orders,
    parse_time,
    procs,
    servers,
    tail,
    venv_bin,
    wait_for,
)
from harness.gate import Gate
from harness.metrics import get, parse_prometheus

REGION = "us-east-1"
# Every child of the benchmark; stop_all() at the end of each run.
PROCS = Registry()
# A run that did not work (as opposed to a run that was slow): anything the harness raises counts.
BenchError = HarnessError
# The benchmark's order: two items, a fixed time (the same bytes in every run, so runs compare).
BENCH_ITEMS = [orders.item("SKU-1", 2, 1299), orders.item("SKU-7", 1, 4999)]


def order_body(oid: str, group: str) -> str:
    return orders.order_body(oid, group, BENCH_ITEMS, "2026-11-25T12:00:00Z")


# The IAM gates of the runs not yet stopped: stop_all() asks each for denials before it kills them.
GATES: list[Gate] = []


def stop_all() -> None:
    """Kill every child; a run whose gate denied anything fails here (AWS would have refused those calls)."""
    denied = None
    for gate in GATES:
        if gate.proc.alive():
            try:
                gate.check()
            except Exception as e:
                denied = denied or e
    GATES.clear()
    PROCS.stop_all(signal.SIGKILL, 5)
    if denied:
        raise denied


# ---- the emulator ---------------------------------------------------------------------------------------------


class Emulator:
    """One ministack (SQS + DynamoDB) on a free port for one run, behind the local region's IAM gate
    (harness/gate.py): the worker runs as the worker role of terraform/policies/ (each fixture's own key), the
    benchmark's own clients, verify and the seed's baseline as the deployer (the seed's design deploys no role)."""

    def __init__(self, logdir: Path):
        self.server = servers.start_ministack(PROCS, logdir)
        self.proc = self.server.proc
        self.port = self.server.port
        base = {"queue_name": "bench.fifo", "orders_table": "bench", "groups_table": "bench-groups",
                "keys": {"test": "deployer"}}  # fmt: skip
        self.gate = Gate.start(PROCS, logdir, "iam-gate", self.server.endpoint, base)
        GATES.append(self.gate)
        self.endpoint = self.gate.url

    def add_stack(self, stack: dict) -> None:
        if self.gate.iam != "off":
            http_json("POST", f"{self.gate.control}/iam/stacks", stack)

    def env(self) -> dict:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str):
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=BotoConfig(retries={"max_attempts": 10, "mode": "standard"}, max_pool_connections=20),
        )

    def usage(self) -> dict:
        return procs.usage(self.proc.pid)

    def stop(self):
        """Stop the emulator; a run the gate denied anything is a failed run (AWS would have refused it)."""
        try:
            if self.gate.proc.alive():  # else stop_all() checked it before it killed it
                self.gate.check()
        finally:
            PROCS.stop(self.proc, signal.SIGKILL, 5)
            PROCS.stop(self.gate.proc, signal.SIGKILL, 5)


class Fixture:
    """A FIFO queue and the two tables, with a fresh suffix."""

    def __init__(self, emu: Emulator):
        self.emu = emu
        self.suffix = uuid.uuid4().hex[:8]
        # The worker's key: letters and digits (DynamoDB Local refuses others), one per fixture.
        self.worker_key = f"BENCHWORKER{self.suffix}"
        emu.add_stack({"queue_name": f"orders-{self.suffix}.fifo", "orders_table": f"orders-{self.suffix}",
                       "groups_table": f"order-groups-{self.suffix}", "keys": {self.worker_key: "worker"}})  # fmt: skip
        self.sqs = emu.client("sqs")
        self.ddb = emu.client("dynamodb")
        self.queue_url = self.sqs.create_queue(
            QueueName=f"orders-{self.suffix}.fifo",
            Attributes={"FifoQueue": "true", "VisibilityTimeout": "120"},
        )["QueueUrl"]
        self.orders_table = f"orders-{self.suffix}"
        self.groups_table = f"order-groups-{self.suffix}"
        for table, key in ((self.orders_table, "OrderID"), (self.groups_table, "MessageGroupId")):
            self.ddb.create_table(
                TableName=table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            )
        self.sent_at: dict[str, float] = {}
        # Each send's SQS MessageId, for the manifest: verify places each item at its own message's send.
        self.message_id: dict[str, str] = {}
        self.manifest: list[dict] = []

    def queue_counts(self) -> tuple[int, int]:
        a = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])

    def wait_drained(self, timeout: float, check=None, every: float = 0.1) -> float:
        """Wait until the queue holds nothing (visible or in flight); returns the wall time it was seen so."""
        deadline = time.monotonic() + timeout
        while True:
            if check:
                check()
            if self.queue_counts() == (0, 0):
                return time.time()
            if time.monotonic() > deadline:
                raise BenchError(f"queue not drained after {timeout:.0f}s: {self.queue_counts()} left")
            time.sleep(every)

    # -- load --

    def plan(self, n: int, groups: int, run: int = 1) -> list[tuple[str, str]]:
        """n orders over `groups` groups, [(order_id, group)] in send order: `run` orders of one group back to
        back, then the next group's `run`, round-robin. run=1 interleaves the groups one order at a time (each
        receive then finds at most one order of a group: the worst case for batching by group); run=10 is a
        backlog whose groups' orders came in bursts (a receive of 10 returns one group's run)."""
        per_round = groups * run
        return [(f"o-{self.suffix}-{i:06d}", f"cust-{i % per_round // run:04d}") for i in range(n)]

    def preload(self, n: int, groups: int, threads: int = 4, run: int = 1) -> float:
        """Send n orders in batches of 10 in the order of plan(n, groups, run), each group's orders in order;
        `threads` senders each own a share of the groups (a batch of 10 then holds one group's run of 10, or 10
        groups' single orders while a sender owns at least 10 groups). Returns seconds taken."""
        plan = self.plan(n, groups, run)
        per_group: dict[str, list[str]] = {}
        for oid, g in plan:
            per_group.setdefault(g, []).append(oid)
        names = sorted(per_group)
        shards = [names[i::threads] for i in range(threads)]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def send(shard):
            try:
                sqs = self.emu.client("sqs")
                mine = set(shard)
                entries = [(oid, g) for oid, g in plan if g in mine]  # send order: groups interleaved
                for i in range(0, len(entries), 10):
                    chunk = entries[i : i + 10]
                    now = time.time()
                    out = sqs.send_message_batch(
                        QueueUrl=self.queue_url,
                        Entries=orders.batch_entries(
                            [{"body": order_body(oid, g), "group": g, "order_id": oid} for oid, g in chunk]
                        ),
                    )
                    if out.get("Failed"):
                        raise BenchError(f"send failed: {out['Failed'][:2]}")
                    ok = {e["Id"]: e["MessageId"] for e in out.get("Successful", [])}
                    with lock:
                        for k, (oid, _) in enumerate(chunk):
                            self.sent_at[oid] = now
                            self.message_id[oid] = ok[str(k)]
            except BaseException as e:
                errors.append(e)

        started = time.monotonic()
        ts = [threading.Thread(target=send, args=(s,)) for s in shards if s]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise BenchError(f"preload failed: {errors[0]!r}")
        for oid, g in plan:
            self.manifest.append(
                {"order_id": oid, "group": g, "expect": "accepted", "message_id": self.message_id[oid]}
            )
        return time.monotonic() - started

    def steady_load(self, rate: float, seconds: float, groups: int) -> dict:
        """One message at a time at `rate` per second for `seconds`; records each send time."""
        n = int(rate * seconds)
        plan = self.plan(n, groups)
        sqs = self.emu.client("sqs")
        t0 = time.monotonic()
        late = 0.0
        for i, (oid, g) in enumerate(plan):
            due = t0 + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            self.sent_at[oid] = time.time()
            mid = sqs.send_message(
                QueueUrl=self.queue_url, MessageBody=order_body(oid, g), MessageGroupId=g, MessageDeduplicationId=oid
            )["MessageId"]
            self.manifest.append({"order_id": oid, "group": g, "expect": "accepted", "message_id": mid})
        return {"sent": n, "seconds": time.monotonic() - t0, "max_lag_s": late}

    def write_manifest(self, path: Path) -> Path:
        path.write_text("".join(json.dumps(m) + "\n" for m in self.manifest))
        return path

    # -- read back --

    def records(self) -> list[dict]:
        return ddb.scan(self.ddb, self.orders_table, "OrderID, MessageGroupId, ProcessedAt, ProcessedBy, GroupPosition")


# ---- consumers ------------------------------------------------------------------------------------------------


class Worker:
    """One order-worker process with its own metrics port."""

    def __init__(
        self,
        binary: Path,
        fx: Fixture,
        name: str,
        logdir: Path,
        extra: list[str] | None = None,
        env_extra: dict | None = None,
        imds: bool = False,
    ):
        self.name = name
        self.metrics_port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "info", **fx.emu.env(),
               "AWS_ACCESS_KEY_ID": fx.worker_key, **(env_extra or {})}  # fmt: skip
        argv = [
            str(binary),
            "--queue-url",
            fx.queue_url,
            "--orders-table",
            fx.orders_table,
            "--groups-table",
            fx.groups_table,
            "--metrics-addr",
            f"127.0.0.1:{self.metrics_port}",
        ]
        if not imds:
            argv += ["--imds-disabled", "--instance-id", name]
        argv += extra or []
        self.proc = PROCS.spawn(name, argv, logdir / f"{name}.log", env=env)
        self.started = time.time()

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        return get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout)

    def alive(self) -> bool:
        return self.proc.alive()

    def check_alive(self):
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with {self.proc.returncode}: see {self.proc.log_path}\n" + tail(self.proc.log_path)
            )

    def wait_ready(self, timeout: float = 60):
        def ready():
            self.check_alive()
            return self.get("/readyz", 0.5)[0] == 200

        wait_for(f"{self.name} to be ready", timeout, ready, 0.05)

    def metrics(self) -> dict:
        code, text = self.get("/metrics")
        if code != 200:
            raise BenchError(f"{self.name}: /metrics answered {code}")
        return parse_prometheus(text)

    def usage(self) -> dict:
        return procs.usage(self.proc.pid)

    def terminate(self):
        """SIGTERM: the worker drains and exits (after its current long poll returns: up to --wait-time)."""
        if self.proc.alive():
            self.proc.send(signal.SIGTERM, group=False)

    def stop(self, grace: float = 40) -> int | None:
        self.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        return PROCS.stop(self.proc, signal.SIGKILL, 5)


class Baseline:
    """The seed's boto3 worker (bench/baseline/baseline_worker.py)."""

    def __init__(self, fx: Fixture, logdir: Path, name: str = "baseline"):
        self.name = name
        self.stats_file = logdir / f"{name}-stats.json"
        env = dict(
            os.environ,
            **fx.emu.env(),
            QUEUE_URL=fx.queue_url,
            ORDERS_TABLE=fx.orders_table,
            BASELINE_STATS=str(self.stats_file),
            PYTHONUNBUFFERED="1",
        )
        script = REPO / "bench" / "baseline" / "baseline_worker.py"
        self.proc = PROCS.spawn(name, [venv_bin("python"), script], logdir / f"{name}.log", env=env)
        self.started = time.time()

    def alive(self) -> bool:
        return self.proc.alive()

    def check_alive(self):
        if not self.alive():
            raise BenchError(f"baseline exited with {self.proc.returncode}:\n" + tail(self.proc.log_path))

    def wait_ready(self, timeout: float = 60):
        def ready():
            self.check_alive()
            return "baseline ready" in Path(self.proc.log_path).read_text(errors="replace")

        wait_for("the baseline to be ready", timeout, ready, 0.05)

    def usage(self) -> dict:
        return procs.usage(self.proc.pid)

    def stop(self) -> dict:
        PROCS.stop(self.proc, signal.SIGTERM, 10)
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            raise BenchError(f"baseline wrote no stats:\n{tail(self.proc.log_path)}") from None


# ---- audits ---------------------------------------------------------------------------------------------------


def verify_worker_run(binary: Path, fx: Fixture, logdir: Path, label: str) -> dict:
    """`order-worker verify`: lost, applied twice, out of order. A failed audit fails the run."""
    manifest = fx.write_manifest(logdir / f"{label}-manifest.jsonl")
    report_path = logdir / f"{label}-verify.json"
    env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn", **fx.emu.env()}
    report = audit.verify(binary, env, fx.orders_table, fx.groups_table, manifest, report_path, timeout=300)
    (logdir / f"{label}-verify.txt").write_text(report["text"])
    if not report_path.exists():
        raise BenchError(f"{label}: verify produced no report (exit {report['exit_code']}):\n{report['text']}")
    code, text = report.pop("exit_code"), report.pop("text")  # the results keep the report alone, as before
    report["ok"] = code == 0
    if not report["ok"]:
        raise BenchError(f"{label}: the audit FAILED (exit {code}):\n{text}")
    return report


def audit_baseline(fx: Fixture) -> dict:
    """The baseline keeps no positions; count what it wrote and check group order by its ProcessedAt stamps."""
    index = {m["order_id"]: i for i, m in enumerate(fx.manifest)}
    recs = fx.records()
    ids = [r["OrderID"] for r in recs]
    lost = len(set(index) - set(ids))
    unexpected = len(set(ids) - set(index))
    per_group: dict[str, list] = {}
    for r in recs:
        if r["OrderID"] in index:
            per_group.setdefault(r["MessageGroupId"], []).append((parse_time(r["ProcessedAt"]), index[r["OrderID"]]))
    out_of_order = 0
    for rows in per_group.values():
        rows.sort()
        highest = -1
        for _, i in rows:
            if i < highest:
                out_of_order += 1
            highest = max(highest, i)
    return {
        "records": len(recs),
        "distinct_orders": len(index),
        "lost": lost,
        "unexpected": unexpected,
        "out_of_order": out_of_order,
        "ok": lost == 0 and unexpected == 0 and out_of_order == 0,
    }
