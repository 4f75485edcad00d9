#!/usr/bin/env python3
"""An HTTP-aware fault proxy between the workers and the AWS endpoint (the emulator): it makes the whole endpoint
unreachable for a while (the chaos soak's "network fault"), or makes ONE service and ONE operation fail the way
AWS fails. Standard library only (asyncio).

    chaos/proxy.py --upstream http://127.0.0.1:4566 [--upstream-for dynamodb=http://127.0.0.1:8000]...
                   [--listen 127.0.0.1:0] [--control 127.0.0.1:0] [--ready-file F] [--seed N]

`--upstream-for SERVICE=URL` sends that service's requests elsewhere (DynamoDB on DynamoDB Local while SQS stays
on the emulator); every fault still covers every service, as one network would.

Workers get `AWS_ENDPOINT_URL=http://<listen>` and reach the emulator through it. Every request on a connection
(HTTP/1.1 keep-alive) is read whole, identified, and then forwarded, or answered by the proxy itself:

    service    the SigV4 credential scope (`Credential=<key>/<date>/<region>/<service>/aws4_request`), else the
               `X-Amz-Target` prefix (AmazonSQS -> sqs, DynamoDB_20120810 -> dynamodb), else the Query
               protocol's `Version` (2011-01-01 -> autoscaling, 2012-11-05 -> sqs); "unknown" if none of them
    operation  the `X-Amz-Target` suffix (`AmazonSQS.ReceiveMessage` -> ReceiveMessage), else the form or query
               string `Action` (`Action=CompleteLifecycleAction`); "unknown" if neither

A control port (plain HTTP, JSON, one request per connection) injects faults.

Whole-endpoint faults (what chaos/soak.py uses):

    POST /fault {"mode": "stall", "seconds": 5}   accept connections but hold every request and response (open
                                                  connections freeze mid-request; new ones connect and hear
                                                  nothing), then let what was held through
    POST /fault {"mode": "drop", "seconds": 5}    reset every open connection (RST) and reset new ones at once
    POST /fault {"mode": "pass"}                  end a whole-endpoint fault now

Per service / operation rules:

    POST /rules {"service": "sqs", "operation": "ChangeMessageVisibilityBatch", "action": "error",
                 "code": "AccessDenied", "status": 400, "message": "...", "count": 1, "seconds": 30,
                 "probability": 0.5}
        -> the rule as stored, with its "id"
      service      required: sqs | dynamodb | autoscaling
      operation    optional: the operation name; absent = every operation of the service
      action       required:
                   error            answer with the service's own error shape (see ERRORS) and `code`
                   stall            accept the request and never answer while the rule lasts (its `seconds`, or
                                    until DELETE /rules); then forward it (a late answer). A request whose
                                    client hangs up while held is dropped, never forwarded
                   reset            read the request, do not forward it, close the connection with RST
                   delay            forward the request at once (it is applied), answer `delay_seconds` late
                   pass-then-reset  forward the request (it IS applied), read the answer, then close the client
                                    connection with RST instead of answering: a lost response
      code         error only, required: the error code (e.g. AccessDenied, ThrottlingException, ValidationError)
      status       error only: the HTTP status (default: the code's real status, else 400)
      message      error only: the message (default: a message like AWS's for that code)
      type         error only, JSON services: the `__type` to send (default: AWS's for that code)
      delay_seconds  delay only, required: (0, 600]
      count        optional: affect only the next N matching requests, then the rule is spent
      seconds      optional: the rule ends S seconds after it was added
      probability  optional: (0, 1], each matching request is affected with this probability (count counts only
                   affected ones)
    Rules are tried in the order they were added; the first one in force that matches decides. Unknown fields
    are refused (400), so a typo does not silently become "every request".
    GET    /rules          every rule with "hits" (requests affected), "matched" (requests that matched, whether
                           the probability picked them or not), "remaining", "seconds_left", "active", "held"
    DELETE /rules          remove every rule (stalled requests are released and forwarded)
    DELETE /rules/<id>     remove one rule

    GET  /status   mode, seconds left, connection and byte counters, whole-endpoint faults, "requests" per
                   service and operation ({"sqs": {"ReceiveMessage": 12, ...}, ...}), "injected" per action,
                   "abandoned" (held requests whose client hung up) and "rules" (as GET /rules)

`--ready-file` receives {"listen": "http://...", "control": "http://...", "pid": N} once both ports listen.
The proxy exits on SIGTERM / SIGINT, closing every connection.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import http
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import time
import uuid
import zlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape as xml_escape

BUF = 64 * 1024
MAX_HEAD = 64 * 1024

SERVICES = ("sqs", "dynamodb", "autoscaling")
ACTIONS = ("error", "stall", "reset", "delay", "pass-then-reset")
# What a rule may say, in the order /rules shows it.
RULE_FIELDS = ("service", "operation", "action", "code", "status", "message", "type", "delay_seconds", "count",
               "seconds", "probability")  # fmt: skip

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
}

CRED_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/([^/,\s]+)/aws4_request")
TARGET_PREFIX = {"AmazonSQS": "sqs", "DynamoDB_20120810": "dynamodb"}
QUERY_VERSION = {"2011-01-01": "autoscaling", "2012-11-05": "sqs"}


class ProtocolError(Exception):
    """A peer sent something that is not HTTP/1.1 as we speak it."""


def host_port(s: str, default_port: int = 80) -> tuple[str, int]:
    """`http://h:p`, `h:p` or `:p` -> (host, port)."""
    if "://" in s:
        u = urlsplit(s)
        return u.hostname or "127.0.0.1", u.port or default_port
    host, _, port = s.rpartition(":")
    return host or "127.0.0.1", int(port)


# ---- HTTP/1.1 framing -----------------------------------------------------------------------------------------


class Stream:
    """A StreamReader with our own buffer, so the proxy can watch a held client for a hang-up (by reading ahead)
    without losing bytes of a next request."""

    def __init__(self, r: asyncio.StreamReader):
        self.r = r
        self.buf = bytearray()

    async def fill(self) -> bool:
        data = await self.r.read(BUF)
        if not data:
            return False
        self.buf += data
        return True

    async def until(self, sep: bytes, limit: int = MAX_HEAD) -> bytes | None:
        """Bytes up to and including `sep`; None on EOF before the first byte."""
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError("header section too long")
            if not await self.fill():
                if self.buf:
                    raise asyncio.IncompleteReadError(bytes(self.buf), None)
                return None

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self.fill():
                raise asyncio.IncompleteReadError(bytes(self.buf), n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def to_eof(self) -> bytes:
        while await self.fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def until_hangup(self) -> None:
        """Return when the peer closes; bytes it sends meanwhile stay buffered for the next request."""
        while await self.fill():
            pass


class Message:
    """One HTTP request or response: the start line, the headers, the body as framed on the wire and decoded."""

    def __init__(self, head: bytes):
        lines = head.decode("latin-1").split("\r\n")
        self.head = head
        self.start = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            k, sep, v = line.partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line!r}")
            self.headers.append((k.strip(), v.strip()))
        self.status = 0  # responses only
        self.raw_body = b""
        self.body = b""

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def has_token(self, name: str, token: str) -> bool:
        return token in [t.strip().lower() for t in self.get(name).split(",")]

    def wire(self, drop: tuple[str, ...] = ()) -> bytes:
        if not drop:
            return self.head + self.raw_body
        keep = [f"{k}: {v}" for k, v in self.headers if k.lower() not in drop]
        return ("\r\n".join([self.start, *keep]) + "\r\n\r\n").encode("latin-1") + self.raw_body


async def read_body(s: Stream, m: Message, until_eof: bool) -> None:
    """Read `m`'s body by its framing: chunked, Content-Length, or (a response without either) to EOF."""
    if m.has_token("transfer-encoding", "chunked"):
        raw, body = bytearray(), bytearray()
        while True:
            line = await s.until(b"\r\n")
            if line is None:
                raise asyncio.IncompleteReadError(bytes(raw), None)
            raw += line
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    t = await s.until(b"\r\n")
                    if t is None:
                        raise asyncio.IncompleteReadError(bytes(raw), None)
                    raw += t
                    if t == b"\r\n":
                        break
                break
            chunk = await s.exactly(size + 2)
            raw += chunk
            body += chunk[:-2]
        m.raw_body, m.body = bytes(raw), bytes(body)
    elif m.get("content-length"):
        n = int(m.get("content-length"))
        if n < 0:
            raise ProtocolError("negative content-length")
        m.raw_body = m.body = await s.exactly(n)
    elif until_eof:
        m.raw_body = m.body = await s.to_eof()


async def read_request(s: Stream, w: asyncio.StreamWriter) -> Message | None:
    head = await s.until(b"\r\n\r\n")
    if head is None:
        return None
    m = Message(head)
    if len(m.start.split(" ")) != 3:
        raise ProtocolError(f"bad request line {m.start!r}")
    if m.get("expect").lower() == "100-continue":
        # We read the whole body before deciding, so say "continue" ourselves; the upstream never sees Expect.
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await w.drain()
    await read_body(s, m, until_eof=False)
    return m


async def read_response(s: Stream, method: str) -> Message:
    while True:
        head = await s.until(b"\r\n\r\n")
        if head is None:
            raise asyncio.IncompleteReadError(b"", None)
        m = Message(head)
        parts = m.start.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {m.start!r}")
        m.status = int(parts[1])
        if 100 <= m.status < 200:
            continue  # an interim answer; the real one follows
        if method == "HEAD" or m.status in (204, 304):
            return m
        await read_body(s, m, until_eof=True)
        return m


def identify(req: Message) -> tuple[str, str]:
    """(service, operation) of an AWS request."""
    service: str | None = None
    operation: str | None = None
    scope = CRED_SCOPE.search(req.get("authorization"))
    if scope:
        service = scope.group(1)
    target = req.get("x-amz-target")
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


# ---- error shapes -----------------------------------------------------------------------------------------------


def error_response(rule: Rule, keep_alive: bool) -> bytes:
    """The answer AWS gives for `rule.code` on `rule.service`, in that service's protocol."""
    rid = str(uuid.uuid4())
    code = rule.code or ""
    headers = [("x-amzn-RequestId", rid)]
    if rule.service == "autoscaling":
        status, message = ASG_ERRORS.get(code, (400, code))
        status = rule.status or status
        fault = "Receiver" if status >= 500 else "Sender"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
            f"<Error><Type>{fault}</Type><Code>{xml_escape(code)}</Code>"
            f"<Message>{xml_escape(rule.message or message)}</Message></Error>"
            f"<RequestId>{rid}</RequestId></ErrorResponse>"
        ).encode()
        headers.append(("Content-Type", "text/xml"))
    elif rule.service == "sqs":
        status, typ, query_code, message = SQS_ERRORS.get(code, (400, "com.amazonaws.sqs#" + code, code, code))
        status = rule.status or status
        fault = "Receiver" if status >= 500 else "Sender"
        body = json.dumps({"__type": rule.type or typ, "message": rule.message or message}).encode()
        headers += [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-query-error", f"{query_code};{fault}"),
        ]
    else:  # dynamodb
        status, typ, message = DDB_ERRORS.get(code, (400, DDB_NS + code, code))
        status = rule.status or status
        body = json.dumps({"__type": rule.type or typ, "message": rule.message or message}).encode()
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


# ---- rules ------------------------------------------------------------------------------------------------------


def _number(req: dict, key: str, lo: float, hi: float, integer: bool = False) -> float | None:
    if req.get(key) is None:
        return None
    v = req[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and int(v) != v):
        raise ValueError(f"{key} must be a{'n integer' if integer else ' number'}")
    if not (lo < v <= hi):
        raise ValueError(f"{key} must be in ({lo}, {hi}]")
    return int(v) if integer else float(v)


class Rule:
    def __init__(self, rid: int, req: dict):
        unknown = set(req) - set(RULE_FIELDS)
        if unknown:
            raise ValueError(f"unknown rule fields {sorted(unknown)} (known: {sorted(RULE_FIELDS)})")
        self.id = rid
        self.service = req.get("service")
        if self.service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}")
        self.operation: str | None = req.get("operation") or None
        self.action = req.get("action")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}")
        self.code: str | None = req.get("code")
        self.message: str | None = req.get("message")
        self.type: str | None = req.get("type")
        status = _number(req, "status", 399, 599, integer=True)
        self.status = int(status) if status else None
        if self.action == "error" and not self.code:
            raise ValueError("action error needs a code")
        delay = _number(req, "delay_seconds", 0, 600)
        if self.action == "delay" and delay is None:
            raise ValueError("action delay needs delay_seconds")
        self.delay_seconds = delay or 0.0
        count = _number(req, "count", 0, 10**9, integer=True)
        self.count = int(count) if count else None
        self.seconds = _number(req, "seconds", 0, 3600)
        self.probability = _number(req, "probability", 0, 1)
        self.created = time.monotonic()
        self.until = self.created + self.seconds if self.seconds else None
        self.remaining = self.count
        self.hits = 0
        self.matched = 0
        self.held = 0
        self.removed = False
        # Set when the rule stops holding requests: its seconds are up, or it was deleted.
        self.released = asyncio.Event()
        self._timer = asyncio.get_running_loop().call_later(self.seconds, self.released.set) if self.seconds else None

    def in_force(self, now: float) -> bool:
        return (
            not self.removed
            and (self.until is None or now < self.until)
            and (self.remaining is None or self.remaining > 0)
        )

    def take(self, service: str, operation: str, now: float) -> bool:
        """Whether this rule affects this request (and count it if so)."""
        if service != self.service or (self.operation and operation != self.operation):
            return False
        if not self.in_force(now):
            return False
        self.matched += 1
        if self.probability is not None and random.random() >= self.probability:
            return False
        self.hits += 1
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def remove(self) -> None:
        self.removed = True
        if self._timer:
            self._timer.cancel()
        self.released.set()

    def view(self) -> dict:
        now = time.monotonic()
        out = {k: getattr(self, k) for k in ("id", *RULE_FIELDS, "hits", "matched", "remaining", "held")}
        out["active"] = self.in_force(now)
        out["seconds_left"] = round(max(0.0, self.until - now), 3) if self.until else None
        return out


# ---- the proxy --------------------------------------------------------------------------------------------------


class Conn:
    """One client connection and the upstream connection it is relayed over (opened on first use, kept alive)."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter):
        self.down = Stream(r)
        self.down_w = w
        self.up: Stream | None = None
        self.up_w: asyncio.StreamWriter | None = None
        self.up_addr: tuple[str, int] | None = None  # where `up` goes: one client connection may carry two services
        self.dead = False

    def close_up(self) -> None:
        if self.up_w:
            self.up_w.close()
        self.up = self.up_w = None


class Proxy:
    def __init__(self, upstream: tuple[str, int], per_service: dict[str, tuple[str, int]] | None = None):
        self.upstream = upstream
        self.per_service = dict(per_service or {})
        self.mode = "pass"
        self.until = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.conns: set[Conn] = set()
        self.rules: list[Rule] = []
        self.next_rule = 1
        self.requests: dict[str, dict[str, int]] = {}
        self.stats = {
            "connections": 0,
            "open": 0,
            "reset": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "upstream_errors": 0,
            "faults": {"stall": 0, "drop": 0},
            "fault_seconds": {"stall": 0.0, "drop": 0.0},
            "injected": {a: 0 for a in ACTIONS},
            "abandoned": 0,
        }
        self._timer: asyncio.TimerHandle | None = None

    # ---- whole-endpoint faults -------------------------------------------------------------------------------

    def set_fault(self, mode: str, seconds: float) -> dict:
        if mode not in ("pass", "stall", "drop"):
            raise ValueError(f"unknown mode {mode!r} (pass|stall|drop)")
        loop = asyncio.get_running_loop()
        if self._timer:
            self._timer.cancel()
            self._timer = None
        self.mode = mode
        if mode == "pass":
            self.until = 0.0
            self.flowing.set()
            return self.status()
        if not (0 < seconds <= 600):
            raise ValueError("seconds must be in (0, 600]")
        self.stats["faults"][mode] += 1
        self.stats["fault_seconds"][mode] += seconds
        self.until = time.monotonic() + seconds
        self._timer = loop.call_later(seconds, self._end_fault)
        if mode == "stall":
            self.flowing.clear()
        else:
            self.flowing.set()
            for c in list(self.conns):
                self._reset_conn(c)
        return self.status()

    def _end_fault(self) -> None:
        self._timer = None
        self.mode = "pass"
        self.until = 0.0
        self.flowing.set()

    def _reset(self, w: asyncio.StreamWriter) -> None:
        """Close with RST (SO_LINGER 0), as a dropped path or a restarted load balancer looks to a client."""
        sock = w.get_extra_info("socket")
        try:
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        w.transport.abort()
        self.stats["reset"] += 1

    def _reset_conn(self, c: Conn) -> None:
        c.dead = True
        self._reset(c.down_w)
        if c.up_w:
            self._reset(c.up_w)
            c.up = c.up_w = None

    # ---- rules -----------------------------------------------------------------------------------------------

    def add_rule(self, req: dict) -> dict:
        rule = Rule(self.next_rule, req)
        self.next_rule += 1
        self.rules.append(rule)
        return rule.view()

    def delete_rules(self, rid: int | None = None) -> dict:
        keep = []
        for r in self.rules:
            if rid is None or r.id == rid:
                r.remove()
            else:
                keep.append(r)
        if rid is not None and len(keep) == len(self.rules):
            raise KeyError(f"no rule {rid}")
        self.rules = keep
        return {"rules": [r.view() for r in self.rules]}

    def pick(self, service: str, operation: str) -> Rule | None:
        now = time.monotonic()
        for r in self.rules:
            if r.take(service, operation, now):
                return r
        return None

    def status(self) -> dict:
        left = max(0.0, self.until - time.monotonic()) if self.mode != "pass" else 0.0
        return {
            "mode": self.mode,
            "seconds_left": round(left, 3),
            **self.stats,
            "requests": self.requests,
            "rules": [r.view() for r in self.rules],
        }

    # ---- data path -------------------------------------------------------------------------------------------

    async def handle(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        self.stats["open"] += 1
        c = Conn(down_r, down_w)
        self.conns.add(c)
        try:
            if self.mode == "drop":
                self._reset_conn(c)
                return
            while not c.dead:
                req = await read_request(c.down, down_w)
                if req is None:
                    return
                self.stats["bytes_up"] += len(req.head) + len(req.raw_body)
                await self.flowing.wait()  # a stalled endpoint: the request is accepted and hears nothing
                if c.dead:
                    return
                if self.mode == "drop":
                    self._reset_conn(c)
                    return
                if not await self.one(c, req):
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ProtocolError, ValueError):
            pass
        finally:
            self.conns.discard(c)
            c.close_up()
            if not down_w.is_closing():
                down_w.close()
            self.stats["open"] -= 1

    async def one(self, c: Conn, req: Message) -> bool:
        """Serve one request; False when the client connection is finished."""
        service, operation = identify(req)
        per = self.requests.setdefault(service, {})
        per[operation] = per.get(operation, 0) + 1
        keep_alive = not req.has_token("connection", "close")
        rule = self.pick(service, operation)
        action = rule.action if rule else "pass"
        if rule:
            self.stats["injected"][action] += 1
        if action == "error":
            c.down_w.write(error_response(rule, keep_alive))
            await c.down_w.drain()
            return keep_alive
        if action == "reset":
            self._reset_conn(c)
            return False
        if action == "stall":
            rule.held += 1
            hangup = asyncio.ensure_future(c.down.until_hangup())
            released = asyncio.ensure_future(rule.released.wait())
            try:
                await asyncio.wait({hangup, released}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                rule.held -= 1
                hangup.cancel()
                released.cancel()
            if hangup.done() and not hangup.cancelled():
                self.stats["abandoned"] += 1  # the client gave up: never forward what it no longer waits for
                return False
        resp = await self.forward(c, req, self.per_service.get(service, self.upstream))
        if resp is None:
            self._reset_conn(c)
            return False
        if action == "pass-then-reset":
            self._reset_conn(c)  # applied upstream, and the answer is lost on the way back
            return False
        if action == "delay":
            await asyncio.sleep(rule.delay_seconds)
        await self.flowing.wait()  # a stall that began while upstream answered holds the answer too
        if c.dead:
            return False
        c.down_w.write(resp.wire())
        self.stats["bytes_down"] += len(resp.head) + len(resp.raw_body)
        await c.down_w.drain()
        return keep_alive and not resp.has_token("connection", "close")

    async def forward(self, c: Conn, req: Message, upstream: tuple[str, int]) -> Message | None:
        """Send `req` to `upstream` and read the whole answer; None if the upstream cannot be reached."""
        method = req.start.split(" ", 1)[0]
        for attempt in (1, 2):
            reused = c.up is not None
            if c.up is None or c.up.r.at_eof() or (c.up_w and c.up_w.is_closing()) or c.up_addr != upstream:
                c.close_up()
                try:
                    r, w = await asyncio.open_connection(*upstream)
                except OSError:
                    self.stats["upstream_errors"] += 1
                    return None
                c.up, c.up_w, c.up_addr = Stream(r), w, upstream
                reused = False
            assert c.up is not None and c.up_w is not None
            try:
                c.up_w.write(req.wire(drop=("expect",)))
                await c.up_w.drain()
                resp = await read_response(c.up, method)
            except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
                c.close_up()
                if c.dead:
                    return None  # a whole-endpoint drop reset both sides: never replay what may have been applied
                # A kept-alive upstream connection that the server closed while idle fails before any answer:
                # the request was not read, so one retry on a fresh connection is safe. Anything else is an error.
                got_nothing = isinstance(e, asyncio.IncompleteReadError) and not e.partial
                if reused and attempt == 1 and (got_nothing or isinstance(e, (BrokenPipeError, ConnectionResetError))):
                    continue
                self.stats["upstream_errors"] += 1
                return None
            if resp.has_token("connection", "close"):
                c.close_up()
            return resp
        return None

    # ---- control ---------------------------------------------------------------------------------------------

    def route(self, method: str, path: str, raw: bytes) -> dict:
        if method == "GET" and path == "/status":
            return self.status()
        if method == "POST" and path == "/fault":
            req = json.loads(raw or b"{}")
            return self.set_fault(str(req.get("mode", "pass")), float(req.get("seconds", 0)))
        if method == "POST" and path == "/rules":
            req = json.loads(raw or b"{}")
            if not isinstance(req, dict):
                raise ValueError("a rule is a JSON object")
            return self.add_rule(req)
        if method == "GET" and path == "/rules":
            return {"rules": [r.view() for r in self.rules]}
        if method == "DELETE" and path == "/rules":
            return self.delete_rules()
        if method == "DELETE" and path.startswith("/rules/"):
            return self.delete_rules(int(path.rsplit("/", 1)[1]))
        raise LookupError(f"no route {method} {path}")

    async def control(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        code, body = 200, {}
        try:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            raw = await r.readexactly(length) if length else b""
            try:
                body = self.route(method, path, raw)
            except KeyError as e:
                code, body = 404, {"error": str(e.args[0])}
            except LookupError as e:
                code, body = 404, {"error": str(e)}
            except ValueError as e:
                code, body = 400, {"error": str(e)}
        except ValueError as e:
            code, body = 400, {"error": str(e)}
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            w.close()
            return
        data = json.dumps(body).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[code]
        w.write(
            f"HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            f"connection: close\r\n\r\n".encode()
            + data
        )
        try:
            await w.drain()
        finally:
            w.close()


async def serve(upstream: str, listen: str, control: str, ready_file: str | None,
                upstream_for: dict[str, str] | None = None) -> None:  # fmt: skip
    proxy = Proxy(host_port(upstream), {k: host_port(v) for k, v in (upstream_for or {}).items()})
    lh, lp = host_port(listen)
    ch, cp = host_port(control)
    data_srv = await asyncio.start_server(proxy.handle, lh, lp, reuse_address=True, backlog=512)
    ctl_srv = await asyncio.start_server(proxy.control, ch, cp, reuse_address=True)
    la = data_srv.sockets[0].getsockname()
    ca = ctl_srv.sockets[0].getsockname()
    info = {"listen": f"http://{la[0]}:{la[1]}", "control": f"http://{ca[0]}:{ca[1]}", "pid": os.getpid()}
    print(f"proxy {info['listen']} -> {upstream}; control {info['control']}", file=sys.stderr, flush=True)
    if ready_file:
        tmp = Path(ready_file).with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.rename(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    data_srv.close()
    ctl_srv.close()
    for c in list(proxy.conns):
        c.down_w.transport.abort()
        if c.up_w:
            c.up_w.transport.abort()
    print(f"proxy stopped: {json.dumps(proxy.status())}", file=sys.stderr, flush=True)


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="the real endpoint, http://host:port")
    p.add_argument("--upstream-for", action="append", default=[], metavar="SERVICE=URL",
                   help="another endpoint for one service (repeat): dynamodb=http://127.0.0.1:8000")  # fmt: skip
    p.add_argument("--listen", default="127.0.0.1:0", help="address the workers use (default a free port)")
    p.add_argument("--control", default="127.0.0.1:0", help="control address (default a free port)")
    p.add_argument("--ready-file", help="write the addresses here (JSON) once listening")
    p.add_argument("--seed", type=int, help="seed for rules with a probability (default: random)")
    a = p.parse_args(argv)
    if a.seed is not None:
        random.seed(a.seed)
    upstream_for = {}
    for x in a.upstream_for:
        service, sep, url = x.partition("=")
        if not sep or not url:
            p.error(f"--upstream-for {x!r}: SERVICE=URL")
        upstream_for[service] = url
    asyncio.run(serve(a.upstream, a.listen, a.control, a.ready_file, upstream_for))
    return 0


if __name__ == "__main__":
    sys.exit(main())
