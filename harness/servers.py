"""The local stand-ins for AWS's endpoints, each on a free port of 127.0.0.1: ministack (SQS and DynamoDB) and
DynamoDB Local (AWS's own DynamoDB engine, installed by scripts/bootstrap; found by scripts/dynamodb-local-jar).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .paths import REPO, venv_bin
from .procs import HarnessError, Proc, Registry, free_port, listening, wait_for


@dataclass
class Server:
    name: str
    proc: Proc
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_ministack(
    reg: Registry,
    log_dir: Path,
    services: str | None = None,
    log_name: str = "ministack-{port}.log",
    cwd: Path | None = None,
    timeout: float = 60,
) -> Server:
    """ministack on a free port (MINISTACK_BIN, else the virtual environment's); `services` limits what it serves
    (SERVICES=sqs,dynamodb: less memory). Returns once it accepts connections."""
    port = free_port()
    env = dict(os.environ, BIND_HOST="127.0.0.1", GATEWAY_PORT=str(port))
    if services:
        env["SERVICES"] = services
        env.setdefault("LOG_LEVEL", "WARNING")
    binary = Path(os.environ.get("MINISTACK_BIN") or venv_bin("ministack"))
    if binary.is_absolute() and not binary.exists():
        raise HarnessError(f"{binary} missing: run scripts/bootstrap")
    p = reg.spawn("ministack", [binary], Path(log_dir) / log_name.format(port=port), env=env, cwd=cwd)
    _wait_listening(p, port, timeout)
    return Server("ministack", p, port)


def dynamodb_local_jar() -> Path:
    """DynamoDBLocal.jar: $DYNAMODB_LOCAL_JAR, else where scripts/bootstrap installs it (the script that says so
    is the one place that knows; the Rust tests ask it too)."""
    r = subprocess.run([str(REPO / "scripts" / "dynamodb-local-jar")], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise HarnessError(r.stderr.strip() or "scripts/dynamodb-local-jar failed")
    return Path(r.stdout.strip())


def dynamodb_local_cmd(jar: Path, port: int) -> list[str]:
    """The command line of DynamoDB Local: in memory (nothing on disk, a fresh engine per run), one database for
    every credential and region (-sharedDb: the workers and the harness see the same tables whatever their
    settings), no telemetry (nothing leaves the machine). It binds every address; everyone uses 127.0.0.1."""
    lib = jar.parent / "DynamoDBLocal_lib"
    return ["java", f"-Djava.library.path={lib}", "-jar", str(jar), "-inMemory", "-sharedDb", "-disableTelemetry",
            "-port", str(port)]  # fmt: skip


def start_dynamodb_local(reg: Registry, log_dir: Path, cwd: Path | None = None, timeout: float = 90) -> Server:
    """DynamoDB Local on a free port; returns once it answers ListTables (the JVM listens a while before it
    serves: about 7 s on a loaded 2-core machine)."""
    jar = dynamodb_local_jar()
    port = free_port()
    p = reg.spawn("dynamodb-local", dynamodb_local_cmd(jar, port), Path(log_dir) / "dynamodb-local.log", cwd=cwd)
    s = Server("dynamodb-local", p, port)
    _wait_listening(p, port, timeout)
    import boto3  # late: only a DynamoDB Local run needs it here

    ddb = boto3.client("dynamodb", endpoint_url=s.endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")  # fmt: skip

    def answers():
        try:
            ddb.list_tables(Limit=1)
            return True
        except Exception:
            if not p.alive():
                raise HarnessError(f"DynamoDB Local exited; see {p.log_path}") from None
            return False

    wait_for("DynamoDB Local to answer", timeout, answers)
    return s


def _wait_listening(p: Proc, port: int, timeout: float) -> None:
    def up():
        if not p.alive():
            raise HarnessError(f"{p.name} exited; see {p.log_path}")
        return listening(port)

    wait_for(f"{p.name} to listen", timeout, up)
