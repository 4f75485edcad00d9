"""The IAM gate: the evaluator against AWS's documented evaluation rules, the operation -> action map (AWS's
Service Authorization Reference), the policy checks made at start, the templates rendered for a stack, the
per-statement denials of a PartiQL batch, and the least-privilege figure. The evaluator runs for real
(@cloud-copilot/iam-simulate in Node, as scripts/bootstrap installs it)."""

from __future__ import annotations

import asyncio
import json

import pytest

from faultproxy import partiql
from faultproxy.http1 import Message
from iamgate import operations, usage
from iamgate.evaluator import Evaluator, PolicyError, check_policy
from iamgate.gate import Gate, StatementDenials
from iamgate.operations import Arns, Need, Request, UnknownOperation
from iamgate.stack import ACCOUNT_ID, Stack, TemplateError, render

ARNS = Arns("us-east-1", ACCOUNT_ID)
Q = f"arn:aws:sqs:us-east-1:{ACCOUNT_ID}:orders.fifo"
T = f"arn:aws:dynamodb:us-east-1:{ACCOUNT_ID}:table/orders"
ME = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/r/s"


def doc(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action, resource, **extra):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def run(coro):
    return asyncio.run(coro)


async def decide(identity, action, resource, context=None, resource_policy=None):
    ev = await Evaluator().start()
    try:
        r = await ev.decide(ME, action, resource, ACCOUNT_ID, context or {}, identity, resource_policy)
        return r["result"]
    finally:
        await ev.close()


# ---- AWS's evaluation rules -----------------------------------------------------------------------------------


def test_nothing_is_allowed_that_no_policy_allows():
    assert run(decide({}, "sqs:ReceiveMessage", Q)) == "ImplicitlyDenied"


def test_an_explicit_deny_wins_over_any_allow():
    identity = {"p": doc(allow("sqs:*", "*"), {"Effect": "Deny", "Action": "sqs:DeleteMessage", "Resource": Q})}
    assert run(decide(identity, "sqs:ReceiveMessage", Q)) == "Allowed"
    assert run(decide(identity, "sqs:DeleteMessage", Q)) == "ExplicitlyDenied"


def test_a_resource_policy_deny_applies_to_an_allowed_identity():
    identity = {"p": doc(allow("sqs:ReceiveMessage", Q))}
    tls = doc({"Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": Q,
               "Condition": {"Bool": {"aws:SecureTransport": "false"}}})  # fmt: skip
    assert run(decide(identity, "sqs:ReceiveMessage", Q, {"aws:SecureTransport": "true"}, tls)) == "Allowed"
    assert run(decide(identity, "sqs:ReceiveMessage", Q, {"aws:SecureTransport": "false"}, tls)) == "ExplicitlyDenied"


def test_wildcards_in_actions_and_arns():
    identity = {"p": doc(allow("dynamodb:Get*", f"arn:aws:dynamodb:us-east-1:{ACCOUNT_ID}:table/ord*"))}
    assert run(decide(identity, "dynamodb:GetItem", T)) == "Allowed"
    assert run(decide(identity, "dynamodb:PutItem", T)) == "ImplicitlyDenied"
    assert run(decide(identity, "dynamodb:GetItem", T.replace("orders", "other"))) == "ImplicitlyDenied"


def test_not_action_and_not_resource():
    identity = {"p": doc({"Effect": "Allow", "NotAction": "sqs:DeleteMessage", "Resource": Q},
                         {"Effect": "Deny", "Action": "dynamodb:*", "NotResource": T})}  # fmt: skip
    assert run(decide(identity, "sqs:ReceiveMessage", Q)) == "Allowed"
    assert run(decide(identity, "sqs:DeleteMessage", Q)) == "ImplicitlyDenied"
    assert run(decide({**identity, "q": doc(allow("dynamodb:*", "*"))}, "dynamodb:GetItem", T)) == "Allowed"
    other = T.replace("orders", "other")
    assert (
        run(decide({**identity, "q": doc(allow("dynamodb:*", "*"))}, "dynamodb:GetItem", other)) == "ExplicitlyDenied"
    )


def test_kms_through_a_service_only_with_the_key_policy_delegating_to_the_account():
    key = f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:key/k"
    identity = {
        "p": doc(
            allow("kms:Decrypt", key, Condition={"StringEquals": {"kms:ViaService": "sqs.us-east-1.amazonaws.com"}})
        )
    }
    root = doc(
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"}, "Action": "kms:*", "Resource": "*"}
    )
    via_sqs = {"kms:ViaService": "sqs.us-east-1.amazonaws.com"}
    assert run(decide(identity, "kms:Decrypt", key, via_sqs, root)) == "Allowed"
    assert (
        run(decide(identity, "kms:Decrypt", key, {"kms:ViaService": "s3.us-east-1.amazonaws.com"}, root)) != "Allowed"
    )
    assert run(decide(identity, "kms:Decrypt", key, via_sqs, doc())) != "Allowed", "the key policy must allow"


# ---- the checks at start ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "condition",
    [{"StringEqualz": {"aws:SourceAccount": "1"}}, {"StringEquals": {"aws:PrincipalTag/team": "x"}}],
    ids=["unknown-operator", "key-the-gate-does-not-supply"],
)
def test_a_condition_the_gate_cannot_honour_stops_it(condition):
    with pytest.raises(PolicyError):
        check_policy(doc(allow("sqs:*", "*", Condition=condition)), "p")


def test_known_operators_with_qualifiers_pass():
    check_policy(doc(allow("sqs:*", "*", Condition={"ForAnyValue:StringLikeIfExists": {"kms:ViaService": "x"}})), "p")
    check_policy(
        doc(allow("ec2:SendSpotInstanceInterruptions", "*", Condition={"Null": {"aws:ResourceTag/k": "false"}})), "p"
    )


def test_a_resource_tag_condition_only_where_the_region_supplies_the_tags():
    """Only spot-sim's FIS asks with resource tags: a tag condition on anything else would silently not apply."""
    with pytest.raises(PolicyError):
        check_policy(doc({"Effect": "Deny", "Action": "dynamodb:*", "Resource": "*",
                          "Condition": {"StringEquals": {"aws:ResourceTag/x": "y"}}}), "p")  # fmt: skip


def test_a_failure_of_the_gate_is_a_recorded_denial_not_a_pass():
    async def go():
        g = Gate(await Evaluator().start(), "strict")
        try:
            await g.add_stack(Stack(queue_name="o.fifo", orders_table="o", groups_table="g", keys={"K": "worker"}))
            h = {"authorization": "AWS4-HMAC-SHA256 Credential=K/20261206/us-east-1/dynamodb/aws4_request"}
            # A transaction item of a kind the map does not know: the gate fails, and says so as a denial.
            body = json.dumps({"TransactItems": [{"Frobnicate": {"TableName": "o"}}]}).encode()
            d = await g.authorize("dynamodb", "TransactWriteItems", "POST", "/", lambda n: h.get(n, ""), body)
            return d, g.status()["denials"]
        finally:
            await g.evaluator.close()

    d, denials = run(go())
    assert d is not None and "failed" in d.message
    assert denials and denials[0]["principal"] == "gate"


# ---- the operation map ---------------------------------------------------------------------------------------------


def req(body: dict, path="/"):
    return Request("POST", path, json.dumps(body).encode(), "application/x-amz-json-1.0")


def test_batch_operations_are_authorised_as_their_single_actions():
    url = {"QueueUrl": f"http://127.0.0.1:1/{ACCOUNT_ID}/orders.fifo"}
    for op, action in (("DeleteMessageBatch", "sqs:DeleteMessage"), ("ChangeMessageVisibilityBatch",
                       "sqs:ChangeMessageVisibility"), ("SendMessageBatch", "sqs:SendMessage")):  # fmt: skip
        assert operations.needs("sqs", op, req(url), ARNS) == [Need(action, Q)]


def test_partiql_is_authorised_per_statement_by_its_verb():
    stmts = [{"Statement": 'INSERT INTO "orders" VALUE {\'a\': ?}'}, {"Statement": 'SELECT * FROM "t"."by-x" WHERE a=?'},
             {"Statement": "UPDATE orders SET a=1 WHERE k='x'"}, {"Statement": 'DELETE FROM "orders" WHERE k=?'}]  # fmt: skip
    got = [n.action for n in operations.needs("dynamodb", "BatchExecuteStatement", req({"Statements": stmts}), ARNS)]
    assert got == [
        "dynamodb:PartiQLInsert",
        "dynamodb:PartiQLSelect",
        "dynamodb:PartiQLUpdate",
        "dynamodb:PartiQLDelete",
    ]
    sel = operations.partiql('SELECT * FROM "t"."by-x"', ARNS)
    assert sel.resource.endswith("table/t/index/by-x")


def test_a_transaction_is_authorised_per_item_by_its_own_action():
    items = [{"Put": {"TableName": "a"}}, {"Update": {"TableName": "b"}}, {"ConditionCheck": {"TableName": "a"}}]
    got = operations.needs("dynamodb", "TransactWriteItems", req({"TransactItems": items}), ARNS)
    assert [n.action for n in got] == ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"]


def test_an_unknown_operation_is_refused_not_let_through():
    with pytest.raises(UnknownOperation):
        operations.needs("dynamodb", "RestoreTableFromBackup", req({"TargetTableName": "x"}), ARNS)


def test_encrypted_resources_add_the_callers_kms_permissions():
    assert operations.kms_actions(Need("sqs:SendMessage", Q)) == ("kms:GenerateDataKey", "kms:Decrypt")
    assert operations.kms_actions(Need("sqs:DeleteMessage", Q)) == ()
    assert operations.kms_actions(Need("dynamodb:PartiQLInsert", T)) == ("kms:Decrypt",)
    assert operations.kms_actions(Need("dynamodb:DescribeTable", T)) == ()


# ---- templates and stacks ------------------------------------------------------------------------------------------


def test_a_template_needs_every_value_and_takes_lists_json_encoded():
    assert render('{"R": ${l}, "A": "x:${v}"}', {"l": '["a","b"]', "v": "1"}) == {"R": ["a", "b"], "A": "x:1"}
    with pytest.raises(TemplateError):
        render('{"A": "${missing}"}', {})
    with pytest.raises(TemplateError):
        render("%{ for x in y }{}%{ endfor }", {})


def test_the_deployed_policies_render_and_validate_for_a_stack():
    async def go():
        g = Gate(await Evaluator().start(), "strict")
        try:
            out = await g.add_stack(
                Stack(queue_name="o.fifo", orders_table="o", groups_table="g", keys={"K": "worker"})
            )
            return out, g.status()
        finally:
            await g.evaluator.close()

    out, status = run(go())
    assert set(out["principals"]) == {"worker", "producer", "operator", "deployer", "fis"}
    assert status["principals"]["fis"].endswith(":role/order-worker-prod-fis-us-east-1")


def test_the_worker_is_refused_what_its_policy_lacks_and_a_batch_per_statement():
    async def go():
        g = Gate(await Evaluator().start(), "strict")
        try:
            await g.add_stack(Stack(queue_name="o.fifo", orders_table="o", groups_table="g", keys={"K": "worker"}))
            h = {"authorization": "AWS4-HMAC-SHA256 Credential=K/20261206/us-east-1/dynamodb/aws4_request"}
            # The worker inserts records in "o" and claims (UPDATE, or INSERT a first row) in "g", never updates "o".
            stmts = [{"Statement": 'INSERT INTO "o" VALUE {}'}, {"Statement": 'UPDATE "o" SET a = ? WHERE k = ?'}]
            batch = await g.authorize("dynamodb", "BatchExecuteStatement", "POST", "/", lambda n: h.get(n, ""),
                                      json.dumps({"Statements": stmts}).encode())  # fmt: skip
            send = await g.authorize("sqs", "SendMessage", "POST", "/", lambda n: h.get(n, ""),
                                     json.dumps({"QueueUrl": "http://x/0/o.fifo"}).encode())  # fmt: skip
            unknown = await g.authorize("sqs", "SendMessage", "POST", "/", lambda n: "", b"{}")
            return batch, send, unknown
        finally:
            await g.evaluator.close()

    batch, send, unknown = run(go())
    assert isinstance(batch, StatementDenials)
    assert batch.verdicts[0] is None and batch.verdicts[1].action == "dynamodb:PartiQLUpdate"
    assert send.code == "AccessDenied" and send.action == "sqs:SendMessage"
    assert unknown.code == "MissingAuthenticationToken"


def test_a_partly_denied_batch_forwards_the_rest_and_answers_each_in_its_place():
    body = json.dumps({"Statements": [{"Statement": "a"}, {"Statement": "b"}, {"Statement": "c"}]}).encode()
    m = Message(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    m.raw_body = m.body = body

    class D:
        message = "no"

    verdicts = StatementDenials([None, D(), None])
    fwd = partiql.without_denied(m, verdicts)
    assert [s["Statement"] for s in json.loads(fwd.body)["Statements"]] == ["a", "c"]
    assert f"Content-Length: {len(fwd.body)}" in fwd.head.decode()
    up_body = json.dumps({"Responses": [{"Item": {"k": 1}}, {"Item": {"k": 3}}]}).encode()
    up = Message(b"HTTP/1.1 200 OK\r\nx-amz-crc32: 1\r\nContent-Length: %d\r\n\r\n" % len(up_body))
    up.raw_body = up.body = up_body
    up.status = 200
    out = json.loads(partiql.with_denied(up, verdicts).body)["Responses"]
    assert out[0] == {"Item": {"k": 1}} and out[1]["Error"]["Code"] == "AccessDenied" and out[2] == {"Item": {"k": 3}}
    assert partiql.without_denied(m, StatementDenials([D(), D(), D()])) is None


# ---- least privilege -------------------------------------------------------------------------------------------------


def test_an_unused_grant_is_reported_unless_explained(tmp_path):
    pol = {
        "worker": {
            "w": doc(allow(["sqs:ReceiveMessage", "sqs:DeleteMessage"], Q), allow("s3:GetObject", "arn:aws:s3:::b/k"))
        }
    }
    records = [
        {"stack": 0, "policies": pol, "planted": False},
        {"principal": "worker", "stack": 0, "action": "sqs:ReceiveMessage", "resource": Q},
        {"stack": 1, "policies": {"worker": {"w": doc(allow("sqs:*", "*"))}}, "planted": True},
        {"principal": "worker", "stack": 1, "action": "sqs:PurgeQueue", "resource": Q},
    ]
    (tmp_path / "iam-use-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    u = usage.load([tmp_path])
    _, unused, stale = usage.report(u, {"worker/1": "the instance fetches it at boot, from S3"})
    assert [g.action for g in unused] == ["sqs:DeleteMessage"], "the planted stack's grants are not counted"
    assert stale == []
    _, unused, stale = usage.report(u, {"worker/1": "x", "worker/0/sqs:ReceiveMessage": "stale"})
    assert stale == ["worker/0/sqs:ReceiveMessage"]


def test_key_grants_count_per_service_and_broad_grants_must_be_explained(tmp_path):
    key = f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:key/k"
    via = {"StringEquals": {"kms:ViaService": ["sqs.us-east-1.amazonaws.com", "dynamodb.us-east-1.amazonaws.com"]}}
    pol = {"producer": {"p": doc(allow("kms:GenerateDataKey", key, Condition=via), allow("sqs:SendMessage", Q),
                                  allow("sqs:SendMessage", Q), {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})}}  # fmt: skip
    records = [
        {"stack": 0, "policies": pol, "planted": False},
        {"principal": "producer", "stack": 0, "action": "kms:GenerateDataKey", "resource": key,
         "context": {"kms:ViaService": "sqs.us-east-1.amazonaws.com"}},
        {"principal": "producer", "stack": 0, "action": "sqs:SendMessage", "resource": Q, "context": {}},
    ]  # fmt: skip
    (tmp_path / "iam-use-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _, unused, _ = usage.report(usage.load([tmp_path]), {})
    got = sorted((g.sid, g.action, g.via) for g in unused)
    # The key through a service nothing used, the statement that only repeats another, the broad one.
    assert got == [("0", "kms:GenerateDataKey", "dynamodb.us-east-1.amazonaws.com"), ("2", "sqs:SendMessage", ""),
                   ("3", "NotAction", "")], got  # fmt: skip
