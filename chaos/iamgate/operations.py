"""What AWS authorises for a request: the IAM actions, the resources they are checked on, and the condition
context, for every operation the local region serves.

Source: AWS's Service Authorization Reference ("Actions, resources, and condition keys for Amazon SQS", "... for
Amazon DynamoDB", "... for Amazon EC2 Auto Scaling", "... for AWS Fault Injection Service"), and the services'
developer guides where the reference is silent:
- SQS batch operations are authorised as their single actions: SendMessageBatch as sqs:SendMessage,
  DeleteMessageBatch as sqs:DeleteMessage, ChangeMessageVisibilityBatch as sqs:ChangeMessageVisibility.
- DynamoDB PartiQL is authorised per statement by its verb (dynamodb:PartiQLSelect / PartiQLInsert /
  PartiQLUpdate / PartiQLDelete), for ExecuteStatement, BatchExecuteStatement and ExecuteTransaction alike
  (DynamoDB developer guide, "IAM security policies with PartiQL for DynamoDB"); TransactWriteItems is
  authorised per item by the item's own action (PutItem, UpdateItem, DeleteItem, ConditionCheckItem) and
  TransactGetItems per item as GetItem; BatchGetItem / BatchWriteItem per table.
- Describe* and List* calls of Auto Scaling and FIS take no resource-level permissions: resource "*".
- FIS CreateExperimentTemplate also needs iam:PassRole on the template's role (passed to fis.amazonaws.com).
- A call on an SQS queue or DynamoDB table encrypted with a customer managed key also needs the caller's KMS
  permission through the service (SQS developer guide, "Key management"): receiving kms:Decrypt; sending
  kms:GenerateDataKey and kms:Decrypt; reading or writing items kms:Decrypt. Those are added by the gate from
  `kms_actions` for the resources its stacks encrypt.

An operation missing here is refused by the gate, naming it: an unknown request is never let through."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class Need:
    """One authorisation AWS makes for a request: `action` on `resource`, with these request context keys."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = field(default=())


class UnknownOperation(LookupError):
    """An operation the gate cannot say what AWS authorises for: refused, never let through."""


@dataclass
class Request:
    """What the gate reads of a request: method, path (with query), body, and parsed parameters."""

    method: str
    path: str
    body: bytes
    content_type: str = ""
    _params: dict | None = None
    _json: dict | None = None

    def json(self) -> dict:
        if self._json is None:
            try:
                v = json.loads(self.body or b"{}")
            except ValueError:
                v = {}
            self._json = v if isinstance(v, dict) else {}
        return self._json

    def params(self) -> dict[str, str]:
        """Query-protocol parameters (URL query and form body), first value of each."""
        if self._params is None:
            p = parse_qs(urlsplit(self.path).query)
            if "x-www-form-urlencoded" in self.content_type and self.body:
                p.update(parse_qs(self.body.decode("utf-8", "replace")))
            self._params = {k: v[0] for k, v in p.items()}
        return self._params

    def param(self, name: str) -> str | None:
        """A parameter from the JSON body, else from the query parameters."""
        v = self.json().get(name)
        return v if isinstance(v, str) else self.params().get(name)


class Arns:
    """The ARNs of one region and account."""

    def __init__(self, region: str, account: str, partition: str = "aws"):
        self.region, self.account, self.partition = region, account, partition

    def __call__(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account}:{resource}"

    def queue(self, url_or_name: str) -> str:
        name = urlsplit(url_or_name).path.rstrip("/").rsplit("/", 1)[-1] if "/" in url_or_name else url_or_name
        return self("sqs", name)

    def table(self, name: str, index: str | None = None) -> str:
        if name.startswith("arn:"):
            return name
        return self("dynamodb", f"table/{name}" + (f"/index/{index}" if index else ""))

    def group(self, name: str) -> str:
        return self("autoscaling", f"autoScalingGroup:00000000-0000-4000-8000-000000000000:autoScalingGroupName/{name}")


# ---- SQS ---------------------------------------------------------------------------------------------------------

# operation -> the action it is authorised as (None: no resource-level permission, resource "*")
SQS = {
    "SendMessage": "sqs:SendMessage",
    "SendMessageBatch": "sqs:SendMessage",
    "ReceiveMessage": "sqs:ReceiveMessage",
    "DeleteMessage": "sqs:DeleteMessage",
    "DeleteMessageBatch": "sqs:DeleteMessage",
    "ChangeMessageVisibility": "sqs:ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "GetQueueAttributes": "sqs:GetQueueAttributes",
    "SetQueueAttributes": "sqs:SetQueueAttributes",
    "GetQueueUrl": "sqs:GetQueueUrl",
    "CreateQueue": "sqs:CreateQueue",
    "DeleteQueue": "sqs:DeleteQueue",
    "PurgeQueue": "sqs:PurgeQueue",
    "TagQueue": "sqs:TagQueue",
    "UntagQueue": "sqs:UntagQueue",
    "ListQueueTags": "sqs:ListQueueTags",
    "ListDeadLetterSourceQueues": "sqs:ListDeadLetterSourceQueues",
    "StartMessageMoveTask": "sqs:StartMessageMoveTask",
    "CancelMessageMoveTask": "sqs:CancelMessageMoveTask",
    "ListMessageMoveTasks": "sqs:ListMessageMoveTasks",
    "ListQueues": "sqs:ListQueues",
}
# What an encrypted queue asks of the caller's KMS permissions, per action (SQS developer guide, key management).
SQS_KMS = {
    "sqs:ReceiveMessage": ("kms:Decrypt",),
    "sqs:SendMessage": ("kms:GenerateDataKey", "kms:Decrypt"),
}


def sqs(op: str, req: Request, arns: Arns) -> list[Need]:
    action = SQS.get(op)
    if action is None:
        raise UnknownOperation(f"sqs:{op}")
    if op == "ListQueues":
        return [Need(action, "*")]
    if op in ("CreateQueue", "GetQueueUrl"):
        name = req.param("QueueName")
        if not name:
            raise UnknownOperation(f"sqs:{op} without QueueName")
        return [Need(action, arns.queue(name))]
    if op in ("StartMessageMoveTask", "ListMessageMoveTasks"):
        return [Need(action, req.param("SourceArn") or "*")]
    if op == "CancelMessageMoveTask":
        return [Need(action, "*")]
    url = req.param("QueueUrl")
    if not url:
        # The query protocol may carry the queue in the path: /<account>/<name>
        path = urlsplit(req.path).path.strip("/")
        url = path if path.count("/") == 1 else None
    if not url:
        raise UnknownOperation(f"sqs:{op} without QueueUrl")
    return [Need(action, arns.queue(url))]


# ---- DynamoDB ----------------------------------------------------------------------------------------------------

DDB_BY_TABLE = {
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "DescribeTable", "CreateTable",
    "DeleteTable", "UpdateTable", "DescribeTimeToLive", "UpdateTimeToLive", "DescribeContinuousBackups",
    "UpdateContinuousBackups",
}  # fmt: skip
DDB_TRANSACT = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
PARTIQL_VERB = {
    "SELECT": "PartiQLSelect",
    "INSERT": "PartiQLInsert",
    "UPDATE": "PartiQLUpdate",
    "DELETE": "PartiQLDelete",
}
# The table of a statement: INSERT INTO "t", UPDATE "t", DELETE FROM "t", SELECT ... FROM "t"[."index"]
_PARTIQL_TABLE = {
    "INSERT": re.compile(r'^\s*INSERT\s+INTO\s+("(?:[^"]|"")+"|[\w.-]+)', re.I),
    "UPDATE": re.compile(r'^\s*UPDATE\s+("(?:[^"]|"")+"|[\w.-]+)', re.I),
    "DELETE": re.compile(r'^\s*DELETE\s+FROM\s+("(?:[^"]|"")+"|[\w.-]+)', re.I),
    "SELECT": re.compile(r'\bFROM\s+("(?:[^"]|"")+"|[\w.-]+)(?:\s*\.\s*("(?:[^"]|"")+"|[\w.-]+))?', re.I),
}
DDB_KMS = ("kms:Decrypt",)  # reading or writing items of a table under a customer managed key
DDB_DATA = {
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "BatchWriteItem",
    "ConditionCheckItem", "PartiQLSelect", "PartiQLInsert", "PartiQLUpdate", "PartiQLDelete",
}  # fmt: skip


def _ident(s: str) -> str:
    return s[1:-1].replace('""', '"') if s.startswith('"') else s


def partiql(statement: str, arns: Arns) -> Need:
    """The action and table of one PartiQL statement, by its verb."""
    verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
    action = PARTIQL_VERB.get(verb)
    m = _PARTIQL_TABLE[verb].search(statement) if action else None
    if not m:
        raise UnknownOperation(f"a PartiQL statement the gate cannot read: {statement[:80]!r}")
    index = _ident(m.group(2)) if verb == "SELECT" and m.group(2) else None
    return Need(f"dynamodb:{action}", arns.table(_ident(m.group(1)), index))


def dynamodb(op: str, req: Request, arns: Arns) -> list[Need]:
    body = req.json()
    if op in DDB_BY_TABLE:
        table = body.get("TableName")
        if not isinstance(table, str):
            raise UnknownOperation(f"dynamodb:{op} without TableName")
        index = body.get("IndexName") if op in ("Query", "Scan") else None
        return [Need(f"dynamodb:{op}", arns.table(table, index))]
    if op == "ListTables":
        return [Need("dynamodb:ListTables", "*")]
    if op in ("BatchGetItem", "BatchWriteItem"):
        return [Need(f"dynamodb:{op}", arns.table(t)) for t in (body.get("RequestItems") or {})]
    if op == "TransactWriteItems":
        out = []
        for item in body.get("TransactItems") or []:
            for kind, part in item.items():
                out.append(Need(f"dynamodb:{DDB_TRANSACT[kind]}", arns.table(part["TableName"])))
        return out
    if op == "TransactGetItems":
        return [Need("dynamodb:GetItem", arns.table(i["Get"]["TableName"])) for i in body.get("TransactItems") or []]
    if op == "ExecuteStatement":
        return [partiql(body.get("Statement", ""), arns)]
    if op == "BatchExecuteStatement":
        return [partiql(s.get("Statement", ""), arns) for s in body.get("Statements") or []]
    if op == "ExecuteTransaction":
        return [partiql(s.get("Statement", ""), arns) for s in body.get("TransactStatements") or []]
    if op in ("TagResource", "UntagResource", "ListTagsOfResource"):
        return [Need(f"dynamodb:{op}", body.get("ResourceArn") or "*")]
    raise UnknownOperation(f"dynamodb:{op}")


# ---- Auto Scaling ------------------------------------------------------------------------------------------------

ASG_BY_GROUP = {
    "CompleteLifecycleAction", "RecordLifecycleActionHeartbeat", "SetDesiredCapacity", "UpdateAutoScalingGroup",
    "PutLifecycleHook", "DeleteLifecycleHook", "StartInstanceRefresh", "CancelInstanceRefresh", "EnterStandby",
    "ExitStandby", "DetachInstances", "AttachInstances", "SuspendProcesses", "ResumeProcesses",
    "PutScalingPolicy", "CreateAutoScalingGroup", "DeleteAutoScalingGroup", "RollbackInstanceRefresh",
}  # fmt: skip
# Instance-addressed calls: authorised on the instance's group (the local region has one group name per stack).
ASG_BY_INSTANCE = {"TerminateInstanceInAutoScalingGroup", "SetInstanceHealth"}


def autoscaling(op: str, req: Request, arns: Arns, group_of_instance: str | None = None) -> list[Need]:
    if op.startswith("Describe"):
        return [Need(f"autoscaling:{op}", "*")]
    if op in ASG_BY_GROUP:
        name = req.param("AutoScalingGroupName")
        if not name:
            raise UnknownOperation(f"autoscaling:{op} without AutoScalingGroupName")
        return [Need(f"autoscaling:{op}", arns.group(name))]
    if op in ASG_BY_INSTANCE:
        return [Need(f"autoscaling:{op}", arns.group(group_of_instance) if group_of_instance else "*")]
    raise UnknownOperation(f"autoscaling:{op}")


# ---- FIS (REST-JSON: the operation is the method and path) --------------------------------------------------------

_FIS_ROUTES = [
    ("POST", re.compile(r"^/experimentTemplates/?$"), "CreateExperimentTemplate"),
    ("GET", re.compile(r"^/experimentTemplates/?$"), "ListExperimentTemplates"),
    ("GET", re.compile(r"^/experimentTemplates/([^/]+)$"), "GetExperimentTemplate"),
    ("PATCH", re.compile(r"^/experimentTemplates/([^/]+)$"), "UpdateExperimentTemplate"),
    ("DELETE", re.compile(r"^/experimentTemplates/([^/]+)$"), "DeleteExperimentTemplate"),
    ("POST", re.compile(r"^/experiments/?$"), "StartExperiment"),
    ("GET", re.compile(r"^/experiments/?$"), "ListExperiments"),
    ("GET", re.compile(r"^/experiments/([^/]+)$"), "GetExperiment"),
    ("GET", re.compile(r"^/experiments/([^/]+)/resolvedTargets$"), "ListExperimentResolvedTargets"),
    ("DELETE", re.compile(r"^/experiments/([^/]+)$"), "StopExperiment"),
]


def fis_operation(method: str, path: str) -> tuple[str, str | None]:
    """(operation, the id in the path) of a FIS request; ("unknown", None) for anything else."""
    p = unquote(urlsplit(path).path)
    for m, rx, op in _FIS_ROUTES:
        hit = rx.match(p) if m == method else None
        if hit:
            return op, (hit.group(1) if hit.groups() else None)
    return "unknown", None


def fis(op: str, req: Request, arns: Arns) -> list[Need]:
    _, ident = fis_operation(req.method, req.path)
    body = req.json()
    tags = [Need("fis:TagResource", arns("fis", "experiment-template/*"))] if body.get("tags") else []
    if op == "CreateExperimentTemplate":
        role = body.get("roleArn") or "*"
        actions = [
            Need("fis:CreateExperimentTemplate", arns("fis", f"action/{a.get('actionId')}"))
            for a in (body.get("actions") or {}).values()
            if isinstance(a, dict)
        ]
        return [
            Need("fis:CreateExperimentTemplate", arns("fis", "experiment-template/*")),
            *actions,
            Need("iam:PassRole", role, (("iam:PassedToService", "fis.amazonaws.com"),)),
            *tags,
        ]
    if op in ("ListExperimentTemplates", "ListExperiments"):
        return [Need(f"fis:{op}", "*")]
    if op in ("GetExperimentTemplate", "UpdateExperimentTemplate", "DeleteExperimentTemplate"):
        return [Need(f"fis:{op}", arns("fis", f"experiment-template/{ident}"))]
    if op == "StartExperiment":
        template = body.get("experimentTemplateId") or "*"
        return [
            Need("fis:StartExperiment", arns("fis", f"experiment-template/{template}")),
            Need("fis:StartExperiment", arns("fis", "experiment/*")),
            *([Need("fis:TagResource", arns("fis", "experiment/*"))] if body.get("tags") else []),
        ]
    if op in ("GetExperiment", "StopExperiment", "ListExperimentResolvedTargets"):
        return [Need(f"fis:{op}", arns("fis", f"experiment/{ident}"))]
    raise UnknownOperation(f"fis:{op}")


def needs(service: str, op: str, req: Request, arns: Arns, group_of_instance: str | None = None) -> list[Need]:
    """Every authorisation AWS makes for this request (before the KMS ones the gate adds)."""
    if service == "sqs":
        return sqs(op, req, arns)
    if service == "dynamodb":
        return dynamodb(op, req, arns)
    if service == "autoscaling":
        return autoscaling(op, req, arns, group_of_instance)
    if service == "fis":
        return fis(op, req, arns)
    raise UnknownOperation(f"{service}:{op}")


def kms_actions(need: Need) -> tuple[str, ...]:
    """The KMS actions the caller needs besides `need` when its resource is encrypted with a customer key."""
    service, _, action = need.action.partition(":")
    if service == "sqs":
        return SQS_KMS.get(need.action, ())
    if service == "dynamodb" and action in DDB_DATA:
        return DDB_KMS
    return ()
