#!/usr/bin/env python3
"""Checks on what the order_worker role wrote into a throwaway root (run by scripts/check-ansible).

  check_output.py unit ROOT   the unit fits the drain and is hardened; files are root-owned
  check_output.py env ROOT    the environment file against `order-worker --help`
  check_output.py render TEMPLATE VARS_JSON
                              render user-data.sh.tftpl without Terraform (fallback only)
  check_output.py agent ROOT  the CloudWatch agent's configuration: JSON, the unit's log file,
                              the log group terraform/ creates, a flush shorter than the unit's wait
  check_output.py vars FILE...
                              the role variables terraform/ passes are declared role options

Each check prints one line per finding and exits 1 if any finding is an error.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
UNIT = "etc/systemd/system/order-worker.service"
ENV_FILE = "etc/order-worker/order-worker.env"
# Shared default: the termination lifecycle hook's heartbeat timeout (terraform/).
HOOK_TIMEOUT_S = 120

# Worker variables the role leaves out of a production environment file, and why.
OMITTED = {
    "ORDER_WORKER_IMDS_DISABLED": "off-EC2 development only",
    "ORDER_WORKER_INSTANCE_ID": "read from instance metadata on EC2",
    "ORDER_WORKER_WORK_DELAY": "simulated work for tests and benchmarks",
}
# Read by the AWS SDK itself, so they need not appear in the worker's --help.
SDK_NAMES = re.compile(r"^AWS_(REGION|ENDPOINT_URL(_[A-Z_]+)?)$")
# Must be in the file whatever --help says: the settings that tie the worker to this deployment.
REQUIRED = [
    "ORDER_WORKER_QUEUE_URL",
    "ORDER_WORKER_ORDERS_TABLE",
    "ORDER_WORKER_GROUPS_TABLE",
    "ORDER_WORKER_ASG_NAME",
    "ORDER_WORKER_LIFECYCLE_HOOK",
    "ORDER_WORKER_DRAIN_TIMEOUT",
    "ORDER_WORKER_DRAIN_MARGIN",
    "AWS_REGION",
]


class Report:
    def __init__(self) -> None:
        self.errors = 0

    def ok(self, msg: str) -> None:
        print(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        self.errors += 1
        print(f"  FAIL  {msg}")

    def warn(self, msg: str) -> None:
        print(f"  WARN  {msg}")

    def check(self, cond: bool, msg: str) -> None:
        (self.ok if cond else self.fail)(msg)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit -> section -> key -> every assignment in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path}: assignment outside a section: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY="value" lines as the role writes them (double-quoted, backslash escapes)."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', line)
        if not m:
            raise SystemExit(f'{path}: not a KEY="value" line: {line!r}')
        env[m.group(1)] = re.sub(r"\\(.)", r"\1", m.group(2))
    return env


def seconds(value: str) -> int:
    m = re.fullmatch(r"(\d+)s?", value.strip())
    if not m:
        raise SystemExit(f"not whole seconds: {value!r}")
    return int(m.group(1))


def check_file_mode(rep: Report, path: Path, mode: int, what: str) -> None:
    st = path.stat()
    rep.check(st.st_uid == 0 and st.st_gid == 0, f"{what} is owned by root:root")
    rep.check(stat.S_IMODE(st.st_mode) == mode, f"{what} has mode {mode:04o} (is {stat.S_IMODE(st.st_mode):04o})")


def cmd_unit(root: Path) -> int:
    rep = Report()
    unit = parse_unit(root / UNIT)
    svc, hdr = unit.get("Service", {}), unit.get("Unit", {})

    def last(section: dict[str, list[str]], key: str) -> str | None:
        values = section.get(key)
        return values[-1] if values else None

    env = parse_env_file(root / ENV_FILE)
    drain = seconds(env["ORDER_WORKER_DRAIN_TIMEOUT"])
    margin = seconds(env["ORDER_WORKER_DRAIN_MARGIN"])
    stop = seconds(last(svc, "TimeoutStopSec") or "0")
    rep.check(last(svc, "KillSignal") == "SIGTERM", "KillSignal=SIGTERM (starts the drain)")
    rep.check(
        drain + margin < stop < HOOK_TIMEOUT_S,
        f"drain {drain}s + margin {margin}s < TimeoutStopSec {stop}s < hook timeout {HOOK_TIMEOUT_S}s",
    )
    rep.check(last(svc, "Restart") == "on-failure", "Restart=on-failure")
    rep.check(
        bool(last(hdr, "StartLimitBurst")) and bool(last(hdr, "StartLimitIntervalSec")),
        "restarts are limited (StartLimitBurst, StartLimitIntervalSec)",
    )
    out = last(svc, "StandardOutput") or ""
    if out.startswith("append:"):
        rep.check(last(svc, "StandardError") == "inherit", "stderr goes where stdout goes")
        rep.check(
            "amazon-cloudwatch-agent.service" in " ".join(hdr.get("After", []))
            and "amazon-cloudwatch-agent.service" in " ".join(hdr.get("Wants", [])),
            "After=/Wants=amazon-cloudwatch-agent.service (at shutdown the agent outlives the worker)",
        )
        post = (last(svc, "ExecStopPost") or "").split()
        rep.check(
            len(post) == 2 and post[0].endswith("/sleep") and post[1].isdigit(),
            f"ExecStopPost waits for the agent's last flush ({' '.join(post)})",
        )
    else:
        rep.check(out == "journal" and last(svc, "StandardError") == "journal", "stdout and stderr go to journald")
    user = last(svc, "User")
    rep.check(bool(user) and user not in ("root", "0"), f"runs as a non-root user ({user})")
    for key, want in [
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ]:
        rep.check(last(svc, key) == want, f"{key}={want}")
    rep.check("@system-service" in svc.get("SystemCallFilter", []), "SystemCallFilter=@system-service")

    exec_start = (last(svc, "ExecStart") or "").split()[0]
    binary = root / exec_start.lstrip("/")
    rep.check(binary.is_file(), f"ExecStart {exec_start} is installed")
    if binary.is_file():
        check_file_mode(rep, binary, 0o755, f"binary {exec_start}")
    env_file = (last(svc, "EnvironmentFile") or "").lstrip("-")
    rep.check(env_file == "/" + ENV_FILE, f"EnvironmentFile={env_file}")
    check_file_mode(rep, root / ENV_FILE, 0o640, f"environment file /{ENV_FILE}")
    check_file_mode(rep, root / UNIT, 0o644, f"unit /{UNIT}")
    return 1 if rep.errors else 0


AGENT_CONFIG = "etc/order-worker/cloudwatch-agent.json"
LOGROTATE = "etc/logrotate.d/order-worker"


def terraform_log_group() -> str | None:
    """The worker log group's name as terraform/ creates it with its default environment."""
    tf = REPO / "terraform"
    obs, variables = tf / "observability.tf", tf / "variables.tf"
    if not obs.is_file() or not variables.is_file():
        return None
    m = re.search(r'resource\s+"aws_cloudwatch_log_group"\s+"worker"\s*\{[^}]*?name\s*=\s*"([^"]+)"', obs.read_text())
    env = re.search(r'variable\s+"environment"\s*\{[^}]*?default\s*=\s*"([^"]+)"', variables.read_text(), re.S)
    if not m or not env:
        raise SystemExit("terraform/: cannot find aws_cloudwatch_log_group.worker or var.environment's default")
    return m.group(1).replace("${var.environment}", env.group(1))


def cmd_agent(root: Path) -> int:
    rep = Report()
    path = root / AGENT_CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        rep.fail(f"/{AGENT_CONFIG} is not readable JSON: {err}")
        return 1
    rep.ok(f"/{AGENT_CONFIG} is JSON")
    check_file_mode(rep, path, 0o644, f"agent configuration /{AGENT_CONFIG}")
    logs = cfg.get("logs", {})
    files = logs.get("logs_collected", {}).get("files", {}).get("collect_list", [])
    rep.check(len(files) == 1, "the agent collects one file")
    if not files:
        return 1
    entry = files[0]
    unknown = set(entry) - {
        "file_path",
        "log_group_name",
        "log_stream_name",
        "timezone",
        "timestamp_format",
        "multi_line_start_pattern",
        "encoding",
        "retention_in_days",
    }
    rep.check(not unknown, f"collect_list entry uses documented keys only (unknown: {sorted(unknown)})")
    unit = parse_unit(root / UNIT)
    out = (unit.get("Service", {}).get("StandardOutput") or [""])[-1]
    rep.check(
        out == "append:" + entry.get("file_path", ""),
        f"the agent tails the unit's output file ({entry.get('file_path')} vs StandardOutput={out})",
    )
    rep.check((root / entry["file_path"].lstrip("/")).is_file(), f"{entry['file_path']} exists before the unit starts")
    rep.check(entry.get("log_stream_name") == "{instance_id}", "one log stream per instance id")
    want = terraform_log_group()
    if want is None:
        rep.warn("no terraform/ in this checkout: log group not compared")
    else:
        rep.check(
            entry.get("log_group_name") == want,
            f"log group {entry.get('log_group_name')} is terraform/'s aws_cloudwatch_log_group.worker ({want})",
        )
    flush = logs.get("force_flush_interval")
    post = ((unit.get("Service", {}).get("ExecStopPost") or [""])[-1]).split()
    wait = int(post[-1]) if post and post[-1].isdigit() else 0
    rep.check(
        isinstance(flush, int) and 0 < flush < wait,
        f"force_flush_interval {flush}s < the unit's wait after exit {wait}s",
    )
    rep.check(cfg.get("agent", {}).get("run_as_user") == "cwagent", "the agent runs as cwagent, not root")
    log_file = root / entry["file_path"].lstrip("/")
    if log_file.is_file():
        rep.check(stat.S_IMODE(log_file.stat().st_mode) & 0o004 != 0, "the log file is readable by the agent's user")
    rotate = root / LOGROTATE
    rep.check(
        rotate.is_file() and "copytruncate" in rotate.read_text() and entry["file_path"] in rotate.read_text(),
        f"/{LOGROTATE} rotates {entry['file_path']} with copytruncate",
    )
    return 1 if rep.errors else 0


def help_env_names(binary: Path) -> set[str]:
    """`[env: NAME=...]` entries of `order-worker --help` (and of `run --help`, if it exists)."""
    names: set[str] = set()
    for args in (["--help"], ["run", "--help"]):
        try:
            out = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30, check=False)
        except OSError as err:
            raise SystemExit(f"cannot run {binary}: {err}") from err
        if out.returncode == 0:
            names |= set(re.findall(r"\[env:\s*([A-Z][A-Z0-9_]*)", out.stdout))
    return names


def accepts_env(rep: Report, binary: Path, env: dict[str, str]) -> None:
    """Start the worker with the environment file; it must get past argument parsing.

    The AWS endpoints point at a closed local port and instance metadata is off, so a worker that
    accepts every value stays up, retrying its first call; a rejected value exits at once (clap: 2).
    """
    run_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        **env,
        "ORDER_WORKER_IMDS_DISABLED": "true",
        "ORDER_WORKER_METRICS_ADDR": "off",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "offline-test",
        "AWS_SECRET_ACCESS_KEY": "offline-test",
    }
    proc = subprocess.Popen([str(binary)], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        rep.ok("the worker accepts every value of the environment file (still up after 3 s)")
        return
    tail = "\n".join(out.strip().splitlines()[-5:])
    rep.fail(f"the worker exited with {proc.returncode} on the environment file:\n{tail}")


def reference_names() -> set[str]:
    lines = (HERE / "worker-env-names.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def cmd_env(root: Path) -> int:
    rep = Report()
    in_ci = bool(os.environ.get("CI"))
    binary = Path(os.environ.get("ORDER_WORKER_BIN") or REPO / "target/debug/order-worker")
    source = f"`{binary} --help`"
    known: set[str] = set()
    if not binary.is_file():
        if in_ci:
            rep.fail(
                f"order-worker binary not found at {binary}: build it first "
                "(cargo build -p order-worker) or set ORDER_WORKER_BIN"
            )
            return 1
        rep.warn(f"{binary} is not built: comparing with tests/worker-env-names.txt instead")
    else:
        known = help_env_names(binary)
        if not known:
            if in_ci:
                rep.fail(f"{source} lists no [env: NAME=...] entries")
                return 1
            rep.warn(f"{source} lists no [env: ...] entries yet: comparing with tests/worker-env-names.txt")
    real_binary = bool(known)
    if not known:
        known = reference_names()
        source = "tests/worker-env-names.txt"

    env = parse_env_file(root / ENV_FILE)
    written = set(env)
    for name in sorted(written):
        if name in known:
            continue
        if SDK_NAMES.match(name):
            rep.ok(f"{name} is read by the AWS SDK")
            continue
        rep.fail(f"{name} is in the environment file but not in {source}")
    rep.check(
        not (written - known - {n for n in written if SDK_NAMES.match(n)}),
        f"every name in the environment file is known to the worker ({len(written)} names)",
    )
    for name in REQUIRED:
        rep.check(name in written and env[name] != "", f"{name} is set")
    for name in sorted(known - written):
        if name in OMITTED:
            rep.ok(f"{name} left out on purpose ({OMITTED[name]})")
        elif SDK_NAMES.match(name):
            rep.ok(f"{name} left out (standard AWS endpoint; set through worker_extra_env)")
        else:
            rep.fail(
                f"{name} ({source}) is not in the environment file: add it to the role "
                "(templates/order-worker.env.j2) or to OMITTED in tests/check_output.py"
            )
    if real_binary:
        accepts_env(rep, binary, env)
    return 1 if rep.errors else 0


def cmd_render(template: Path, vars_json: Path) -> int:
    """A stand-in for Terraform's templatefile(), for the subset user-data.sh.tftpl uses."""
    values = json.loads(vars_json.read_text())

    def interpolate(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        call = re.fullmatch(r"jsonencode\((\w+)\)", expr)
        if call:
            return json.dumps(values[call.group(1)], separators=(",", ":"), sort_keys=True)
        if not re.fullmatch(r"\w+", expr):
            raise SystemExit(f"unsupported template expression: ${{{expr}}}")
        return str(values[expr])

    text = template.read_text()
    parts = text.split("$${")
    rendered = "${".join(re.sub(r"\$\{([^}]*)\}", interpolate, p) for p in parts)
    sys.stdout.write(rendered)
    return 0


def cmd_vars(files: list[Path]) -> int:
    """The role variables terraform/ passes (a `worker_vars = { ... }` map handed to
    user-data.sh.tftpl, or `-e worker_x=...` in a template) must be options of the role, and
    include every required one."""
    import yaml  # ansible-core's dependency, present in the virtualenv

    specs = yaml.safe_load((HERE.parent / "roles/order_worker/meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    required = {name for name, spec in options.items() if spec.get("required")}
    rep = Report()
    for path in files:
        text = path.read_text()
        block = re.search(r"\bworker_vars\s*=\s*\{(.*?)\n\s*\}", text, re.S)
        if block:
            passed = set(re.findall(r"^\s*(\w+)\s*=", block.group(1), re.M))
        else:
            passed = set(re.findall(r"\b(worker_[a-z0-9_]+)=", text))
        if not passed:
            continue
        for name in sorted(passed):
            rep.check(name in options, f"{path.name}: {name} is an option of the role")
        for name in sorted(required - passed):
            rep.fail(f"{path.name}: the required role variable {name} is not passed")
    return 1 if rep.errors else 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "unit":
        return cmd_unit(Path(argv[2]))
    if len(argv) == 3 and argv[1] == "agent":
        return cmd_agent(Path(argv[2]))
    if len(argv) == 3 and argv[1] == "env":
        return cmd_env(Path(argv[2]))
    if len(argv) == 4 and argv[1] == "render":
        return cmd_render(Path(argv[2]), Path(argv[3]))
    if len(argv) >= 3 and argv[1] == "vars":
        return cmd_vars([Path(a) for a in argv[2:]])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
