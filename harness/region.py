"""The local region: SQS on ministack, DynamoDB on ministack or DynamoDB Local, spot-sim (metadata, Auto
Scaling, FIS) with a fleet of real order-worker processes, and the queue and tables with the names and
settings of terraform/.

    from harness import LocalRegion
    with LocalRegion(out_dir="out/x", workers=3, time_scale=0.1, worker_args=["--work-delay", "200ms"]) as r:
        manifest = r.send_orders(100, groups=4)            # SendMessageBatch, in order, manifest with MessageIds
        r.wait_records(len(manifest), timeout=120)
        report = r.verify()                               # runs `order-worker verify`, returns its JSON report
    # everything started is stopped here, also on Ctrl-C and SIGTERM

`dynamodb="dynamodb-local"` serves the tables from DynamoDB Local (AWS's engine) while SQS stays on ministack:
the workers get AWS_ENDPOINT_URL_DYNAMODB apart from AWS_ENDPOINT_URL_SQS. chaos/localregion.py is the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import audit
from . import ddb as ddb_scan
from . import gate as iam
from .orders import batch_entries, make_orders
from .paths import REPO, binary
from .procs import Proc, Registry, wait_for
from .servers import Server, start_dynamodb_local, start_ministack
from .sim import http_json

REGION = "us-east-1"
# The credentials of the operator (whoever runs the checks and the chaos scripts): the IAM gate knows each
# principal by its access key (harness/gate.py), as AWS does; the emulators behind it check nothing.
CREDENTIALS = iam.credentials("operator")
# The account the local region is (chaos/iamgate/stack.py; spot-sim's ARNs carry it too).
ACCOUNT_ID = "000000000000"
# Where the tables live: "ministack" (with SQS, the default) or "dynamodb-local" (AWS's own engine).
DYNAMODB_BACKENDS = ("ministack", "dynamodb-local")

# The values terraform/variables.tf declares (read from it when it is there; these are the fallbacks).
TERRAFORM_FALLBACK = {
    "queue_name": "orders.fifo",
    "dlq_name": "orders-dlq.fifo",
    "dead_letter_queue": False,
    "orders_table_name": "orders",
    "groups_table_name": "order-groups",
    "high_throughput_fifo": True,
    "visibility_timeout_seconds": 120,
    "receive_wait_time_seconds": 20,
    "message_retention_seconds": 345600,
    "max_receive_count": 10,
    "asg_name": "order-workers",
    "lifecycle_hook_name": "order-worker-drain",
    "lifecycle_hook_timeout_seconds": 120,
    "fis_selection_mode": "COUNT(1)",
    "fis_duration_before_interruption": "PT2M",
    # The scaling policy's numbers (harness/scaling.py turns them into spot-sim flags).
    "backlog_per_instance_target": 100,
    "min_size": 1,
    "max_size": 10,
    "desired_capacity": 2,
    "instance_refresh_min_healthy_percentage": 66,
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
        worker_env: dict | None = None,
        status_every: str | None = None,
        kill_grace: str = "5s",
        launch_delay: str = "40s",
        quiet: bool = False,
        dynamodb: str = "ministack",
        dead_letter_queue: bool | None = None,
    ):
        """`suffix` is appended to every resource name (each region has its own emulator, so the default is the
        exact Terraform names). `worker_args` go to every worker, replacing the local defaults they name.
        `launch_delay` (simulated) is Pending -> InService: EC2 takes tens of seconds to launch, and a much shorter
        delay lets capacity rebalancing replace and terminate an instance before FIS's interruption notice shows.
        `dynamodb` is where the tables live: "ministack" (beside SQS) or "dynamodb-local". `dead_letter_queue`:
        a DLQ and its redrive policy (None: terraform's `dead_letter_queue` default, off; see terraform/README.md
        on why a DLQ and dense group positions do not mix)."""
        if dynamodb not in DYNAMODB_BACKENDS:
            raise ValueError(f"dynamodb={dynamodb!r}: one of {', '.join(DYNAMODB_BACKENDS)}")
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
        self.dynamodb = dynamodb
        tf = terraform_defaults()
        self.tf = tf
        self.dead_letter_queue = tf["dead_letter_queue"] if dead_letter_queue is None else dead_letter_queue
        self.queue_name = tf["queue_name"].removesuffix(".fifo") + suffix + ".fifo"
        self.dlq_name = tf["dlq_name"].removesuffix(".fifo") + suffix + ".fifo"
        self.orders_table = tf["orders_table_name"] + suffix
        self.groups_table = tf["groups_table_name"] + suffix
        self.group_name = tf["asg_name"]
        self.hook_name = tf["lifecycle_hook_name"]
        # SQS's endpoint and DynamoDB's: the IAM gate in front of the emulators (harness/gate.py), or with
        # LOCAL_IAM=off the emulators themselves. emulator_* are the servers behind it.
        self.endpoint: str | None = None
        self.ddb_endpoint: str | None = None
        self.emulator_endpoint: str | None = None
        self.emulator_ddb_endpoint: str | None = None
        self.gate: iam.Gate | None = None
        self.final_denials: list[dict] = []  # what the gate had denied when the region stopped
        self.sim_api: str | None = None
        self.queue_url: str | None = None
        self.dlq_url: str | None = None
        self.worker_log_dir = self.out_dir / "workers"
        self.procs = Registry()
        self._servers: list[Server] = []
        self._sim: Proc | None = None
        self._stopped = False
        self._old_handlers: dict = {}
        self._clients: dict = {}
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> LocalRegion:
        self._install_signal_handlers()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        # A request denied while the region wound down (a hook completed during the last drains) fails the run
        # too, unless the run is failing already.
        if exc[0] is None and self.final_denials:
            raise iam.IamDenied(iam.denial_text(self.final_denials))

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

    def start(self) -> LocalRegion:
        self.start_emulator()
        self.start_gate()
        self.create_resources()
        self.start_sim()
        return self

    def start_emulator(self, timeout: float = 60) -> str:
        """ministack for SQS (and DynamoDB unless DynamoDB Local serves it); returns SQS's endpoint."""
        services = "sqs,dynamodb" if self.dynamodb == "ministack" else "sqs"
        emu = start_ministack(self.procs, self.out_dir, services, "ministack.log", cwd=self.out_dir, timeout=timeout)
        self._servers.append(emu)
        self.endpoint = self.ddb_endpoint = self.emulator_endpoint = self.emulator_ddb_endpoint = emu.endpoint
        self.say(f"emulator (ministack: {services}) on {self.endpoint}, pid {emu.proc.pid}")
        if self.dynamodb == "dynamodb-local":
            local = start_dynamodb_local(self.procs, self.out_dir, cwd=self.out_dir)
            self._servers.append(local)
            self.ddb_endpoint = self.emulator_ddb_endpoint = local.endpoint
            self.say(f"DynamoDB Local on {self.ddb_endpoint}, pid {local.proc.pid}")
        return self.endpoint

    def iam_stack(self) -> dict:
        """The stack the IAM gate renders terraform/policies/ for: this region's names, each principal's key."""
        return {
            "queue_name": self.queue_name,
            "dlq_name": self.dlq_name if self.dead_letter_queue else None,
            "orders_table": self.orders_table,
            "groups_table": self.groups_table,
            "asg_name": self.group_name,
            "region": self.region,
            "keys": {key: principal for principal, key in iam.KEYS.items()},
        }

    def start_gate(self) -> None:
        """The IAM gate in front of the emulators: from here on every client (workers, tools, this harness) goes
        through it, as each principal, and is refused what its policy does not grant."""
        upstream_for = {"dynamodb": self.emulator_ddb_endpoint} if self.dynamodb == "dynamodb-local" else {}
        self.gate = iam.Gate.start(self.procs, self.out_dir, "iam-gate", self.emulator_endpoint, self.iam_stack(),
                                   upstream_for)  # fmt: skip
        self.endpoint = self.ddb_endpoint = self.gate.url
        self.say(f"IAM gate ({self.gate.iam}) {self.gate.url} in front of the emulators (control {self.gate.control})")

    def gates(self) -> list[iam.Gate]:
        """Every IAM gate of this region (a soak adds the workers' fault proxy)."""
        return [self.gate] if self.gate else []

    def check_iam(self) -> None:
        """Raise naming principal, action and resource if a gate denied anything so far."""
        for gate in self.gates():
            gate.check()

    def client(self, service: str, principal: str = "operator"):
        """A boto3 client for sqs / dynamodb (the emulator) or autoscaling / fis (spot-sim), as `principal`
        (operator, producer, deployer: harness/gate.py), through the IAM gate."""
        creds = iam.credentials(principal)
        with self._lock:
            if (service, principal) not in self._clients:
                import boto3  # late: `status` and `--help` work without it
                from botocore.config import Config

                sim = self.gate.url if self.gate else self.sim_api
                url = {"autoscaling": sim, "fis": sim, "dynamodb": self.ddb_endpoint}.get(service, self.endpoint)
                self._clients[(service, principal)] = boto3.client(
                    service,
                    region_name=self.region,
                    endpoint_url=url,
                    aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                    config=Config(retries={"max_attempts": 5, "mode": "standard"}),
                )
            return self._clients[(service, principal)]

    def create_resources(self) -> None:
        """The queue (a DLQ and its redrive only with dead_letter_queue) and both tables, as terraform/queue.tf and
        tables.tf make them (less KMS and point-in-time recovery, which a local emulator has no use for)."""
        if self.gate is None:
            self.start_gate()  # nothing is created, or called, before the gate stands (a subclass's start too)
        tf = self.tf
        sqs = self.client("sqs", "deployer")  # what `terraform apply` does, as whoever applies it
        redrive = {}
        if self.dead_letter_queue:
            self.dlq_url = sqs.create_queue(
                QueueName=self.dlq_name,
                Attributes={
                    "FifoQueue": "true",
                    "ContentBasedDeduplication": "false",
                    "MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS),
                },
            )["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            redrive["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": tf["max_receive_count"]}
            )
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
        if self.dlq_url:
            with contextlib.suppress(Exception):  # not every emulator knows RedriveAllowPolicy; it is advisory here
                sqs.set_queue_attributes(
                    QueueUrl=self.dlq_url,
                    Attributes={
                        "RedriveAllowPolicy": json.dumps(
                            {"redrivePermission": "byQueue", "sourceQueueArns": [queue_arn]}
                        )
                    },
                )
        ddb = self.client("dynamodb", "deployer")
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
        env.update(iam.credentials("worker"))  # the instance role's, as the instance profile gives them
        env.update(
            {
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_SQS": self.endpoint,
                "AWS_ENDPOINT_URL_DYNAMODB": self.ddb_endpoint,
                "ORDER_WORKER_QUEUE_URL": self.queue_url,
                "ORDER_WORKER_ORDERS_TABLE": self.orders_table,
                "ORDER_WORKER_GROUPS_TABLE": self.groups_table,
                "ORDER_WORKER_LIFECYCLE_HOOK": self.hook_name,
                # spot-sim's scaler reads the backlog as CloudWatch would, past the IAM gate (no principal of ours
                # makes that call on AWS).
                "SPOT_SIM_METRICS_SQS_ENDPOINT": self.emulator_endpoint,
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
            "--account", ACCOUNT_ID,
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
        if self.gate and self.gate.iam != "off":
            # The workers reach Auto Scaling through the gate; FIS roles are authorised by it.
            cmd += ["--worker-auto-scaling-endpoint", self.gate.url, "--authorizer", self.gate.authorizer]
        cmd += self.sim_args
        self._sim = self._spawn("spot-sim", cmd, env=self.sim_env())

        def api():
            if not self._sim.alive():
                raise RuntimeError(f"spot-sim exited; see {self._sim.log_path}")
            with contextlib.suppress(OSError, ValueError):
                return json.loads(ready.read_text())["api"]
            return None

        self.sim_api = wait_for("spot-sim's ready file", 30, api)
        if self.gate:
            for service in ("autoscaling", "fis"):
                self.gate.route(service, self.sim_api)
        self.say(
            f"spot-sim on {self.sim_api}, pid {self._sim.pid}, {self.workers} workers, time scale {self.time_scale}"
        )
        if wait_in_service:
            self.wait_in_service(self.workers, timeout)
        return self.sim_api

    def _spawn(self, name: str, cmd: list, env: dict | None = None) -> Proc:
        return self.procs.spawn(name, cmd, self.out_dir / f"{name}.log", env=env, cwd=self.out_dir)

    def sim_alive(self) -> bool:
        return self._sim is not None and self._sim.alive()

    def servers_alive(self) -> bool:
        return all(s.proc.alive() for s in self._servers)

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
            for gate in (g for g in self.gates() if g.iam != "off"):
                try:
                    st = gate.status()
                    (self.out_dir / f"{gate.proc.name}.json").write_text(json.dumps(st, indent=2))
                    self.final_denials += st.get("denials") or []
                except Exception as e:
                    self.final_denials = [{"principal": "-", "action": "-", "resource": "-", "code": f"gate: {e}"}]
                if self.final_denials:
                    self.say(iam.denial_text(self.final_denials))
            # spot-sim gets its kill grace and more: it SIGTERMs its workers, waits for them, then exits.
            grace = float(self.kill_grace.rstrip("s") or 5) + 10
            self.procs.stop_all(grace=5, grace_of={self._sim: grace} if self._sim else None)
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
        sim = self.gate.url if self.gate else self.sim_api
        return {
            **CREDENTIALS,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_SQS": self.endpoint,
            "AWS_ENDPOINT_URL_DYNAMODB": self.ddb_endpoint,
            "AWS_ENDPOINT_URL_AUTO_SCALING": sim,
            "AWS_ENDPOINT_URL_FIS": sim,
            "SPOT_SIM_API": self.sim_api,
            # The stack's FIS role (what chaos/fis-run.sh hands a template) and the gate's control port (the
            # scripts ask it for denials, to fail at once naming the missing permission).
            **(self.iam_env() if self.gate and self.gate.iam != "off" else {}),
            "QUEUE_URL": self.queue_url,
            **({"DLQ_URL": self.dlq_url} if self.dlq_url else {}),
            "ORDERS_TABLE": self.orders_table,
            "GROUPS_TABLE": self.groups_table,
            "ASG_NAME": self.group_name,
            "ORDER_WORKER_BIN": str(binary("order-worker", self.profile)),
            "SPOT_SIM_BIN": str(binary("spot-sim", self.profile)),
            "LOCAL_REGION_OUT": str(self.out_dir),
        }

    def fis_role_arn(self) -> str:
        """The stack's FIS role (terraform/fis.tf's name, in the local account): what a template hands FIS."""
        if self.gate and self.gate.iam != "off":
            return self.gate.status()["principals"]["fis"]
        return f"arn:aws:iam::{ACCOUNT_ID}:role/order-worker-prod-fis-{self.region}"

    def iam_env(self) -> dict:
        return {
            "FIS_ROLE_ARN": self.fis_role_arn(),
            "IAM_GATE_CONTROL": self.gate.control,
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

    def sim_post(self, path: str, body: dict | None = None) -> Any:
        return http_json("POST", f"{self.sim_api}{path}", body or {})

    def instances(self, lifecycle: str | None = None) -> list[dict]:
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
            check=False,  # a failure is shown as its message
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
        manifest: os.PathLike | str | None = None,
        prefix: str | None = None,
        orders: list[dict] | None = None,
        pause: float = 0.0,
    ) -> list[dict]:
        """Send `n` orders round-robin over `groups` groups (or the given `orders`), 10 per SendMessageBatch,
        in exact order; dedup id = order id. Appends to the manifest (JSON lines: order_id, group, expect,
        message_id, sequence_number) as each batch succeeds, and returns its entries."""
        prefix = prefix or f"o{int(time.time()) % 100000:05d}"
        orders = orders if orders is not None else make_orders(n, groups, prefix)
        manifest = Path(manifest) if manifest else self.out_dir / "manifest.jsonl"
        sqs = self.client("sqs", "producer")  # the shop's front end: the producer's policy
        sent = []
        with open(manifest, "a") as mf:
            for start in range(0, len(orders), 10):
                chunk = orders[start : start + 10]
                out = sqs.send_message_batch(QueueUrl=self.queue_url, Entries=batch_entries(chunk))
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

    def depth(self, queue_url: str) -> int:
        """Messages in a queue: visible, in flight and delayed (all three: "empty" means nothing left anywhere)."""
        a = self.client("sqs").get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                            "ApproximateNumberOfMessagesDelayed"],
        )["Attributes"]  # fmt: skip
        return sum(int(v) for v in a.values())

    def records(self) -> list[dict]:
        """Every record of the orders table, as plain values."""
        return ddb_scan.scan(self.client("dynamodb"), self.orders_table)

    def count_records(self) -> int:
        return ddb_scan.count(self.client("dynamodb"), self.orders_table)

    def wait_records(self, n: int, timeout: float = 120, every: float = 0.5) -> list[dict]:
        """Wait until the orders table holds at least `n` records."""

        def enough():
            self.check_iam()  # a denied permission never lets the records come: say so now
            r = self.records()
            return r if len(r) >= n else None

        return wait_for(f"{n} records in {self.orders_table}", timeout, enough, every)

    def verify(self, manifest: os.PathLike | str | None = None, json_out: os.PathLike | str | None = None) -> dict:
        """Run `order-worker verify` on the manifest; returns its JSON report plus `exit_code` and `text`."""
        self.check_iam()
        manifest = Path(manifest) if manifest else self.out_dir / "manifest.jsonl"
        json_out = Path(json_out) if json_out else self.out_dir / "verify.json"
        env = dict(os.environ, **{k: v for k, v in self.env().items() if v is not None})
        return audit.verify(binary("order-worker", self.profile), env, self.orders_table, self.groups_table, manifest,
                            json_out)  # fmt: skip


def shell_quote(v: str) -> str:
    return "'" + str(v).replace("'", "'\\''") + "'"
