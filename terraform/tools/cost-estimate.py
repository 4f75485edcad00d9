#!/usr/bin/env python3
"""Monthly cost of the Terraform defaults at a given number of orders a month, itemised, as a markdown table.

    terraform/tools/cost-estimate.py                         # 1 million and 100 million orders a month
    terraform/tools/cost-estimate.py --orders 5e6 --spot-price 0.035 --instances 3
    terraform/tools/cost-estimate.py --interface-endpoint-az-count 1   # the cheaper network

Prices come from prices.py (next to this file; one place, dated, with sources). Sizes come from the defaults
in terraform/variables.tf (instance type, fleet size, volume size, zones, endpoints, retention, DLQ on/off)
and from the alarm resources in terraform/*.tf; the per-order figures of DynamoDB and SQS are the benchmark's
(PER_ORDER below). Every other figure is a named assumption below, with the reason for it. A cell "a-b" is a
range: the low end with the worker's best batching (a backlog: runs of 10 orders per group), the high end
with none (orders trickling in one at a time). Free tiers are left out (an account shares them).

Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from prices import PRICES, REGION, on_demand_hourly, price  # beside this script: its folder is sys.path[0]

HERE = Path(__file__).resolve().parent
TF_DIR = HERE.parent

HOURS_PER_MONTH = 730  # AWS's pricing pages use 730 hours a month
MB = 1_000_000
GB = 1_000_000_000

# --- per order, from the benchmark (bench/): the lead replaces these with the measured figures -------------
PER_ORDER = {
    # DynamoDB write request units per order: (with runs of 10, with runs of 1): a claim per run plus one unit per
    # record.
    "dynamodb_write_units": (1.10, 1.99),
    # Consistent reads of a group's row on a cache miss, and of an existing item when an insert finds it taken.
    "dynamodb_read_units": 0.01,
    # SQS requests the worker makes per order (receive, delete, visibility changes). A receive returns up to 10
    # messages whatever the shape (one group's ten, or ten groups' one each), and deletes go in batches of 10.
    "sqs_worker_requests": (0.20, 0.20),
}
PER_ORDER_SOURCE = (
    "measured: bench/results/20261201T142932Z.json (scripts/bench full run, one worker, 5,000 orders over 50 groups)"
)

# --- assumptions (each one a figure we could not read off a price list) --------------------------------------
# The producer's SendMessageBatch of 10: 0.1 request per order. The producer is not part of this stack, but
# the queue is, and SQS bills the queue's owner for every request.
SQS_SEND_REQUESTS_PER_ORDER = 0.1
# An idle worker's receive loop: one 20 s long poll at a time (receive_wait_time_seconds), i.e. 3 receives a
# minute that return nothing while the queue is empty. Counted on top of the per-order figure as an upper bound.
IDLE_RECEIVES_PER_WORKER_MONTH = 3 * 60 * HOURS_PER_MONTH
# Bytes an order costs on the SQS interface endpoint: the receive response (the bench's order body is ~200 B,
# plus message id, receipt handle (~400 B), attributes and the JSON envelope) and its share of the delete
# and visibility requests, plus HTTP and TLS framing. DynamoDB goes through the free gateway endpoint.
SQS_ENDPOINT_BYTES_PER_ORDER = 2_000
# The worker's log is per instance-minute, not per order: at the default level (info) no line is written
# per order (src/dispatch/commit.rs logs a conflict as a warning, a duplicate at debug level); one EMF
# "interval" record a minute (emf_interval_seconds = 60), measured 891 bytes for a representative record
# built as src/emf.rs builds it, plus 26 bytes per event that CloudWatch Logs counts (its PutLogEvents
# quota). Start-up, drain and warning lines are rare; 10 % on top covers them on a quiet fleet, not under
# an outage, when retries log warnings.
EMF_RECORD_BYTES = 891 + 26
OTHER_LOG_LINES_SHARE = 0.10
# VPC flow logs (traffic_type ALL, default 10-minute aggregation): each flow is recorded on the worker's
# network interface and on the endpoint's. A worker keeps pooled connections (SQS, DynamoDB, Logs, Auto
# Scaling, SSM), re-opened now and then; 100 records per worker per 10 minutes at ~120 bytes (default format).
FLOW_LOG_RECORDS_PER_WORKER_PER_10_MIN = 100
FLOW_LOG_RECORD_BYTES = 120
# DynamoDB item size: an order record is ~13 attributes (OrderID, MessageGroupId, GroupPosition, Status,
# ItemCount, PayloadSha256 (64 B), SqsMessageId, ReceiveCount, ProcessedBy, ProcessedAt, TotalCents,
# Currency, SqsSequenceNumber), ~400 bytes of names and values, plus the 100 bytes of overhead per item
# DynamoDB bills for storage. The orders table has no TTL: storage grows with every month kept.
ORDER_ITEM_BYTES = 500
# KMS requests per month: SQS asks KMS for a data key at most once per kms_data_key_reuse_period_seconds
# (300 s) per principal; DynamoDB and CloudWatch Logs cache their keys for minutes too. ~5 callers per
# worker (SQS, two tables, logs, EBS) at one request per 5 minutes, plus the producer: rounded up.
KMS_REQUESTS_PER_WORKER_MONTH = 5 * 12 * HOURS_PER_MONTH
KMS_REQUESTS_PRODUCERS_MONTH = 12 * HOURS_PER_MONTH
# Drains a month (Spot interruptions, rebalances, scale-in, refreshes): the drain's EMF metrics are billed only
# for the hours they are published in. One a day.
DRAINS_PER_MONTH = 30
EMF_INTERVAL_METRICS = 9  # src/emf.rs: published every minute
EMF_DRAIN_METRICS = 10  # 7 under QueueName + Drains under QueueName+Trigger (3 values): only in drain hours
# Target tracking makes two alarms (high, low), each on the policy's metric math over two metrics.
TARGET_TRACKING_ALARM_METRICS = 4
# Without a real Spot price, assume the pool is this much under On-Demand. Pass --spot-price: the current
# price is `aws ec2 describe-spot-price-history --instance-types m7i.large --product-descriptions Linux/UNIX`.
ASSUMED_SPOT_DISCOUNT = 0.60


# --- terraform/ as written ---------------------------------------------------------------------------------


def terraform_defaults(tf_dir: Path = TF_DIR) -> dict:
    """{variable: default} for the defaults that are literals (numbers, strings, bools, null, string lists)."""
    text = (tf_dir / "variables.tf").read_text()
    out: dict = {}
    for m in re.finditer(r'^variable\s+"(\w+)"\s*\{(.*?)^\}', text, re.S | re.M):
        d = re.search(r"^\s*default\s*=\s*(.+?)\s*(#.*)?$", m.group(2), re.M)
        if not d:
            continue
        raw = d.group(1)
        if raw == "null":
            out[m.group(1)] = None
        elif raw in ("true", "false"):
            out[m.group(1)] = raw == "true"
        elif re.fullmatch(r"-?\d+(\.\d+)?", raw):
            out[m.group(1)] = float(raw) if "." in raw else int(raw)
        elif raw.startswith('"') and raw.endswith('"'):
            out[m.group(1)] = raw[1:-1]
        elif raw.startswith("[") and raw.endswith("]"):
            out[m.group(1)] = re.findall(r'"([^"]*)"', raw)
    return out


def alarm_metrics(tf_dir: Path, dlq: bool) -> tuple[int, int]:
    """(alarms, alarm metrics) of the aws_cloudwatch_metric_alarm resources: a metric math alarm counts each
    `metric` it reads. An alarm with `count = local.dlq_enabled ...` counts only with a DLQ."""
    alarms = metrics = 0
    for path in sorted(tf_dir.glob("*.tf")):
        text = path.read_text()
        for m in re.finditer(r'^resource\s+"aws_cloudwatch_metric_alarm"\s+"\w+"\s*\{(.*?)^\}', text, re.S | re.M):
            body = m.group(1)
            if re.search(r"^\s*count\s*=.*dlq_enabled", body, re.M) and not dlq:
                continue
            alarms += 1
            metrics += max(1, len(re.findall(r"^\s*metric\s*\{", body, re.M)))
    return alarms, metrics


# --- the estimate ----------------------------------------------------------------------------------------------


def lines(orders: float, d: dict, a: argparse.Namespace) -> list[tuple[str, str, float, float]]:
    """(item, basis, low, high) in USD a month."""
    itype = d["instance_types"][0]
    od = on_demand_hourly(itype)
    spot = a.spot_price if a.spot_price is not None else od * (1 - ASSUMED_SPOT_DISCOUNT)
    spot_basis = "input" if a.spot_price is not None else f"assumed {ASSUMED_SPOT_DISCOUNT:.0%} under On-Demand"
    n = a.instances if a.instances is not None else d["desired_capacity"]
    zones = d["az_count"] if a.interface_endpoint_az_count is None else a.interface_endpoint_az_count
    endpoints = len(d["interface_endpoints"])
    months = a.months_kept
    dlq = d["dead_letter_queue"]
    out = []

    def add(item, basis, low, high=None):
        out.append((item, basis, low, low if high is None else high))

    add(
        f"Spot workers ({n} x {itype})",
        f"{usd(spot)}/h Spot ({spot_basis}; On-Demand {usd(od)}/h = ${n * od * HOURS_PER_MONTH:,.0f}/month) x 730 h",
        n * spot * HOURS_PER_MONTH,
    )
    add(
        "EBS root volumes",
        f"{n} x {d['root_volume_size_gib']} GiB gp3 x {usd(price('ebs_gp3_storage'))}/GB",
        n * d["root_volume_size_gib"] * price("ebs_gp3_storage"),
    )
    add(
        "EC2 detailed monitoring",
        f"{n} x 7 metrics x {usd(price('cloudwatch_custom_metric'))}",
        n * PRICES["ec2_detailed_monitoring_metrics"].usd * price("cloudwatch_custom_metric"),
    )
    sqs_gb = orders * SQS_ENDPOINT_BYTES_PER_ORDER / GB
    log_gb = n * EMF_RECORD_BYTES * 60 * HOURS_PER_MONTH * (1 + OTHER_LOG_LINES_SHARE) / GB
    add(
        f"VPC interface endpoints ({endpoints} x {zones} AZ)",
        f"{endpoints * zones} x {usd(price('vpc_interface_endpoint_hour'))}/h x 730 h",
        endpoints * zones * price("vpc_interface_endpoint_hour") * HOURS_PER_MONTH,
    )
    add(
        "VPC endpoint data",
        f"{sqs_gb + log_gb:,.2f} GB (SQS ~{SQS_ENDPOINT_BYTES_PER_ORDER} B/order + logs) x "
        f"{usd(price('vpc_interface_endpoint_gb'))}/GB; S3 and DynamoDB gateway endpoints free",
        (sqs_gb + log_gb) * price("vpc_interface_endpoint_gb"),
    )
    add(
        "Route 53",
        f"hosted zone {usd(price('route53_hosted_zone'))} + CloudWatch-alarm health check "
        f"{usd(price('route53_health_check'))}; alias queries free",
        price("route53_hosted_zone") + price("route53_health_check"),
    )
    alarms, alarm_m = alarm_metrics(TF_DIR, dlq)
    alarm_m += TARGET_TRACKING_ALARM_METRICS
    add(
        "CloudWatch alarms",
        f"{alarms} alarms + 2 of target tracking = {alarm_m} alarm metrics x {usd(price('cloudwatch_alarm_metric'))}",
        alarm_m * price("cloudwatch_alarm_metric"),
    )
    drain_hours = min(DRAINS_PER_MONTH, HOURS_PER_MONTH)
    emf = (EMF_INTERVAL_METRICS + EMF_DRAIN_METRICS * drain_hours / HOURS_PER_MONTH) * price("cloudwatch_custom_metric")
    add(
        "CloudWatch EMF metrics + dashboard",
        f"{EMF_INTERVAL_METRICS} metrics always, {EMF_DRAIN_METRICS} in ~{DRAINS_PER_MONTH} drain hours, "
        f"x {usd(price('cloudwatch_custom_metric'))}; dashboard {usd(price('cloudwatch_dashboard'))}",
        emf + price("cloudwatch_dashboard"),
    )
    flow_gb = n * FLOW_LOG_RECORDS_PER_WORKER_PER_10_MIN * 6 * HOURS_PER_MONTH * FLOW_LOG_RECORD_BYTES / GB
    ingest_gb = log_gb + flow_gb
    add(
        "CloudWatch Logs ingestion",
        f"worker log {log_gb * 1000:,.0f} MB (one EMF record a minute per worker, "
        f"none per order) + flow logs {flow_gb * 1000:,.0f} MB, x {usd(price('cloudwatch_logs_ingest_gb'))}/GB",
        ingest_gb * price("cloudwatch_logs_ingest_gb"),
    )
    kept_log = min(months, d["worker_log_retention_days"] / 30.4)
    add(
        f"CloudWatch Logs storage (month {months})",
        f"{kept_log:.0f} months kept (retention {d['worker_log_retention_days']} d), uncompressed (an upper "
        f"bound), x {usd(price('cloudwatch_logs_storage_gb'))}/GB",
        ingest_gb * kept_log * price("cloudwatch_logs_storage_gb"),
    )
    kms_req = n * KMS_REQUESTS_PER_WORKER_MONTH + KMS_REQUESTS_PRODUCERS_MONTH
    add(
        "KMS",
        f"1 key {usd(price('kms_key'))} + ~{kms_req / 1000:,.0f}k requests x {usd(price('kms_requests_10k'))}/10k "
        "(data keys cached 5 min)",
        price("kms_key") + kms_req / 10_000 * price("kms_requests_10k"),
    )
    wlo, whi = PER_ORDER["dynamodb_write_units"]
    add(
        "DynamoDB writes",
        f"{wlo}-{whi} write units/order x {usd(price('dynamodb_write_unit'))}/million",
        orders * wlo / 1e6 * price("dynamodb_write_unit"),
        orders * whi / 1e6 * price("dynamodb_write_unit"),
    )
    add(
        "DynamoDB reads",
        f"{PER_ORDER['dynamodb_read_units']} read units/order x {usd(price('dynamodb_read_unit'))}/million",
        orders * PER_ORDER["dynamodb_read_units"] / 1e6 * price("dynamodb_read_unit"),
    )
    stored_gb = orders * months * ORDER_ITEM_BYTES / GB
    add(
        f"DynamoDB storage + PITR (month {months})",
        f"{stored_gb:,.1f} GB ({months} months x ~{ORDER_ITEM_BYTES} B/order, no TTL) x "
        f"({usd(price('dynamodb_storage_gb'))} + {usd(price('dynamodb_pitr_gb'))})/GB",
        stored_gb * (price("dynamodb_storage_gb") + price("dynamodb_pitr_gb")),
    )
    slo, shi = PER_ORDER["sqs_worker_requests"]
    idle = n * IDLE_RECEIVES_PER_WORKER_MONTH
    add(
        "SQS FIFO requests",
        f"worker {slo}-{shi}/order + producer {SQS_SEND_REQUESTS_PER_ORDER}/order + up to {idle / 1e6:.2f}M empty "
        f"long polls, x {usd(price('sqs_fifo_request'))}/million",
        (orders * (slo + SQS_SEND_REQUESTS_PER_ORDER)) / 1e6 * price("sqs_fifo_request"),
        (orders * (shi + SQS_SEND_REQUESTS_PER_ORDER) + idle) / 1e6 * price("sqs_fifo_request"),
    )
    if dlq:
        add("SQS dead-letter queue", "no charge while empty", 0.0)
    return out


def usd(x: float) -> str:
    """A unit price: at least two decimals, more when the price has them ($0.50, $0.0403, $0.625)."""
    whole, frac = f"{x:.4f}".rstrip("0").split(".")
    return f"${whole}.{frac:0<2}"


def money(low: float, high: float) -> str:
    def one(x):
        return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"

    return one(low) if abs(high - low) < 0.005 else f"{one(low)}-{one(high)}"


def volume_name(orders: float) -> str:
    return f"{orders / 1e6:,.0f}M orders" if orders >= 1e6 else f"{orders:,.0f} orders"


def render(volumes: list[float], d: dict, a: argparse.Namespace) -> str:
    per_volume = [lines(v, d, a) for v in volumes]
    head = "| item | basis | " + " | ".join(f"{volume_name(v)} / month (USD)" for v in volumes) + " |"
    rows = [head, "|---|---|" + "---:|" * len(volumes)]
    for i, (item, basis, _, _) in enumerate(per_volume[0]):
        # The basis of the last volume names its own quantities (GB, storage); the first one's is shown
        # when the two agree, which they do for everything that does not scale with orders.
        bases = {pv[i][1] for pv in per_volume}
        shown = basis if len(bases) == 1 else f"{per_volume[-1][i][1]} (at {volume_name(volumes[-1])})"
        rows.append(f"| {item} | {shown} | " + " | ".join(money(pv[i][2], pv[i][3]) for pv in per_volume) + " |")
    totals = [(sum(x[2] for x in pv), sum(x[3] for x in pv)) for pv in per_volume]
    rows.append("| **total** | | " + " | ".join(f"**{money(lo, hi)}**" for lo, hi in totals) + " |")
    per_order = [
        f"{volume_name(v)}: ${lo / v * 1e6:,.2f}-{hi / v * 1e6:,.2f} per million orders"
        for v, (lo, hi) in zip(volumes, totals, strict=False)
    ]
    return "\n".join(rows) + "\n\n" + "; ".join(per_order) + "\n"


def network_options(d: dict) -> str:
    """The interface endpoints' fixed cost by zone count, and a NAT gateway for comparison."""
    e = len(d["interface_endpoints"])
    hourly = price("vpc_interface_endpoint_hour") * HOURS_PER_MONTH
    rows = ["| network | fixed USD / month |", "|---|---:|"]
    for z in range(d["az_count"], 0, -1):
        rows.append(
            f"| {e} interface endpoints in {z} AZ{'s' if z > 1 else ''}"
            f"{' (default)' if z == d['az_count'] else f' (interface_endpoint_az_count = {z})'} | {e * z * hourly:,.2f} |"
        )
    e5 = len([x for x in d["interface_endpoints"] if x not in ("ssmmessages", "ec2messages")])
    rows.append(
        f"| {e5} interface endpoints in 1 AZ (interface_endpoints without ssmmessages and ec2messages: "
        f"no Session Manager) | {e5 * hourly:,.2f} |"
    )
    nat = price("nat_gateway_hour") * HOURS_PER_MONTH
    rows.append(
        f"| not offered: NAT gateway in 1 AZ / in {d['az_count']} AZs, plus {usd(price('nat_gateway_gb'))}/GB and an "
        f"internet path | {nat:,.2f} / {nat * d['az_count']:,.2f} |"
    )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--orders", type=float, action="append", help="orders a month (repeatable; default: 1e6 and 1e8)")
    p.add_argument(
        "--spot-price",
        type=float,
        help="Spot price per instance-hour of the first instance type "
        f"(default: On-Demand less {ASSUMED_SPOT_DISCOUNT * 100:.0f} %%, an assumption)",
    )
    p.add_argument("--instances", type=int, help="workers running all month (default: desired_capacity)")
    p.add_argument("--interface-endpoint-az-count", type=int, help="zones with interface endpoints (default: az_count)")
    p.add_argument(
        "--months-kept",
        type=int,
        default=12,
        help="months of orders in DynamoDB and of logs in CloudWatch (storage grows; default 12)",
    )
    p.add_argument("--tf-dir", type=Path, default=TF_DIR, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    d = terraform_defaults(a.tf_dir)
    if on_demand_hourly(d["instance_types"][0]) is None:
        p.error(f"prices.py has no On-Demand price for {d['instance_types'][0]}")
    volumes = a.orders or [1e6, 1e8]
    print(f"# Monthly cost of the terraform/ defaults ({REGION} list prices, terraform/tools/prices.py)\n")
    print(render(volumes, d, a))
    print("Interface endpoints, the largest fixed cost, by zone count:\n")
    print(network_options(d))
    print(
        f"DynamoDB and SQS per-order figures: {PER_ORDER_SOURCE}. Every figure marked `verify` in prices.py "
        "was not re-read from its pricing page when written down. Free tiers are not subtracted."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
