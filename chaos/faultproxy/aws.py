"""What AWS requests and errors look like on the wire, as far as the fault proxy needs: which service and
operation a request is (identify), and the answer each service gives for an error code (error_response), in
that service's own protocol, so that the SDK under test classifies it exactly as it would a real one."""

from __future__ import annotations

import email.utils
import http
import json
import re
import uuid
import zlib
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape as xml_escape

from iamgate import operations
from iamgate.operations import fis_operation

if TYPE_CHECKING:  # for the annotations only: this module needs neither at run time
    from .http1 import Message
    from .rules import Rule

CRED_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/([^/,\s]+)/aws4_request")
TARGET_PREFIX = {"AmazonSQS": "sqs", "DynamoDB_20120810": "dynamodb"}
QUERY_VERSION = {"2011-01-01": "autoscaling", "2012-11-05": "sqs"}


def identify(req: Message) -> tuple[str, str]:
    """(service, operation) of an AWS request."""
    service: str | None = None
    operation: str | None = None
    scope = CRED_SCOPE.search(req.get("authorization"))
    if scope:
        service = scope.group(1)
    target = req.get("x-amz-target")
    if service == "fis":  # REST-JSON: the operation is the method and the path
        return service, fis_operation(req.start.split(" ")[0], req.start.split(" ")[1])[0]
    if target:
        prefix, _, operation = target.rpartition(".")
        service = service or TARGET_PREFIX.get(prefix, prefix.lower() or None)
    else:
        path = req.start.split(" ")[1]
        params = parse_qs(urlsplit(path).query)
        if "x-www-form-urlencoded" in req.get("content-type") and req.body:
            params.update(parse_qs(req.body.decode("utf-8", "replace")))
        if params.get("Action"):
            operation = params["Action"][0]
        if not service and params.get("Version"):
            service = QUERY_VERSION.get(params["Version"][0])
    return service or "unknown", operation or "unknown"


# Only the table part of the ARNs the gate's reading of a request gives is used here.
_ANY_REGION = operations.Arns("-", "-")


def tables(service: str, operation: str, req: Message) -> frozenset[str]:
    """The DynamoDB tables a request names (TableName, RequestItems, a transaction's items, each PartiQL
    statement's table), read as the IAM gate reads them; empty for other services or what cannot be read."""
    if service != "dynamodb":
        return frozenset()
    method, target = req.start.split(" ")[:2]
    r = operations.Request(method, target, req.body or b"", req.get("content-type"))
    try:
        needs = operations.needs(service, operation, r, _ANY_REGION)
    except operations.UnknownOperation:
        return frozenset()
    return frozenset(n.resource.split(":table/", 1)[1].split("/")[0] for n in needs if ":table/" in n.resource)


# The error shapes, per service: code -> (HTTP status, what the wire carries, default message).
# SQS speaks the JSON protocol but is "query compatible": besides `__type` it sends `x-amzn-query-error:
# <query code>;<Sender|Receiver>`, and the Rust SDK takes the code from that header when present
# (aws-sdk-sqs protocol_serde::parse_http_error_metadata), so `.code()` is the query code, e.g.
# "AWS.SimpleQueueService.NonExistentQueue" for QueueDoesNotExist, exactly as against real SQS.
SQS_ERRORS = {
    "AccessDenied": (
        400,
        "com.amazon.coral.service#AccessDeniedException",
        "AccessDenied",
        "Access to the resource is denied.",
    ),
    "RequestThrottled": (400, "com.amazonaws.sqs#RequestThrottled", "RequestThrottled", "Rate exceeded"),
    "ThrottlingException": (
        400,
        "com.amazon.coral.availability#ThrottlingException",
        "ThrottlingException",
        "Rate exceeded",
    ),
    "InternalFailure": (
        500,
        "com.amazon.coral.service#InternalFailure",
        "InternalFailure",
        "The request processing has failed because of an unknown error, exception or failure.",
    ),
    "ServiceUnavailable": (
        503,
        "com.amazon.coral.availability#ServiceUnavailableException",
        "ServiceUnavailable",
        "The request has failed due to a temporary failure of the server.",
    ),
    "QueueDoesNotExist": (
        400,
        "com.amazonaws.sqs#QueueDoesNotExist",
        "AWS.SimpleQueueService.NonExistentQueue",
        "The specified queue does not exist.",
    ),
    "InvalidAddress": (404, "com.amazonaws.sqs#InvalidAddress", "InvalidAddress", "The specified ID is invalid."),
    "OverLimit": (403, "com.amazonaws.sqs#OverLimit", "OverLimit", "The specified action violates a limit."),
    # The caller may not use the queue's KMS key (ReceiveMessage / SendMessage on an SSE-KMS queue).
    "KmsAccessDenied": (
        400,
        "com.amazonaws.sqs#KmsAccessDenied",
        "KMS.AccessDeniedException",
        "The caller doesn't have the required KMS access.",
    ),
    "InvalidClientTokenId": (
        403,
        "com.amazon.coral.service#InvalidClientTokenIdException",
        "InvalidClientTokenId",
        "The security token included in the request is invalid.",
    ),
    "MissingAuthenticationToken": (
        403,
        "com.amazon.coral.service#MissingAuthenticationTokenException",
        "MissingAuthenticationToken",
        "Request is missing Authentication Token",
    ),
}
SQS_ERRORS["AWS.SimpleQueueService.NonExistentQueue"] = SQS_ERRORS["QueueDoesNotExist"]

# DynamoDB: plain JSON 1.0, the code is the `__type` after '#'. Real DynamoDB sends the coral namespaces for the
# errors shared by every AWS JSON service and its own namespace for its own errors, plus x-amz-crc32 of the body.
DDB_NS = "com.amazonaws.dynamodb.v20120810#"
DDB_ERRORS = {
    "AccessDeniedException": (
        400,
        "com.amazon.coral.service#AccessDeniedException",
        "User is not authorized to perform this action",
    ),
    "ResourceNotFoundException": (400, DDB_NS + "ResourceNotFoundException", "Requested resource not found"),
    "ThrottlingException": (
        400,
        "com.amazon.coral.availability#ThrottlingException",
        "Rate of requests exceeds the allowed throughput.",
    ),
    "ProvisionedThroughputExceededException": (
        400,
        DDB_NS + "ProvisionedThroughputExceededException",
        (
            "The level of configured provisioned throughput for the table was exceeded. Consider increasing your "
            "provisioning level with the UpdateTable API."
        ),
    ),
    "RequestLimitExceeded": (
        400,
        DDB_NS + "RequestLimitExceeded",
        "Throughput exceeds the current throughput limit for your account.",
    ),
    "UnrecognizedClientException": (
        400,
        "com.amazon.coral.service#UnrecognizedClientException",
        "The security token included in the request is invalid.",
    ),
    "ExpiredTokenException": (
        400,
        "com.amazon.coral.service#ExpiredTokenException",
        "The security token included in the request is expired",
    ),
    "MissingAuthenticationTokenException": (
        400,
        "com.amazon.coral.service#MissingAuthenticationTokenException",
        "Request is missing Authentication Token",
    ),
    "InternalServerError": (500, DDB_NS + "InternalServerError", "Internal server error"),
    "ServiceUnavailable": (503, "com.amazon.coral.availability#ServiceUnavailableException", "Service unavailable"),
    "ValidationException": (
        400,
        "com.amazon.coral.validate#ValidationException",
        "Item size has exceeded the maximum allowed size",
    ),
    "ConditionalCheckFailedException": (
        400,
        DDB_NS + "ConditionalCheckFailedException",
        "The conditional request failed",
    ),
    "TransactionConflictException": (
        400,
        DDB_NS + "TransactionConflictException",
        "Transaction is ongoing for the item",
    ),
}

# Auto Scaling: the Query protocol, an XML ErrorResponse; `Type` is Sender for client faults, Receiver for
# server faults.
ASG_ERRORS = {
    "ValidationError": (400, "No active Lifecycle Action found with instance ID i-00000000000000000"),
    "Throttling": (400, "Rate exceeded"),
    "ResourceContention": (500, "You already have a pending update to an Auto Scaling resource."),
    "InternalFailure": (500, "An internal error occurred."),
    "ServiceUnavailable": (503, "Service is unavailable."),
    "AccessDenied": (403, "User is not authorized to perform this action"),
    "InvalidClientTokenId": (403, "The security token included in the request is invalid."),
    "MissingAuthenticationToken": (403, "Request is missing Authentication Token"),
}

# FIS: REST-JSON; the code travels in `x-amzn-ErrorType`, the message in the body.
FIS_ERRORS = {
    "AccessDeniedException": (403, "User is not authorized to perform this action"),
    "UnrecognizedClientException": (403, "The security token included in the request is invalid."),
    "MissingAuthenticationTokenException": (403, "Missing Authentication Token"),
    "ValidationException": (400, "Invalid request"),
    "ResourceNotFoundException": (404, "Resource not found"),
    "ThrottlingException": (429, "Rate exceeded"),
}


def error_response(rule: Rule, keep_alive: bool) -> bytes:
    """The answer AWS gives for `rule.code` on `rule.service`, in that service's protocol."""
    return error_for(rule.service, rule.code or "", keep_alive, rule.status, rule.message, rule.type)


def error_for(service: str, code: str, keep_alive: bool, status: int | None = None, message: str | None = None,
              typ: str | None = None) -> bytes:  # fmt: skip
    """The answer `service` gives for error `code` (with this message, status, or `__type`), in its protocol."""
    rid = str(uuid.uuid4())
    headers = [("x-amzn-RequestId", rid)]
    if service == "fis":
        default_status, default_message = FIS_ERRORS.get(code, (400, code))
        status = status or default_status
        body = json.dumps({"message": message or default_message}).encode()
        headers += [("Content-Type", "application/json"), ("x-amzn-ErrorType", code)]
    elif service == "autoscaling":
        default_status, default_message = ASG_ERRORS.get(code, (400, code))
        status = status or default_status
        fault = "Receiver" if status >= 500 else "Sender"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
            f"<Error><Type>{fault}</Type><Code>{xml_escape(code)}</Code>"
            f"<Message>{xml_escape(message or default_message)}</Message></Error>"
            f"<RequestId>{rid}</RequestId></ErrorResponse>"
        ).encode()
        headers.append(("Content-Type", "text/xml"))
    elif service == "sqs":
        default_status, default_type, query_code, default_message = SQS_ERRORS.get(
            code, (400, "com.amazonaws.sqs#" + code, code, code)
        )
        status = status or default_status
        fault = "Receiver" if status >= 500 else "Sender"
        body = json.dumps({"__type": typ or default_type, "message": message or default_message}).encode()
        headers += [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-query-error", f"{query_code};{fault}"),
        ]
    else:  # dynamodb
        default_status, default_type, default_message = DDB_ERRORS.get(code, (400, DDB_NS + code, code))
        status = status or default_status
        body = json.dumps({"__type": typ or default_type, "message": message or default_message}).encode()
        headers += [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amz-crc32", str(zlib.crc32(body))),
        ]
    headers += [
        ("Content-Length", str(len(body))),
        ("Date", email.utils.formatdate(usegmt=True)),
    ]
    if not keep_alive:
        headers.append(("Connection", "close"))
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body
