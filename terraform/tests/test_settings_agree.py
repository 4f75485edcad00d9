"""The settings the worker and the Terraform share must agree.

The worker's defaults come from `order-worker --help` (clap prints `[default: ...]`) when
ORDER_WORKER_BIN names the binary (scripts/check-terraform sets it when target/debug/order-worker
exists). Without it, the test compares against WORKER_DEFAULTS below, copied from the project's
shared defaults (the lead's context note); the binary, when given, is the authority.

Values with no worker flag (the DLQ, the receive count, the hook timeout) are compared with the
shared defaults only, and the timing rules between them are checked as well.
"""

import os
import re
import subprocess

import pytest

# The shared defaults, as the worker's flags spell them (see the module docstring).
WORKER_DEFAULTS = {
    "orders-table": "orders",
    "groups-table": "order-groups",
    "visibility-timeout": "120s",
    "wait-time": "20s",
    "drain-timeout": "90s",
    "drain-margin": "10s",
    "lifecycle-hook": "order-worker-drain",
    "emf-interval": "60s",
    "emf-namespace": "OrderWorker",
}

# Shared values the worker has no flag for.
SHARED = {
    "queue_name": "orders.fifo",
    "dlq_name": "orders-dlq.fifo",
    "max_receive_count": 10,
    "asg_name": "order-workers",
    "lifecycle_hook_timeout_seconds": 120,
}

# Terraform variable -> worker flag.
FLAG_OF = {
    "orders_table_name": "orders-table",
    "groups_table_name": "groups-table",
    "visibility_timeout_seconds": "visibility-timeout",
    "receive_wait_time_seconds": "wait-time",
    "drain_timeout_seconds": "drain-timeout",
    "drain_margin_seconds": "drain-margin",
    "lifecycle_hook_name": "lifecycle-hook",
    "emf_interval_seconds": "emf-interval",
    "emf_namespace": "emf-namespace",
}

DURATION_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600}


def seconds(text):
    """A humantime duration ("90s", "2m", "1m 30s") in seconds."""
    total, rest = 0.0, text.replace(" ", "")
    for number, unit in re.findall(r"(\d+)([a-z]+)", rest):
        assert unit in DURATION_UNITS, f"unknown duration unit in {text!r}"
        total += int(number) * DURATION_UNITS[unit]
    assert re.fullmatch(r"(\d+[a-z]+)+", rest), f"not a duration: {text!r}"
    return total


def parse_help(text):
    """{flag: default} from clap's --help (long form: each option a paragraph)."""
    defaults, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w, )?--([a-z0-9-]+)", line)
        if m:
            current = m.group(1)
        d = re.search(r"\[default: ([^\]]*)\]", line)
        if d and current:
            defaults[current] = d.group(1)
    return defaults


def worker_defaults():
    binary = os.environ.get("ORDER_WORKER_BIN")
    if not binary:
        return WORKER_DEFAULTS, "the constant list in this test"
    out = subprocess.run(
        [binary, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    parsed = parse_help(out.stdout)
    missing = set(WORKER_DEFAULTS) - set(parsed)
    assert not missing, f"{binary} --help shows no default for {sorted(missing)}"
    return parsed, f"{binary} --help"


def test_help_parser_reads_clap_output():
    sample = """Options:
      --orders-table <ORDERS_TABLE>
          DynamoDB table of order records

          [env: ORDER_WORKER_ORDERS_TABLE=]
          [default: orders]

      --drain-timeout <DRAIN_TIMEOUT>
          Longest a drain may take [env: ORDER_WORKER_DRAIN_TIMEOUT=] [default: 1m 30s]
"""
    assert parse_help(sample) == {"orders-table": "orders", "drain-timeout": "1m 30s"}
    assert seconds("1m 30s") == 90 and seconds("120s") == 120 and seconds("2m") == 120


@pytest.mark.parametrize("variable", sorted(FLAG_OF))
def test_terraform_default_matches_worker(tf, variable):
    defaults, source = worker_defaults()
    flag = FLAG_OF[variable]
    ours = tf.default(variable)
    theirs = defaults[flag]
    if variable.endswith("_seconds"):
        assert ours == seconds(theirs), (
            f"{variable} = {ours}, but the worker's --{flag} defaults to {theirs} ({source})"
        )
    else:
        assert ours == theirs, f"{variable} = {ours!r}, but the worker's --{flag} defaults to {theirs!r} ({source})"


@pytest.mark.parametrize("variable", sorted(SHARED))
def test_terraform_default_matches_shared_value(tf, variable):
    assert tf.default(variable) == SHARED[variable]


def test_timings_fit_together(tf):
    defaults, source = worker_defaults()
    drain = seconds(defaults["drain-timeout"]) + seconds(defaults["drain-margin"])
    hook = tf.default("lifecycle_hook_timeout_seconds")
    visibility = seconds(defaults["visibility-timeout"])
    assert drain < hook <= 120, f"drain {drain} s must end before the hook times out ({hook} s), within the Spot notice"
    assert visibility >= drain, f"visibility {visibility} s must cover the drain ({drain} s) ({source})"


def test_boot_passes_the_worker_settings(tf):
    """The launch template hands the Ansible role (and so the worker) these very settings."""
    worker_vars = tf.locals["worker_vars"]
    for role_var, source in (
        ("worker_orders_table", "aws_dynamodb_table.orders.name"),
        ("worker_groups_table", "aws_dynamodb_table.groups.name"),
        ("worker_queue_url", "aws_sqs_queue.orders.url"),
        ("worker_asg_name", "var.asg_name"),
        ("worker_lifecycle_hook", "var.lifecycle_hook_name"),
        ("worker_visibility_timeout", "var.visibility_timeout_seconds"),
        ("worker_wait_time", "var.receive_wait_time_seconds"),
        ("worker_drain_timeout", "var.drain_timeout_seconds"),
        ("worker_drain_margin", "var.drain_margin_seconds"),
        ("worker_hook_timeout", "var.lifecycle_hook_timeout_seconds"),
        ("worker_log_group", "aws_cloudwatch_log_group.worker.name"),
        ("worker_emf_namespace", "var.emf_namespace"),
        ("worker_emf_interval", "var.emf_interval_seconds"),
    ):
        assert source in str(worker_vars.get(role_var)), f"{role_var} must come from {source}"
    for duration in ("worker_visibility_timeout", "worker_wait_time", "worker_drain_timeout", "worker_drain_margin"):
        assert str(worker_vars[duration]).endswith("}s"), f'{duration} is passed as whole seconds ("90s")'


def test_ansible_role_defaults_agree(tf):
    """When ansible/ is present, the role's own defaults match too (systemd stop timeout in between)."""
    defaults_file = tf.dir.parent / "ansible" / "roles" / "order_worker" / "defaults" / "main.yml"
    if not defaults_file.is_file():
        pytest.skip("no ansible role in this checkout")
    text = defaults_file.read_text()

    def role(name):
        m = re.search(rf"^{name}:\s*(\S+)\s*$", text, re.M)
        assert m, f"{name} not in {defaults_file}"
        return m.group(1)

    assert role("worker_orders_table") == tf.default("orders_table_name")
    assert role("worker_groups_table") == tf.default("groups_table_name")
    assert role("worker_asg_name") == tf.default("asg_name")
    assert role("worker_lifecycle_hook") == tf.default("lifecycle_hook_name")
    assert seconds(role("worker_drain_timeout")) == tf.default("drain_timeout_seconds")
    assert seconds(role("worker_drain_margin")) == tf.default("drain_margin_seconds")
    assert seconds(role("worker_visibility_timeout")) == tf.default("visibility_timeout_seconds")
    assert int(role("worker_hook_timeout")) == tf.default("lifecycle_hook_timeout_seconds")
    assert role("worker_emf_namespace") == tf.default("emf_namespace")
    assert seconds(role("worker_emf_interval")) == tf.default("emf_interval_seconds")
    # The log group: observability.tf names it /order-worker/<environment>/worker.
    group = tf.resource("aws_cloudwatch_log_group", "worker")["name"]
    assert role("worker_log_group") == group.replace("${var.environment}", tf.default("environment"))
    stop = int(role("worker_stop_timeout"))
    assert (
        tf.default("drain_timeout_seconds") + tf.default("drain_margin_seconds")
        < stop
        < tf.default("lifecycle_hook_timeout_seconds")
    )
