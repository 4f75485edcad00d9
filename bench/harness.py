"""Plumbing for the benchmark: processes, the emulator, queue and tables, load, metrics, audits.

Everything started here is registered and stopped (its whole process group) when the run ends, also on
Ctrl-C or an exception: see `Procs`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
REGION = "us-east-1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A run that did not work (as opposed to a run that was slow)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, timeout: float, fn, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# ---- processes ----------------------------------------------------------------------------------------------


class Procs:
    """Every child this benchmark started; each in its own process group, killed on stop_all()."""

    live: list[subprocess.Popen] = []

    @classmethod
    def spawn(cls, argv, env, log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "wb")
        p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        f.close()
        p.log_path = log  # type: ignore[attr-defined]
        cls.live.append(p)
        return p

    @classmethod
    def stop(cls, p: subprocess.Popen, sig=signal.SIGTERM, grace: float = 10.0) -> int | None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if p in cls.live:
            cls.live.remove(p)
        return p.returncode

    @classmethod
    def stop_all(cls):
        for p in list(cls.live):
            cls.stop(p, signal.SIGKILL, 5)


def proc_usage(pid: int) -> dict:
    """Peak RSS (VmHWM) and CPU seconds (utime + stime) of a live process."""
    out = {"rss_peak_kib": None, "cpu_s": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["rss_peak_kib"] = int(line.split()[1])
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        pass
    return out


# ---- the emulator ---------------------------------------------------------------------------------------------


class Emulator:
    """One ministack (SQS + DynamoDB) on a free port, for one run."""

    def __init__(self, logdir: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, BIND_HOST="127.0.0.1", GATEWAY_PORT=str(self.port))
        binary = os.environ.get("MINISTACK_BIN", str(VENV_BIN / "ministack"))
        if not Path(binary).exists():
            raise BenchError(f"{binary} missing: run scripts/bootstrap")
        self.proc = Procs.spawn([binary], env, logdir / f"ministack-{self.port}.log")

        def up():
            if self.proc.poll() is not None:
                raise BenchError(f"ministack exited: see {self.proc.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        wait_until("the emulator to listen", 60, up)

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
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="test", aws_secret_access_key="test",
                            config=BotoConfig(retries={"max_attempts": 10, "mode": "standard"},
                                              max_pool_connections=20))

    def usage(self) -> dict:
        return proc_usage(self.proc.pid)

    def stop(self):
        Procs.stop(self.proc, signal.SIGKILL, 5)


class Fixture:
    """A FIFO queue and the two tables, with a fresh suffix."""

    def __init__(self, emu: Emulator):
        self.emu = emu
        self.suffix = uuid.uuid4().hex[:8]
        self.sqs = emu.client("sqs")
        self.ddb = emu.client("dynamodb")
        self.queue_url = self.sqs.create_queue(
            QueueName=f"orders-{self.suffix}.fifo",
            Attributes={"FifoQueue": "true", "VisibilityTimeout": "120"},
        )["QueueUrl"]
        self.orders_table = f"orders-{self.suffix}"
        self.groups_table = f"order-groups-{self.suffix}"
        for table, key in ((self.orders_table, "OrderID"), (self.groups_table, "MessageGroupId")):
            self.ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                  AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                                  KeySchema=[{"AttributeName": key, "KeyType": "HASH"}])
        self.sent_at: dict[str, float] = {}
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

    def plan(self, n: int, groups: int) -> list[tuple[str, str]]:
        """n orders spread round-robin over `groups` groups: [(order_id, group)] in send order."""
        return [(f"o-{self.suffix}-{i:06d}", f"cust-{i % groups:04d}") for i in range(n)]

    def preload(self, n: int, groups: int, threads: int = 4) -> float:
        """Send n orders in batches of 10, groups interleaved as customers' orders arrive (round-robin), each
        group's orders in order; `threads` senders each own a share of the groups. Returns seconds taken."""
        plan = self.plan(n, groups)
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
                    chunk = entries[i:i + 10]
                    now = time.time()
                    out = sqs.send_message_batch(QueueUrl=self.queue_url, Entries=[
                        {"Id": str(k), "MessageBody": order_body(oid, g), "MessageGroupId": g,
                         "MessageDeduplicationId": oid} for k, (oid, g) in enumerate(chunk)])
                    if out.get("Failed"):
                        raise BenchError(f"send failed: {out['Failed'][:2]}")
                    with lock:
                        for oid, g in chunk:
                            self.sent_at[oid] = now
            except BaseException as e:  # noqa: BLE001 - reported below
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
            self.manifest.append({"order_id": oid, "group": g, "expect": "accepted"})
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
            sqs.send_message(QueueUrl=self.queue_url, MessageBody=order_body(oid, g), MessageGroupId=g,
                             MessageDeduplicationId=oid)
            self.manifest.append({"order_id": oid, "group": g, "expect": "accepted"})
        return {"sent": n, "seconds": time.monotonic() - t0, "max_lag_s": late}

    def write_manifest(self, path: Path) -> Path:
        path.write_text("".join(json.dumps(m) + "\n" for m in self.manifest))
        return path

    # -- read back --

    def records(self) -> list[dict]:
        out = []
        pages = self.ddb.get_paginator("scan").paginate(
            TableName=self.orders_table, ConsistentRead=True,
            ProjectionExpression="OrderID, MessageGroupId, ProcessedAt, ProcessedBy, GroupPosition")
        for page in pages:
            for item in page["Items"]:
                out.append({k: list(v.values())[0] for k, v in item.items()})
        return out


def order_body(oid: str, group: str) -> str:
    return json.dumps({"order_id": oid, "customer_id": group,
                       "items": [{"sku": "SKU-1", "qty": 2, "unit_price_cents": 1299},
                                 {"sku": "SKU-7", "qty": 1, "unit_price_cents": 4999}],
                       "currency": "EUR", "placed_at": "2026-11-25T12:00:00Z"}, separators=(",", ":"))


def parse_time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# ---- consumers ------------------------------------------------------------------------------------------------


class Worker:
    """One order-worker process with its own metrics port."""

    def __init__(self, binary: Path, fx: Fixture, name: str, logdir: Path, extra: list[str] | None = None,
                 env_extra: dict | None = None, imds: bool = False):
        self.name = name
        self.metrics_port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "info", **fx.emu.env(), **(env_extra or {})}
        argv = [str(binary), "--queue-url", fx.queue_url, "--orders-table", fx.orders_table,
                "--groups-table", fx.groups_table, "--metrics-addr", f"127.0.0.1:{self.metrics_port}"]
        if not imds:
            argv += ["--imds-disabled", "--instance-id", name]
        argv += extra or []
        self.proc = Procs.spawn(argv, env, logdir / f"{name}.log")
        self.started = time.time()

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.proc.returncode}: see {self.proc.log_path}\n"
                             + tail(self.proc.log_path))

    def wait_ready(self, timeout: float = 60):
        def ready():
            self.check_alive()
            return self.get("/readyz", 0.5)[0] == 200
        wait_until(f"{self.name} to be ready", timeout, ready)

    def metrics(self) -> dict:
        code, text = self.get("/metrics")
        if code != 200:
            raise BenchError(f"{self.name}: /metrics answered {code}")
        return parse_prometheus(text)

    def usage(self) -> dict:
        return proc_usage(self.proc.pid)

    def terminate(self):
        """SIGTERM: the worker drains and exits (after its current long poll returns: up to --wait-time)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, grace: float = 40) -> int | None:
        self.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        return Procs.stop(self.proc, signal.SIGKILL, 5)


class Baseline:
    """The seed's boto3 worker (bench/baseline/baseline_worker.py)."""

    def __init__(self, fx: Fixture, logdir: Path, name: str = "baseline"):
        self.name = name
        self.stats_file = logdir / f"{name}-stats.json"
        env = dict(os.environ, **fx.emu.env(), QUEUE_URL=fx.queue_url, ORDERS_TABLE=fx.orders_table,
                   BASELINE_STATS=str(self.stats_file), PYTHONUNBUFFERED="1")
        script = REPO / "bench" / "baseline" / "baseline_worker.py"
        self.proc = Procs.spawn([str(VENV_BIN / "python"), str(script)], env, logdir / f"{name}.log")
        self.started = time.time()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise BenchError(f"baseline exited with {self.proc.returncode}:\n" + tail(self.proc.log_path))

    def wait_ready(self, timeout: float = 60):
        def ready():
            self.check_alive()
            return "baseline ready" in Path(self.proc.log_path).read_text(errors="replace")
        wait_until("the baseline to be ready", timeout, ready)

    def usage(self) -> dict:
        return proc_usage(self.proc.pid)

    def stop(self) -> dict:
        Procs.stop(self.proc, signal.SIGTERM, 10)
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            raise BenchError(f"baseline wrote no stats:\n{tail(self.proc.log_path)}")


def tail(path, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)$')


def parse_prometheus(text: str) -> dict:
    """{(name, frozenset(labels)): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            pass
    return out


def metric_sum(metrics: dict, name: str, **want) -> float:
    return sum(v for (n, labels), v in metrics.items()
               if n == name and all((k, val) in labels for k, val in want.items()))


def add_metrics(all_metrics: list[dict]) -> dict:
    out: dict = {}
    for m in all_metrics:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


def histogram_quantile(metrics: dict, name: str, q: float) -> float | None:
    buckets = []
    for (n, labels), v in metrics.items():
        if n == f"{name}_bucket":
            le = dict(labels).get("le")
            buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    prev_b, prev_c = 0.0, 0.0
    for b, c in buckets:
        if c >= target:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * ((target - prev_c) / max(c - prev_c, 1e-9))
        prev_b, prev_c = b, c
    return None


# ---- audits ---------------------------------------------------------------------------------------------------


def verify_worker_run(binary: Path, fx: Fixture, logdir: Path, label: str) -> dict:
    """`order-worker verify`: lost, applied twice, out of order. A failed audit fails the run."""
    manifest = fx.write_manifest(logdir / f"{label}-manifest.jsonl")
    report_path = logdir / f"{label}-verify.json"
    env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn", **fx.emu.env()}
    r = subprocess.run([str(binary), "verify", "--table", fx.orders_table, "--groups-table", fx.groups_table,
                        "--manifest", str(manifest), "--json", str(report_path)],
                       env=env, capture_output=True, text=True, timeout=300)
    (logdir / f"{label}-verify.txt").write_text(r.stdout + r.stderr)
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        raise BenchError(f"{label}: verify produced no report (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    report["ok"] = r.returncode == 0
    if not report["ok"]:
        raise BenchError(f"{label}: the audit FAILED (exit {r.returncode}):\n{r.stdout}{r.stderr}")
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
    return {"records": len(recs), "distinct_orders": len(index), "lost": lost, "unexpected": unexpected,
            "out_of_order": out_of_order, "ok": lost == 0 and unexpected == 0 and out_of_order == 0}
