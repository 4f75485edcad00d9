"""AWS list prices the project's cost estimates use, in one place (us-east-1, USD).

terraform/tools/cost-estimate.py prices the Terraform defaults with them, and the traffic run its compute; the
benchmark's cost table reads the same figures instead of writing its own. In the project's .venv (scripts/bootstrap
installs ../../pyproject.toml) it is the top-level module `prices`:

    from prices import PRICES, price
    PRICES["dynamodb_write_unit"].usd      # 0.625 (per million write request units)
    price("sqs_fifo_request")               # the same as PRICES[...].usd

Every entry names its unit, its source page and `as_of`: the date the figure is known to hold from (for the
DynamoDB on-demand prices, the cut of 1 November 2024) or, where no change date is known, the date it was
written down here. `verify` marks a figure that was not read off its primary source when it was written down
(no network in the session that recorded it): check it on the page before relying on it. Free tiers are left
out on purpose: an account shares them with everything else it runs.

Standard library only; importing it has no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass

REGION = "us-east-1"
RECORDED = "2026-12-01"  # when these figures were written down


@dataclass(frozen=True)
class Price:
    usd: float
    unit: str
    source: str
    as_of: str
    verify: bool = False
    note: str = ""


EC2_ON_DEMAND = "https://aws.amazon.com/ec2/pricing/on-demand/"
EC2_SPOT = "https://aws.amazon.com/ec2/spot/pricing/"
EBS = "https://aws.amazon.com/ebs/pricing/"
PRIVATELINK = "https://aws.amazon.com/privatelink/pricing/"
VPC = "https://aws.amazon.com/vpc/pricing/"
ROUTE53 = "https://aws.amazon.com/route53/pricing/"
CLOUDWATCH = "https://aws.amazon.com/cloudwatch/pricing/"
KMS = "https://aws.amazon.com/kms/pricing/"
DYNAMODB = "https://aws.amazon.com/dynamodb/pricing/on-demand/"
SQS = "https://aws.amazon.com/sqs/pricing/"

PRICES: dict[str, Price] = {
    # --- EC2: On-Demand Linux, per instance-hour. Spot has no list price: it moves with each pool's supply
    # and demand (`aws ec2 describe-spot-price-history`), so the estimate takes it as an input.
    "ec2_on_demand.m7i.large": Price(0.1008, "per instance-hour", EC2_ON_DEMAND, RECORDED, verify=True),
    "ec2_on_demand.m6i.large": Price(0.096, "per instance-hour", EC2_ON_DEMAND, RECORDED, verify=True),
    "ec2_on_demand.m6a.large": Price(0.0864, "per instance-hour", EC2_ON_DEMAND, RECORDED, verify=True),
    "ec2_on_demand.m5.large": Price(0.096, "per instance-hour", EC2_ON_DEMAND, RECORDED, verify=True),
    "ec2_on_demand.c7i.large": Price(0.08925, "per instance-hour", EC2_ON_DEMAND, RECORDED, verify=True),
    "ec2_on_demand.c6i.large": Price(0.085, "per instance-hour", EC2_ON_DEMAND, RECORDED, verify=True),
    # Spot: no list price. One dated reference figure for the first (most preferred) default type, so per-order
    # figures can be shown at a Spot price beside On-Demand; replace it with describe-spot-price-history's.
    "ec2_spot.m7i.large": Price(
        0.035,
        "per instance-hour",
        EC2_SPOT,
        RECORDED,
        verify=True,
        note="assumed (about 65% under On-Demand, the figure cost-estimate.py's example uses), not read off a price history",
    ),
    "ebs_gp3_storage": Price(
        0.08,
        "per GB-month",
        EBS,
        RECORDED,
        verify=True,
        note="3,000 IOPS and 125 MB/s are included; the root volume uses no more",
    ),
    # EC2 detailed monitoring is billed as custom metrics: 7 per instance (AWS's CloudWatch pricing example).
    "ec2_detailed_monitoring_metrics": Price(7, "custom metrics per instance", CLOUDWATCH, RECORDED, verify=True),
    # --- network
    "vpc_interface_endpoint_hour": Price(0.01, "per endpoint per AZ-hour", PRIVATELINK, RECORDED, verify=True),
    "vpc_interface_endpoint_gb": Price(0.01, "per GB processed (first PB a month)", PRIVATELINK, RECORDED, verify=True),
    "vpc_gateway_endpoint": Price(
        0.0, "S3 and DynamoDB gateway endpoints", PRIVATELINK, RECORDED, note="no hourly or data charge"
    ),
    "nat_gateway_hour": Price(0.045, "per NAT gateway-hour", VPC, RECORDED, verify=True),
    "nat_gateway_gb": Price(0.045, "per GB processed", VPC, RECORDED, verify=True),
    "public_ipv4_hour": Price(
        0.005,
        "per public IPv4 address-hour",
        VPC,
        "2024-02-01",
        verify=True,
        note="for comparison only: the workers have no public address",
    ),
    "cross_az_transfer_gb": Price(0.01, "per GB, each direction", EC2_ON_DEMAND, RECORDED, verify=True),
    # --- Route 53
    "route53_hosted_zone": Price(0.50, "per hosted zone-month (first 25)", ROUTE53, RECORDED, verify=True),
    "route53_health_check": Price(
        0.50,
        "per health check-month (basic, AWS endpoint)",
        ROUTE53,
        RECORDED,
        verify=True,
        note="a CLOUDWATCH_METRIC check is assumed to be billed as a basic one",
    ),
    # --- CloudWatch
    "cloudwatch_alarm_metric": Price(
        0.10,
        "per standard-resolution alarm metric-month",
        CLOUDWATCH,
        RECORDED,
        verify=True,
        note="a metric math alarm counts each metric it reads",
    ),
    "cloudwatch_custom_metric": Price(
        0.30, "per metric-month (first 10,000), prorated by the hour", CLOUDWATCH, RECORDED, verify=True
    ),
    "cloudwatch_dashboard": Price(
        3.00, "per dashboard-month (beyond an account's first 3)", CLOUDWATCH, RECORDED, verify=True
    ),
    "cloudwatch_logs_ingest_gb": Price(
        0.50,
        "per GB ingested (Standard log class)",
        CLOUDWATCH,
        RECORDED,
        verify=True,
        note="vended logs (VPC flow logs) start at the same $0.50",
    ),
    "cloudwatch_logs_storage_gb": Price(0.03, "per GB-month archived", CLOUDWATCH, RECORDED, verify=True),
    # --- KMS
    "kms_key": Price(
        1.00,
        "per customer managed key-month",
        KMS,
        RECORDED,
        verify=True,
        note="+$1/month for each of the first two automatic rotations (after 1 and 2 years)",
    ),
    "kms_requests_10k": Price(0.03, "per 10,000 symmetric requests", KMS, RECORDED, verify=True),
    # --- DynamoDB on-demand, after the price cut of 1 November 2024
    "dynamodb_write_unit": Price(0.625, "per million write request units", DYNAMODB, "2024-11-01"),
    "dynamodb_read_unit": Price(0.125, "per million read request units", DYNAMODB, "2024-11-01"),
    "dynamodb_storage_gb": Price(0.25, "per GB-month (Standard table class)", DYNAMODB, RECORDED, verify=True),
    "dynamodb_pitr_gb": Price(0.20, "per GB-month of continuous backups (PITR)", DYNAMODB, RECORDED, verify=True),
    # --- SQS
    "sqs_fifo_request": Price(
        0.50, "per million FIFO requests (each 64 KB chunk of a payload is one)", SQS, RECORDED, verify=True
    ),
}


def price(name: str) -> float:
    """The USD figure of one entry (KeyError names the missing entry)."""
    return PRICES[name].usd


def on_demand_hourly(instance_type: str) -> float | None:
    """The On-Demand Linux price per hour of an instance type, or None when it is not listed here."""
    p = PRICES.get(f"ec2_on_demand.{instance_type}")
    return p.usd if p else None


def spot_hourly(instance_type: str) -> float | None:
    """The reference Spot price per hour of an instance type (an assumption, see its entry), or None."""
    p = PRICES.get(f"ec2_spot.{instance_type}")
    return p.usd if p else None
