#!/usr/bin/env python3
"""The local region: the SQS/DynamoDB emulator (ministack) plus spot-sim (metadata, Auto Scaling, FIS) with a
fleet of real order-worker processes, and the queue and tables with the names and settings of terraform/.

Used as a library (the demo, the chaos soak) and from the command line (the shell scripts):

    from localregion import LocalRegion
    with LocalRegion(out_dir="out/x", workers=3, time_scale=0.1, worker_args=["--work-delay", "200ms"]) as r:
        manifest = r.send_orders(100, groups=4)            # SendMessageBatch, in order, manifest with MessageIds
        r.wait_records(len(manifest), timeout=120)
        report = r.verify()                               # runs `order-worker verify`, returns its JSON report
    # everything started is stopped here, also on Ctrl-C and SIGTERM

    chaos/localregion.py up --out out/x --env-file out/x/region.env   # runs until SIGINT/SIGTERM
    chaos/localregion.py status --api http://127.0.0.1:PORT

`up` writes a shell file of `export` lines (the standard AWS endpoint variables, SPOT_SIM_API, QUEUE_URL,
DLQ_URL, ORDERS_TABLE, GROUPS_TABLE, ORDER_WORKER_BIN) once the fleet is InService; the scripts in chaos/ then run
against the local region exactly as they run against AWS.

Only the standard library and boto3 (the project's virtual environment) are used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
# Dummy credentials: the emulator and spot-sim do not check signatures.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}

# The values terraform/variables.tf declares (read from it when it is there; these are the fallbacks).
TERRAFORM_FALLBACK = {
    "queue_name": "orders.fifo",
    "dlq_name": "orders-dlq.fifo",
    "orders_table_name": "orders",
    "groups_table_name": "order-groups",
    "high_throughput_fifo": True,
    "visibility_timeout_seconds": 120,
    "receive_wait_time_seconds": 20,
    "message_retention_seconds": 345600,
    "max_receive_count": 10,
    "dead_letter_queue": False,
    "asg_name": "order-workers",
    "lifecycle_hook_name": "order-worker-drain",
    "lifecycle_hook_timeout_seconds": 120,
    "fis_selection_mode": "COUNT(1)",
    "fis_duration_before_interruption": "PT2M",
}
DLQ_RETENTION_SECONDS = 1209600  # terraform/queue.tf: the DLQ keeps messages as long as SQS allows


def log(msg: str) -> None:
    """A progress line on stderr, with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def terraform_defaults(tf_dir: Path = REPO / "terraform") -> dict:
    """Defaults of the variables the local region mirrors, read from terraform/variables.tf."""
    out = dict(TERRAFORM_FALLBACK)
    try:
        text = (tf_dir / "variables.tf").read_text()
    except OSError:
        return out
    for m in re.finditer(r'variable\s+"(\w+)"\s*\{(.*?)\n\}', text, re.S):
        name, body = m.group(1), m.group(2)
        if name not in out:
            continue
        d = re.search(r"^\s*default\s*=\s*(.+?)\s*(#.*)?$", body, re.M)
        if not d:
            continue
        raw = d.group(1)
        if raw.startswith('"') and raw.endswith('"'):
            out[name] = raw[1:-1]
        elif raw in ("true", "false"):
            out[name] = raw == "true"
        elif re.fullmatch(r"-?\d+", raw):
            out[name] = int(raw)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, timeout: float, f: Callable[[], Any], every: float = 0.2) -> Any:
    """Call `f` until it returns something truthy; raise TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def binary(name: str, profile: str = "debug") -> Path:
    """order-worker / spot-sim: $ORDER_WORKER_BIN / $SPOT_SIM_BIN, else ${CARGO_TARGET_DIR:-target}/<profile>/."""
    env = {"order-worker": "ORDER_WORKER_BIN", "spot-sim": "SPOT_SIM_BIN"}.get(name)
    if env and os.environ.get(env):
        return Path(os.environ[env])
    return target_dir() / profile / name


def venv_bin(name: str) -> Path:
    """A tool of the project's virtual environment (ministack, aws), else whatever is on PATH."""
    p = REPO / ".venv" / "bin" / name
    return p if p.exists() else Path(name)


def order_body(order_id: str, customer: str, seq: int = 0) -> str:
    """A valid order body (the worker refuses unknown fields)."""
    return json.dumps(
        {
            "order_id": order_id,
            "customer_id": customer,
            "items": [{"sku": f"SKU-{seq % 7 + 1}", "qty": seq % 3 + 1, "unit_price_cents": 1299}],
            "currency": "EUR",
            "placed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        separators=(",", ":"),
    )


def make_orders(n: int, groups: int, prefix: str) -> list[dict]:
    """`n` orders in send order, spread round-robin over `groups` groups: [{order_id, group, body}]."""
    out = []
    for i in range(n):
        g = f"{prefix}-cust-{i % groups:02d}"
        oid = f"{prefix}-{i:05d}"
        out.append({"order_id": oid, "group": g, "body": order_body(oid, g, i)})
    return out


def http_json(method: str, url: str, body: Optional[dict] = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {url}: {e.code} {e.read().decode(errors='replace')}") from None


class Proc:
    """A child process in its own session (Ctrl-C reaches us, not it), logged to a file, stopped by group."""

    def __init__(self, name: str, cmd: list, log_path: Path, env: Optional[dict] = None, cwd: Optional[Path] = None):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.p = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, wait up to `grace`, then SIGKILL it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.p.pid}) still running after {grace:.0f}s: SIGKILL")
        # Whatever is left of the group (the leader may be gone while a child lingers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(timeout=5)
        self._log.close()


class LocalRegion:
    """Emulator + spot-sim + queue/DLQ/tables. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        out_dir: os.PathLike | str,
        workers: int = 3,
        time_scale: float = 0.1,
        worker_args: Iterable[str] = (),
        sim_args: Iterable[str] = (),
        suffix: str = "",
        profile: str = "debug",
        region: str = REGION,
        worker_env: Optional[dict] = None,
        status_every: Optional[str] = None,
        kill_grace: str = "5s",
        launch_delay: str = "40s",
        quiet: bool = False,
        dead_letter_queue: Optional[bool] = None,
    ):
        """`suffix` is appended to every resource name (each region has its own emulator, so the default is the
        exact Terraform names). `worker_args` go to every worker, replacing the local defaults they name.
        `launch_delay` (simulated) is Pending -> InService: EC2 takes tens of seconds to launch, and a much shorter
        delay lets capacity rebalancing replace and terminate an instance before FIS's interruption notice shows."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.time_scale = time_scale
        self.worker_args = list(worker_args)
        self.sim_args = list(sim_args)
        self.profile = profile
        self.region = region
        self.worker_env = dict(worker_env or {})
        self.status_every = status_every
        self.kill_grace = kill_grace
        self.launch_delay = launch_delay
        self.quiet = quiet
        tf = terraform_defaults()
        self.tf = tf
        # A DLQ and its redrive policy only when asked (None: terraform's dead_letter_queue default, off).
        self.dead_letter_queue = tf["dead_letter_queue"] if dead_letter_queue is None else dead_letter_queue
        self.queue_name = tf["queue_name"].removesuffix(".fifo") + suffix + ".fifo"
        self.dlq_name = tf["dlq_name"].removesuffix(".fifo") + suffix + ".fifo"
        self.orders_table = tf["orders_table_name"] + suffix
        self.groups_table = tf["groups_table_name"] + suffix
        self.group_name = tf["asg_name"]
        self.hook_name = tf["lifecycle_hook_name"]
        self.endpoint: Optional[str] = None
        self.sim_api: Optional[str] = None
        self.queue_url: Optional[str] = None
        self.dlq_url: Optional[str] = None
        self.worker_log_dir = self.out_dir / "workers"
        self._procs: list[Proc] = []
        self._emulator: Optional[Proc] = None
        self._sim: Optional[Proc] = None
        self._stopped = False
        self._old_handlers: dict = {}
        self._clients: dict = {}
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> "LocalRegion":
        self._install_signal_handlers()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _install_signal_handlers(self) -> None:
        """SIGTERM and SIGHUP become SystemExit (so `with` blocks unwind and stop everything); SIGINT already
        raises KeyboardInterrupt. Only from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum, _frame):
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, on_signal)

    def say(self, msg: str) -> None:
        if not self.quiet:
            log(msg)

    def start(self) -> "LocalRegion":
        self.start_emulator()
        self.create_resources()
        self.start_sim()
        return self

    def start_emulator(self, timeout: float = 60) -> str:
        port = free_port()
        env = dict(os.environ, BIND_HOST="127.0.0.1", GATEWAY_PORT=str(port), SERVICES="sqs,dynamodb")
        env.setdefault("LOG_LEVEL", "WARNING")
        self._emulator = self._spawn("ministack", [venv_bin("ministack")], env=env)
        self.endpoint = f"http://127.0.0.1:{port}"

        def up():
            if not self._emulator.alive():
                raise RuntimeError(f"ministack exited; see {self._emulator.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
            return False

        wait_for("the emulator to listen", timeout, up)
        self.say(f"emulator (ministack) on {self.endpoint}, pid {self._emulator.pid}")
        return self.endpoint

    def client(self, service: str):
        """A boto3 client for sqs / dynamodb (the emulator) or autoscaling / fis (spot-sim)."""
        with self._lock:
            if service not in self._clients:
                import boto3  # late: `status` and `--help` work without it
                from botocore.config import Config

                url = self.sim_api if service in ("autoscaling", "fis") else self.endpoint
                self._clients[service] = boto3.client(
                    service,
                    region_name=self.region,
                    endpoint_url=url,
                    aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                    config=Config(retries={"max_attempts": 5, "mode": "standard"}),
                )
            return self._clients[service]

    def create_resources(self) -> None:
        """The queue (a DLQ and its redrive only with dead_letter_queue) and both tables, as terraform/queue.tf and
        tables.tf make them (less KMS and point-in-time recovery, which a local emulator has no use for)."""
        tf = self.tf
        sqs = self.client("sqs")
        redrive = {}  # terraform/queue.tf: a DLQ and its redrive policy only with dead_letter_queue
        if self.dead_letter_queue:
            self.dlq_url = sqs.create_queue(
                QueueName=self.dlq_name,
                Attributes={
                    "FifoQueue": "true",
                    "ContentBasedDeduplication": "false",
                    "MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS),
                },
            )["QueueUrl"]
            attrs = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])["Attributes"]
            policy = {"deadLetterTargetArn": attrs["QueueArn"], "maxReceiveCount": tf["max_receive_count"]}
            redrive["RedrivePolicy"] = json.dumps(policy)
        ht = bool(tf["high_throughput_fifo"])
        self.queue_url = sqs.create_queue(
            QueueName=self.queue_name,
            Attributes={
                "FifoQueue": "true",
                "ContentBasedDeduplication": "true",
                "DeduplicationScope": "messageGroup" if ht else "queue",
                "FifoThroughputLimit": "perMessageGroupId" if ht else "perQueue",
                "VisibilityTimeout": str(tf["visibility_timeout_seconds"]),
                "ReceiveMessageWaitTimeSeconds": str(tf["receive_wait_time_seconds"]),
                "MessageRetentionPeriod": str(tf["message_retention_seconds"]),
                **redrive,
            },
        )["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        with contextlib.suppress(Exception):  # not every emulator knows RedriveAllowPolicy; it is advisory here
            if self.dlq_url:
                sqs.set_queue_attributes(
                    QueueUrl=self.dlq_url,
                    Attributes={
                        "RedriveAllowPolicy": json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [queue_arn]})
                    },
                )
        ddb = self.client("dynamodb")
        for name, key in ((self.orders_table, "OrderID"), (self.groups_table, "MessageGroupId")):
            ddb.create_table(
                TableName=name,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            )
            ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
        dlq = f"DLQ {self.dlq_name}, maxReceiveCount {tf['max_receive_count']}" if self.dlq_url else "no DLQ"
        self.say(f"queue {self.queue_url} ({dlq}), tables {self.orders_table} and {self.groups_table}")

    def worker_defaults(self) -> list[str]:
        """Worker flags that fit a simulated region (short polls, fast metadata polling, heartbeats that fit the
        scaled hook timeout), as flag/value pairs. A flag the caller's worker_args set is left out."""
        hook_real = self.tf["lifecycle_hook_timeout_seconds"] * self.time_scale
        heartbeat = max(1, int(hook_real / 4))
        # The drain margin is real time before the (scaled) interruption; 10 s would eat a scaled notice whole.
        margin = max(1, round(10 * self.time_scale))
        return [
            "--wait-time", "2s",
            "--imds-poll", "200ms",
            "--hook-heartbeat", f"{heartbeat}s",
            "--drain-margin", f"{margin}s",
            # JSON: the drain summary and the EMF figures are read from the log as structures (chaos/report.py).
            "--log-format", "json",
            "--emf-interval", "5s",
        ]  # fmt: skip

    def sim_env(self) -> dict:
        """spot-sim's environment, inherited by its workers: the emulator endpoints, the queue and the tables."""
        env = dict(os.environ)
        env.update(CREDENTIALS)
        env.update(
            {
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_SQS": self.endpoint,
                "AWS_ENDPOINT_URL_DYNAMODB": self.endpoint,
                "ORDER_WORKER_QUEUE_URL": self.queue_url,
                "ORDER_WORKER_ORDERS_TABLE": self.orders_table,
                "ORDER_WORKER_GROUPS_TABLE": self.groups_table,
                "ORDER_WORKER_LIFECYCLE_HOOK": self.hook_name,
                "RUST_LOG": env.get("RUST_LOG", "info"),
            }
        )
        # The worker must find its group from the instance tags, as on EC2.
        env.pop("ORDER_WORKER_ASG_NAME", None)
        env.pop("ORDER_WORKER_INSTANCE_ID", None)
        env.pop("ORDER_WORKER_IMDS_DISABLED", None)
        env.update(self.worker_env)
        return env

    def start_sim(self, wait_in_service: bool = True, timeout: float = 60) -> str:
        worker = binary("order-worker", self.profile)
        sim = binary("spot-sim", self.profile)
        for b in (worker, sim):
            if not b.exists():
                raise FileNotFoundError(f"{b} missing: run scripts/bootstrap (or cargo build --workspace)")
        self.worker_log_dir.mkdir(parents=True, exist_ok=True)
        ready = self.out_dir / "spot-sim.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        cmd = [
            sim,
            "--listen", "127.0.0.1:0",
            "--ready-file", ready,
            "--group-name", self.group_name,
            "--hook-name", self.hook_name,
            "--hook-timeout", f"{self.tf['lifecycle_hook_timeout_seconds']}s",
            "--desired", str(self.workers),
            "--time-scale", str(self.time_scale),
            "--kill-grace", self.kill_grace,
            "--launch-delay", self.launch_delay,
            "--region", self.region,
            "--log-dir", self.worker_log_dir,
            "--worker-cmd", worker,
        ]  # fmt: skip
        # clap refuses a flag given twice: a default the caller sets itself is left out.
        mine = {a.split("=", 1)[0] for a in self.worker_args if a.startswith("--")}
        d = self.worker_defaults()
        defaults = [x for i in range(0, len(d), 2) if d[i] not in mine for x in d[i : i + 2]]
        for a in defaults + self.worker_args:
            cmd += ["--worker-arg", a]
        if self.status_every:
            cmd += ["--status-every", self.status_every]
        cmd += self.sim_args
        self._sim = self._spawn("spot-sim", cmd, env=self.sim_env())

        def api():
            if not self._sim.alive():
                raise RuntimeError(f"spot-sim exited; see {self._sim.log_path}")
            with contextlib.suppress(OSError, ValueError):
                return json.loads(ready.read_text())["api"]
            return None

        self.sim_api = wait_for("spot-sim's ready file", 30, api)
        self.say(f"spot-sim on {self.sim_api}, pid {self._sim.pid}, {self.workers} workers, time scale {self.time_scale}")
        if wait_in_service:
            self.wait_in_service(self.workers, timeout)
        return self.sim_api

    def _spawn(self, name: str, cmd: list, env: Optional[dict] = None) -> Proc:
        p = Proc(name, cmd, self.out_dir / f"{name}.log", env=env, cwd=self.out_dir)
        self._procs.append(p)
        return p

    def stop(self) -> None:
        """Stop everything this region started (spot-sim first: it SIGTERMs its workers), once. Safe to call
        twice and from a signal-driven unwind."""
        if self._stopped:
            return
        self._stopped = True
        old_int = None
        if threading.current_thread() is threading.main_thread():
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave orphans
        try:
            if self._sim and self._sim.alive() and self.sim_api:
                with contextlib.suppress(Exception):
                    self.save_status(self.out_dir / "spot-sim-status.json")
            grace = float(self.kill_grace.rstrip("s") or 5) + 10
            for p in reversed(self._procs):
                p.stop(grace if p is self._sim else 5)
            self.say("local region stopped")
        finally:
            if old_int is not None:
                signal.signal(signal.SIGINT, old_int)
            for sig, h in self._old_handlers.items():
                signal.signal(sig, h)
            self._old_handlers.clear()

    # ---- environment for other tools -------------------------------------------------------------------------

    def env(self) -> dict:
        """The variables a tool needs to use this region as it would use AWS: the standard endpoint settings
        (aws CLI v1 reads none of them: pass --endpoint-url, as chaos/*.sh do), SPOT_SIM_API, and the names."""
        return {
            **CREDENTIALS,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_SQS": self.endpoint,
            "AWS_ENDPOINT_URL_DYNAMODB": self.endpoint,
            "AWS_ENDPOINT_URL_AUTO_SCALING": self.sim_api,
            "AWS_ENDPOINT_URL_FIS": self.sim_api,
            "SPOT_SIM_API": self.sim_api,
            "QUEUE_URL": self.queue_url,
            "DLQ_URL": self.dlq_url,
            "ORDERS_TABLE": self.orders_table,
            "GROUPS_TABLE": self.groups_table,
            "ASG_NAME": self.group_name,
            "ORDER_WORKER_BIN": str(binary("order-worker", self.profile)),
            "SPOT_SIM_BIN": str(binary("spot-sim", self.profile)),
            "LOCAL_REGION_OUT": str(self.out_dir),
        }

    def write_env_file(self, path: os.PathLike | str) -> Path:
        """Shell `export` lines of env(), written atomically."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"export {k}={shell_quote(v)}\n" for k, v in self.env().items() if v is not None))
        tmp.rename(path)
        return path

    # ---- spot-sim --------------------------------------------------------------------------------------------

    def status(self) -> dict:
        """spot-sim's /_sim/status document (instances, events, timeline, experiments)."""
        return http_json("GET", f"{self.sim_api}/_sim/status")

    def save_status(self, path: os.PathLike | str) -> dict:
        s = self.status()
        Path(path).write_text(json.dumps(s, indent=2))
        return s

    def sim_post(self, path: str, body: Optional[dict] = None) -> Any:
        return http_json("POST", f"{self.sim_api}{path}", body or {})

    def instances(self, lifecycle: Optional[str] = None) -> list[dict]:
        inst = self.status()["instances"]
        return [i for i in inst if lifecycle is None or i["lifecycle_state"] == lifecycle]

    def wait_in_service(self, n: int, timeout: float = 60) -> list[dict]:
        """Wait for `n` InService instances whose workers are alive."""
        if n <= 0:
            return []

        def ready():
            ok = [i for i in self.instances("InService") if i.get("process_alive") or i.get("external")]
            return ok if len(ok) >= n else None

        inst = wait_for(f"{n} InService instances", timeout, ready)
        self.say("fleet InService: " + ", ".join(i["id"] for i in inst))
        return inst

    def status_table(self) -> str:
        """The human status table (`spot-sim status`)."""
        r = subprocess.run(
            [str(binary("spot-sim", self.profile)), "status", "--api", self.sim_api],
            capture_output=True,
            text=True,
            timeout=15,
        )
        return r.stdout if r.returncode == 0 else r.stderr

    def worker_logs(self) -> dict:
        """instance id -> worker log path."""
        return {i["id"]: i["log_path"] for i in self.status()["instances"] if i.get("log_path")}

    # ---- orders ----------------------------------------------------------------------------------------------

    def send_orders(
        self,
        n: int = 100,
        groups: int = 4,
        manifest: Optional[os.PathLike | str] = None,
        prefix: Optional[str] = None,
        orders: Optional[list[dict]] = None,
        pause: float = 0.0,
    ) -> list[dict]:
        """Send `n` orders round-robin over `groups` groups (or the given `orders`), 10 per SendMessageBatch,
        in exact order; dedup id = order id. Appends to the manifest (JSON lines: order_id, group, expect,
        message_id, sequence_number) as each batch succeeds, and returns its entries."""
        prefix = prefix or f"o{int(time.time()) % 100000:05d}"
        orders = orders if orders is not None else make_orders(n, groups, prefix)
        manifest = Path(manifest) if manifest else self.out_dir / "manifest.jsonl"
        sqs = self.client("sqs")
        sent = []
        with open(manifest, "a") as mf:
            for start in range(0, len(orders), 10):
                chunk = orders[start : start + 10]
                entries = [
                    {
                        "Id": str(k),
                        "MessageBody": o["body"],
                        "MessageGroupId": o["group"],
                        "MessageDeduplicationId": o["order_id"],
                    }
                    for k, o in enumerate(chunk)
                ]
                out = sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
                if out.get("Failed"):
                    raise RuntimeError(f"SendMessageBatch failed: {out['Failed']}")
                ok = {e["Id"]: e for e in out["Successful"]}
                for k, o in enumerate(chunk):
                    e = ok[str(k)]
                    line = {
                        "order_id": o["order_id"],
                        "group": o["group"],
                        "expect": o.get("expect", "accepted"),
                        "message_id": e["MessageId"],
                        "sequence_number": e.get("SequenceNumber"),
                    }
                    mf.write(json.dumps(line) + "\n")
                    sent.append(line)
                mf.flush()
                if pause:
                    time.sleep(pause)
        return sent

    def records(self) -> list[dict]:
        """Every record of the orders table, flattened to plain values."""
        ddb = self.client("dynamodb")
        items, kwargs = [], {"TableName": self.orders_table, "ConsistentRead": True}
        while True:
            out = ddb.scan(**kwargs)
            items += [flatten(i) for i in out.get("Items", [])]
            if "LastEvaluatedKey" not in out:
                return items
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]

    def wait_records(self, n: int, timeout: float = 120, every: float = 0.5) -> list[dict]:
        """Wait until the orders table holds at least `n` records."""
        return wait_for(f"{n} records in {self.orders_table}", timeout, lambda: (lambda r: r if len(r) >= n else None)(self.records()), every)

    def verify(self, manifest: Optional[os.PathLike | str] = None, json_out: Optional[os.PathLike | str] = None) -> dict:
        """Run `order-worker verify` on the manifest; returns its JSON report plus `exit_code` and `text`."""
        manifest = Path(manifest) if manifest else self.out_dir / "manifest.jsonl"
        json_out = Path(json_out) if json_out else self.out_dir / "verify.json"
        env = dict(os.environ, **{k: v for k, v in self.env().items() if v is not None})
        r = subprocess.run(
            [
                str(binary("order-worker", self.profile)),
                "verify",
                "--table", self.orders_table,
                "--groups-table", self.groups_table,
                "--manifest", str(manifest),
                "--json", str(json_out),
            ],  # fmt: skip
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(json_out.read_text()) if json_out.exists() else {}
        report["exit_code"] = r.returncode
        report["text"] = r.stdout + r.stderr
        return report


def flatten(item: dict) -> dict:
    """A DynamoDB item (typed) as plain values."""
    out = {}
    for k, v in item.items():
        (t, x), = v.items()
        out[k] = int(x) if t == "N" and re.fullmatch(r"-?\d+", x) else x
    return out


def shell_quote(v: str) -> str:
    return "'" + str(v).replace("'", "'\\''") + "'"


def sim_status(api: str) -> dict:
    return http_json("GET", f"{api.rstrip('/')}/_sim/status")


# ---- command line ------------------------------------------------------------------------------------------------


def cmd_up(a) -> int:
    region = LocalRegion(
        out_dir=a.out,
        workers=a.workers,
        time_scale=a.time_scale,
        worker_args=a.worker_arg,
        sim_args=a.sim_arg,
        suffix=a.suffix,
        profile=a.profile,
        launch_delay=a.launch_delay,
        status_every=None,
    )
    with region:
        if a.env_file:
            region.write_env_file(a.env_file)
            log(f"environment written to {a.env_file}")
        last = 0.0
        while True:
            if not region._sim.alive():
                log("spot-sim exited on its own")
                return 1
            if not region._emulator.alive():
                log("the emulator exited on its own")
                return 1
            if a.status_every and time.monotonic() - last >= a.status_every:
                last = time.monotonic()
                with contextlib.suppress(Exception):
                    sys.stderr.write(region.status_table())
                    sys.stderr.flush()
            time.sleep(0.5)


def cmd_status(a) -> int:
    s = sim_status(a.api)
    if a.json:
        print(json.dumps(s, indent=2))
    else:
        for i in s["instances"]:
            print(f"{i['id']}  {i['lifecycle_state']:<20} {i.get('target_lifecycle_state') or '-':<11} replaces={i.get('replaces') or '-'}")
    return 0


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the local region and keep it up until SIGINT/SIGTERM")
    up.add_argument("--out", required=True, help="directory for logs, status and manifests")
    up.add_argument("--env-file", help="write `export` lines for the scripts here once the fleet is InService")
    up.add_argument("--workers", type=int, default=3)
    up.add_argument("--time-scale", type=float, default=0.1)
    up.add_argument("--worker-arg", action="append", default=[], help="extra worker flag (repeat)")
    up.add_argument("--sim-arg", action="append", default=[], help="extra spot-sim flag (repeat)")
    up.add_argument("--suffix", default="", help="appended to every resource name")
    up.add_argument("--profile", default="debug")
    up.add_argument("--launch-delay", default="40s", help="Pending -> InService (simulated time)")
    up.add_argument("--status-every", type=float, default=0, help="print the status table every N seconds")
    up.set_defaults(fn=cmd_up)
    st = sub.add_parser("status", help="print spot-sim's instances")
    st.add_argument("--api", default=os.environ.get("SPOT_SIM_API"), required=not os.environ.get("SPOT_SIM_API"))
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
