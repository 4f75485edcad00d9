"""Planted mistakes: each is put into a copy of terraform/, and the checks named for it must fail.

This proves the checks catch what the issue lists (a typo'd argument, a missing FIFO flag,
On-Demand capacity, a public subnet for workers) and a few more. Run by
`scripts/check-terraform` (or `--mutations`), which provides the offline provider
(TF_REATTACH_PROVIDERS, TF_CLI_CONFIG_FILE) and checkov (CHECKOV_BIN).
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from conftest import TF_DIR, Config

pytestmark = pytest.mark.mutations

HERE = pathlib.Path(__file__).resolve().parent

# (id, file, text to replace (must occur exactly once), replacement, checks that must fail)
MUTATIONS = [
    (
        "typo-argument",
        "queue.tf",
        "  fifo_throughput_limit = var.high_throughput_fifo",
        "  fifo_throughput_limt = var.high_throughput_fifo",
        ["validate"],
    ),
    ("typo-block", "compute.tf", "  metadata_options {", "  metadata_option {", ["validate"]),
    (
        "typo-resource-type",
        "queue.tf",
        'resource "aws_sqs_queue_redrive_policy" "orders"',
        'resource "aws_sqs_queue_redrive" "orders"',
        ["validate"],
    ),
    ("missing-required-argument", "fis.tf", "  role_arn    = aws_iam_role.fis.arn\n", "", ["validate"]),
    (
        "missing-fifo-flag",
        "queue.tf",
        "  name       = var.queue_name\n  fifo_queue = true\n",
        "  name       = var.queue_name\n",
        ["hcl", "tftest"],
    ),
    (
        "non-fifo-queue-name",
        "variables.tf",
        'default     = "orders.fifo"',
        'default     = "orders"',
        ["hcl", "settings"],
    ),
    (
        "on-demand-percentage",
        "compute.tf",
        "on_demand_percentage_above_base_capacity = 0",
        "on_demand_percentage_above_base_capacity = 100",
        ["hcl", "tftest"],
    ),
    (
        "on-demand-base",
        "compute.tf",
        "on_demand_base_capacity                  = 0",
        "on_demand_base_capacity                  = 2",
        ["hcl"],
    ),
    (
        "spot-in-launch-template",
        "compute.tf",
        "  iam_instance_profile {",
        '  instance_market_options {\n    market_type = "spot"\n  }\n\n  iam_instance_profile {',
        ["hcl"],
    ),
    ("no-capacity-rebalance", "compute.tf", "capacity_rebalance = true", "capacity_rebalance = false", ["hcl"]),
    (
        "public-subnet",
        "network.tf",
        "map_public_ip_on_launch = false",
        "map_public_ip_on_launch = true",
        ["hcl", "checkov"],
    ),
    (
        "internet-route",
        "network.tf",
        "# --- flow logs",
        'resource "aws_internet_gateway" "this" {\n  vpc_id = aws_vpc.this[0].id\n}\n\n'
        'resource "aws_route" "internet" {\n  count                  = var.az_count\n'
        "  route_table_id         = aws_route_table.private[count.index].id\n"
        '  destination_cidr_block = "0.0.0.0/0"\n  gateway_id             = aws_internet_gateway.this.id\n}\n\n# --- flow logs',
        ["hcl"],
    ),
    (
        "public-ip-on-workers",
        "compute.tf",
        "associate_public_ip_address = false",
        "associate_public_ip_address = true",
        ["hcl"],
    ),
    (
        "imdsv1-allowed",
        "compute.tf",
        'http_tokens                 = "required"',
        'http_tokens                 = "optional"',
        ["hcl", "checkov"],
    ),
    (
        "unencrypted-root-volume",
        "compute.tf",
        "      encrypted             = true",
        "      encrypted             = false",
        ["hcl"],
    ),
    (
        "hook-shorter-than-drain",
        "variables.tf",
        "  default     = 90\n",
        "  default     = 115\n",
        ["settings", "tftest"],
    ),
    (
        "wildcard-queue-permission",
        "policies/worker.json.tftpl",
        '"Resource": "${queue_arn}"',
        '"Resource": "*"',
        ["hcl"],
    ),
    (
        "alias-to-website-endpoint",
        "dns.tf",
        "aws_s3_bucket_website_configuration.error_page.website_domain",
        "aws_s3_bucket_website_configuration.error_page.website_endpoint",
        ["hcl"],
    ),
    (
        "bucket-not-named-like-record",
        "dns.tf",
        "  bucket = var.record_name",
        '  bucket = "orders-error-page"',
        ["hcl", "tftest"],
    ),
    (
        "wrong-fis-action",
        "fis.tf",
        '"aws:ec2:send-spot-instance-interruptions"',
        '"aws:ec2:terminate-instances"',
        ["hcl", "tftest"],
    ),
    ("orders-key-renamed", "tables.tf", '  hash_key     = "OrderID"', '  hash_key     = "OrderId"', ["hcl"]),
    (
        "worker-log-group-unencrypted",
        "observability.tf",
        "  retention_in_days = var.worker_log_retention_days\n  kms_key_id        = aws_kms_key.data.arn\n",
        "  retention_in_days = var.worker_log_retention_days\n",
        ["hcl", "tftest", "checkov"],
    ),
    (
        "alarm-on-a-metric-never-written",
        "observability.tf",
        'metric_name         = "OrdersConflict"',
        'metric_name         = "OrderConflicts"',
        ["hcl", "tftest"],
    ),
    (
        "dlq-on-by-default",
        "variables.tf",
        '  type        = bool\n  default     = false\n}\n\nvariable "dlq_name"',
        '  type        = bool\n  default     = true\n}\n\nvariable "dlq_name"',
        ["hcl", "tftest"],
    ),
    (
        "redrive-without-the-opt-in",
        "queue.tf",
        'resource "aws_sqs_queue_redrive_policy" "orders" {\n  count = local.dlq_enabled ? 1 : 0\n',
        'resource "aws_sqs_queue_redrive_policy" "orders" {\n',
        ["hcl", "tftest"],
    ),
    (
        "retention-alarm-not-derived",
        "queue.tf",
        "  threshold           = local.retention_alarm_seconds",
        "  threshold           = 86400",
        ["hcl", "tftest"],
    ),
    ("worker-logs-anywhere", "policies/worker.json.tftpl", '"${log_group_arn}:log-stream:*"', '"*"', ["hcl"]),
    # The grant issue 19 found missing: the worker records with PartiQL INSERTs.
    # (InsertRecords' grant, on the orders table; ClaimPositions grants PartiQLInsert on the groups table.)
    (
        "worker-cannot-insert",
        "policies/worker.json.tftpl",
        '"Action": "dynamodb:PartiQLInsert"',
        '"Action": "dynamodb:PutItem"',
        ["hcl"],
    ),
]


def plant(tmp_path, file, old, new):
    dest = tmp_path / "terraform"
    shutil.copytree(
        TF_DIR,
        dest,
        ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "terraform.tfvars", "__pycache__"),
    )
    # compute.tf renders ../ansible/user-data.sh.tftpl; the settings test reads the role's defaults.
    shutil.copytree(
        TF_DIR.parent / "ansible",
        tmp_path / "ansible",
        ignore=shutil.ignore_patterns(".ansible", "__pycache__", "tests"),
    )
    target = dest / file
    text = target.read_text()
    assert text.count(old) == 1, f"mutation anchor occurs {text.count(old)} times in {file}: {old!r}"
    target.write_text(text.replace(old, new))
    return dest


def run(cmd, cwd, env=None):
    return subprocess.run(
        cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


def fails(check, copy):
    """Run one check on the mutated copy; True when it fails (the mistake is caught)."""
    if check == "validate":
        init = run(["terraform", "init", "-backend=false", "-input=false", "-no-color"], copy)
        if init.returncode != 0:
            return True
        return run(["terraform", "validate", "-no-color"], copy).returncode != 0
    if check == "tftest":
        if run(["terraform", "init", "-backend=false", "-input=false", "-no-color"], copy).returncode != 0:
            return True
        return run(["terraform", "test", "-no-color"], copy).returncode != 0
    if check == "hcl":
        # In-process (it is pure Python): every architecture test against the mutated copy.
        import test_architecture

        config = Config(copy)
        for name, test in sorted(vars(test_architecture).items()):
            if name.startswith("test_") and callable(test):
                try:
                    test(config)
                except AssertionError:
                    return True
        return False
    if check in ("settings", "checkov"):
        test = {"settings": "test_settings_agree.py", "checkov": "test_checkov.py"}[check]
        result = run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(HERE / test)],
            HERE,
            env={"TF_CHECK_DIR": str(copy)},
        )
        assert result.returncode in (0, 1), (
            f"pytest could not run {test}: {result.stdout[-1500:]}{result.stderr[-1500:]}"
        )
        return result.returncode == 1
    raise AssertionError(f"unknown check {check}")


@pytest.fixture(scope="module", autouse=True)
def offline_tools():
    if not os.environ.get("TF_REATTACH_PROVIDERS") or not os.environ.get("CHECKOV_BIN"):
        pytest.skip("run through scripts/check-terraform (needs the offline provider and checkov)")


def test_unmutated_copy_passes_the_cheap_checks(tmp_path):
    copy = plant(tmp_path, "versions.tf", "terraform {", "terraform {")
    assert not fails("validate", copy), "the unmutated configuration must validate"
    assert not fails("hcl", copy), "the unmutated configuration must pass the architecture tests"


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mistake_is_caught(tmp_path, mutation):
    name, file, old, new, checks = mutation
    copy = plant(tmp_path, file, old, new)
    missed = [c for c in checks if not fails(c, copy)]
    assert not missed, f"planted mistake {name!r} was not caught by: {missed}"
