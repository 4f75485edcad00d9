"""faultproxy.aws: a request's service and operation, and each service's error answer as the SDKs read it."""

import json
import xml.etree.ElementTree as ET
import zlib

import pytest

from faultproxy.aws import error_response, identify, tables
from faultproxy.http1 import Message
from faultproxy.rules import Rule


def request(start: str, headers: dict, body: bytes = b"") -> Message:
    head = "\r\n".join([start, *(f"{k}: {v}" for k, v in headers.items())]) + "\r\n\r\n"
    m = Message(head.encode("latin-1"))
    m.raw_body = m.body = body
    return m


def sigv4(service: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential=test/20261201/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
    )


def test_the_credential_scope_names_the_service_and_the_target_the_operation():
    m = request("POST / HTTP/1.1", {"Authorization": sigv4("sqs"), "X-Amz-Target": "AmazonSQS.ReceiveMessage"})
    assert identify(m) == ("sqs", "ReceiveMessage")


def test_without_a_signature_the_target_prefix_names_the_service():
    m = request("POST / HTTP/1.1", {"X-Amz-Target": "DynamoDB_20120810.UpdateItem"})
    assert identify(m) == ("dynamodb", "UpdateItem")


def test_the_query_protocol_names_both_in_its_form():
    body = b"Action=CompleteLifecycleAction&Version=2011-01-01&LifecycleHookName=drain"
    m = request("POST / HTTP/1.1", {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body)
    assert identify(m) == ("autoscaling", "CompleteLifecycleAction")
    assert identify(request("GET /?Action=ListQueues&Version=2012-11-05 HTTP/1.1", {})) == ("sqs", "ListQueues")


def test_the_tables_a_dynamodb_request_names_are_read_as_the_gate_reads_them():
    def ddb(op: str, body: dict) -> Message:
        headers = {"X-Amz-Target": f"DynamoDB_20120810.{op}", "Content-Type": "application/x-amz-json-1.0"}
        return request("POST / HTTP/1.1", headers, json.dumps(body).encode())

    stmts = [{"Statement": 'UPDATE "groups" SET a = ? WHERE k = ?'}, {"Statement": 'INSERT INTO "orders" VALUE {}'}]
    assert tables("dynamodb", "BatchExecuteStatement", ddb("BatchExecuteStatement", {"Statements": stmts})) == {
        "groups",
        "orders",
    }
    assert tables("dynamodb", "UpdateItem", ddb("UpdateItem", {"TableName": "groups"})) == {"groups"}
    assert tables("dynamodb", "BatchGetItem", ddb("BatchGetItem", {"RequestItems": {"orders": {}}})) == {"orders"}
    assert tables("dynamodb", "UpdateItem", ddb("UpdateItem", {})) == frozenset()  # unreadable: names nothing
    assert tables("sqs", "ReceiveMessage", request("POST / HTTP/1.1", {})) == frozenset()


def test_an_unknown_request_is_unknown():
    assert identify(request("GET /health HTTP/1.1", {})) == ("unknown", "unknown")


def split(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return int(lines[0].split(" ")[1]), headers, body


def error(keep_alive=True, **req) -> tuple[int, dict, bytes]:
    return split(error_response(Rule(1, {"action": "error", **req}), keep_alive))


def test_sqs_sends_the_query_code_in_its_header():
    status, h, body = error(service="sqs", code="QueueDoesNotExist")
    assert status == 400
    assert h["x-amzn-query-error"] == "AWS.SimpleQueueService.NonExistentQueue;Sender"
    assert json.loads(body)["__type"] == "com.amazonaws.sqs#QueueDoesNotExist"
    assert "Connection" not in h


def test_a_server_fault_is_the_receivers_and_a_status_overrides_the_default():
    status, h, _ = error(service="sqs", code="ServiceUnavailable")
    assert (status, h["x-amzn-query-error"]) == (503, "ServiceUnavailable;Receiver")
    status, h, _ = error(service="sqs", code="AccessDenied", status=500)
    assert (status, h["x-amzn-query-error"]) == (500, "AccessDenied;Receiver")


def test_dynamodb_sends_the_coral_type_and_the_bodys_crc32():
    status, h, body = error(service="dynamodb", code="ThrottlingException")
    assert status == 400
    assert json.loads(body)["__type"] == "com.amazon.coral.availability#ThrottlingException"
    assert h["x-amz-crc32"] == str(zlib.crc32(body))


@pytest.mark.parametrize("service", ["sqs", "dynamodb"])
def test_an_unknown_code_keeps_its_services_shape_and_the_rules_message_and_type(service):
    status, _, body = error(service=service, code="Odd", message="m", type="t#Odd")
    assert status == 400
    assert json.loads(body) == {"__type": "t#Odd", "message": "m"}


def test_auto_scaling_answers_in_xml_and_closes_when_asked():
    status, h, body = error(keep_alive=False, service="autoscaling", code="ResourceContention")
    assert (status, h["Content-Type"], h["Connection"]) == (500, "text/xml", "close")
    ns = {"a": "http://autoscaling.amazonaws.com/doc/2011-01-01/"}
    e = ET.fromstring(body).find("a:Error", ns)
    assert [e.find(f"a:{k}", ns).text for k in ("Type", "Code")] == ["Receiver", "ResourceContention"]
