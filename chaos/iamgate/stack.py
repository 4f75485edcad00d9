"""One deployed stack's principals and policies, rendered from terraform/policies/*.json.tftpl with the local
region's names and ARNs: the same documents Terraform attaches (its `templatefile()` renders the same files), so
the local region enforces what an account would.

A template is JSON with `${name}` placeholders (Terraform's template syntax, interpolation only: a directive
`%{...}` is refused). A value is put in as it is; a list goes in already JSON-encoded (Terraform passes
`jsonencode([...])`), so `"Resource": ${artifact_object_arns}` renders alike on both sides."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# LOCAL_IAM_POLICY_DIR: render from another copy of the templates (the planted-defect tests use it).
DEPLOYED_POLICY_DIR = REPO / "terraform" / "policies"
POLICY_DIR = Path(os.environ.get("LOCAL_IAM_POLICY_DIR") or DEPLOYED_POLICY_DIR)

# The account the local region pretends to be: the emulators' own (ministack's queue ARNs carry it).
ACCOUNT_ID = "000000000000"
PARTITION = "aws"
# The data key's id in the local account (the key itself is not emulated: its policy is).
KMS_KEY_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


class TemplateError(ValueError):
    pass


def render(text: str, values: dict[str, str], name: str = "template") -> dict:
    """The JSON document of a template with `values` put in; every placeholder must have a value."""
    if "%{" in text:
        raise TemplateError(f"{name}: template directives (%{{...}}) are not supported; use values only")

    def put(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise TemplateError(f"{name}: no value for ${{{key}}}")
        return str(values[key])

    out = PLACEHOLDER.sub(put, text)
    try:
        return json.loads(out)
    except json.JSONDecodeError as e:
        raise TemplateError(f"{name}: not JSON once rendered: {e}") from e


def template(name: str, values: dict[str, str], policy_dir: Path | None = None) -> dict:
    path = (policy_dir or POLICY_DIR) / f"{name}.json.tftpl"
    return render(path.read_text(), values, str(path))


@dataclass
class Principal:
    """A caller: the ARN AWS would see, and the identity policies attached to it (name -> document)."""

    name: str  # worker, producer, operator, deployer, fis
    arn: str
    policies: dict[str, dict]


@dataclass
class Stack:
    """One stack's names, as Terraform names them, and what the gate needs of it."""

    queue_name: str
    orders_table: str
    groups_table: str
    dlq_name: str | None = None
    asg_name: str = "order-workers"
    environment: str = "prod"
    region: str = "us-east-1"
    # access key id -> principal name (worker, producer, operator, deployer)
    keys: dict[str, str] = field(default_factory=dict)
    policy_dir: Path | None = None

    @classmethod
    def from_json(cls, d: dict) -> Stack:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown stack fields {sorted(unknown)} (known: {sorted(known)})")
        d = dict(d)
        if d.get("policy_dir"):
            d["policy_dir"] = Path(d["policy_dir"])
        return cls(**d)

    def planted(self) -> bool:
        """Rendered from a copy other than terraform/policies/ (a test's planted defect): its use proves nothing
        about the deployed policies."""
        return (self.policy_dir or POLICY_DIR).resolve() != DEPLOYED_POLICY_DIR.resolve()

    # ---- ARNs, as terraform/ builds them ---------------------------------------------------------------------

    def arn(self, service: str, resource: str, region: bool = True) -> str:
        return f"arn:{PARTITION}:{service}:{self.region if region else ''}:{ACCOUNT_ID}:{resource}"

    @property
    def queue_arn(self) -> str:
        return self.arn("sqs", self.queue_name)

    @property
    def dlq_arn(self) -> str | None:
        return self.arn("sqs", self.dlq_name) if self.dlq_name else None

    def table_arn(self, table: str) -> str:
        return self.arn("dynamodb", f"table/{table}")

    @property
    def kms_key_arn(self) -> str:
        return self.arn("kms", f"key/{KMS_KEY_ID}")

    @property
    def asg_arn(self) -> str:
        # terraform/main.tf builds it by hand with a wildcard for the group's id; a request names the real one.
        return self.arn("autoscaling", f"autoScalingGroup:*:autoScalingGroupName/{self.asg_name}")

    @property
    def worker_role(self) -> str:
        return f"order-worker-{self.environment}-{self.region}"

    @property
    def fis_role_arn(self) -> str:
        return f"arn:{PARTITION}:iam::{ACCOUNT_ID}:role/order-worker-{self.environment}-fis-{self.region}"

    def session(self, role: str, session: str) -> str:
        return f"arn:{PARTITION}:sts::{ACCOUNT_ID}:assumed-role/{role}/{session}"

    # ---- the rendered documents ------------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        """Every template's values (terraform/iam.tf, fis.tf, queue.tf, kms.tf pass the same names)."""
        bucket = f"{ACCOUNT_ID}-order-worker-artifacts-{self.region}"
        return {
            "partition": PARTITION,
            "region": self.region,
            "account_id": ACCOUNT_ID,
            "asg_name": self.asg_name,
            "asg_arn": self.asg_arn,
            "queue_arn": self.queue_arn,
            "orders_table_arn": self.table_arn(self.orders_table),
            "groups_table_arn": self.table_arn(self.groups_table),
            "kms_key_arn": self.kms_key_arn,
            "log_group_arn": self.arn("logs", f"log-group:/order-worker/{self.environment}/worker"),
            "artifact_object_arns": json.dumps(
                [
                    f"arn:{PARTITION}:s3:::{bucket}/releases/order-worker",
                    f"arn:{PARTITION}:s3:::{bucket}/releases/ansible.tar.gz",
                ]
            ),
            "fis_role_arn": self.fis_role_arn,
            "watched_queue_arns": json.dumps([self.queue_arn, *([self.dlq_arn] if self.dlq_arn else [])]),
        }

    def principals(self) -> list[Principal]:
        v = self.values()
        t = lambda name: template(name, v, self.policy_dir)  # noqa: E731
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        return [
            Principal("worker", self.session(self.worker_role, "worker"), {"order-worker": t("worker")}),
            Principal("producer", self.session("order-producer", "producer"), {"order-producer": t("producer")}),
            Principal("operator", self.session("order-operator", "operator"), {"order-operator": t("operator")}),
            # Whoever applies Terraform: the stand-in for the deploying administrator, local only (it creates the
            # queue and tables the way `terraform apply` does; no policy of ours scopes it).
            Principal("deployer", self.session("order-deployer", "deployer"), {"AdministratorAccess": everything}),
            Principal("fis", self.fis_role_arn, {"spot-interruptions": t("fis")}),
        ]

    def resource_policies(self) -> dict[str, dict]:
        """Resource ARN -> its resource-based policy: the queues' policies and the key policy."""
        v = self.values()
        out = {self.queue_arn: template("queue", {**v, "queue_arn": self.queue_arn}, self.policy_dir)}
        if self.dlq_arn:
            out[self.dlq_arn] = template("queue", {**v, "queue_arn": self.dlq_arn}, self.policy_dir)
        out[self.kms_key_arn] = template("kms-key", v, self.policy_dir)
        return out

    def encrypted(self) -> dict[str, str]:
        """Resource ARN -> the KMS key it is encrypted with (terraform/queue.tf and tables.tf: the stack key)."""
        arns = [self.queue_arn, self.table_arn(self.orders_table), self.table_arn(self.groups_table)]
        if self.dlq_arn:
            arns.append(self.dlq_arn)
        return {a: self.kms_key_arn for a in arns}
