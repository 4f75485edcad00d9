"""The Python harness for the local region, shared by the chaos soak, the demo's report, the benchmark and the
shell scripts. Importable by name from the project's .venv (scripts/bootstrap installs ../pyproject.toml into it,
editable: every clone and worktree, with its own .venv, uses its own copy).

# Layout
- `paths`: the repository, the binaries ($ORDER_WORKER_BIN / $SPOT_SIM_BIN), the virtual environment's tools.
- `procs`: the one process registry (`Registry`, `Proc`: own session, log file, stop by group), `wait_for`
  (a condition with a deadline), free ports, /proc usage.
- `times`: the one time parser (`parse_time`, RFC 3339 -> epoch seconds) and the report's clock formats.
- `orders`: the one order builder (`order`, `order_body`, `make_orders`).
- `ddb`: the one table scan (paginated, boto3's TypeDeserializer, plain values) and a COUNT scan.
- `metrics`: the workers' /metrics parsed (Prometheus text), sums and quantiles.
- `sim`: spot-sim's control API and its events by `kind`.
- `worker_log`: the workers' JSON logs (`--log-format json`): events, EMF records, drain reports.
- `servers`: ministack and DynamoDB Local on free ports of 127.0.0.1.
- `gate`: the local region's IAM gate (chaos/proxy.py --iam strict) in front of them, one access key per
  principal, and the check that a run met no denial.
- `region`: `LocalRegion`, the whole region (servers, queue, tables, spot-sim and its fleet) as a context manager.

Only the standard library and boto3 (requirements/chaos.txt); `ddb`, `servers` and `region` import boto3, the
rest work without it (chaos/busiest.py runs on any Python).
"""

from .paths import REPO, binary, target_dir, venv_bin
from .procs import HarnessError, Proc, Registry, Timeout, free_port, tail, wait_for
from .sim import http_json, sim_status
from .times import hms, parse_time, utc_now

__all__ = [
    "DYNAMODB_BACKENDS",
    "REPO",
    "HarnessError",
    "LocalRegion",
    "Proc",
    "Registry",
    "Timeout",
    "binary",
    "free_port",
    "hms",
    "http_json",
    "log",
    "parse_time",
    "sim_status",
    "tail",
    "target_dir",
    "utc_now",
    "venv_bin",
    "wait_for",
]


def __getattr__(name: str):
    # The region needs boto3; importing it lazily keeps `from harness import parse_time` boto3-free.
    if name in ("LocalRegion", "DYNAMODB_BACKENDS", "log", "CREDENTIALS", "REGION", "terraform_defaults"):
        from . import region

        return getattr(region, name)
    raise AttributeError(name)
