"""A PartiQL batch some of whose statements the IAM gate denies: DynamoDB answers each statement of a
BatchExecuteStatement on its own, so the denied ones get their own `AccessDenied` error in the response, in
their places, and the others run. The proxy forwards only the allowed statements and puts the denials back."""

from __future__ import annotations

import json
import zlib

from iamgate.gate import StatementDenials

from .http1 import Message


def _message(start: str, headers: list[tuple[str, str]], body: bytes, extra: tuple = ()) -> Message:
    """A message with a new body: its framing and checksum headers made for that body."""
    keep = [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding", "x-amz-crc32")]
    keep += [*extra, ("Content-Length", str(len(body)))]
    head = "\r\n".join([start, *(f"{k}: {v}" for k, v in keep)]) + "\r\n\r\n"
    m = Message(head.encode("latin-1"))
    m.raw_body = m.body = body
    return m


def without_denied(req: Message, d: StatementDenials) -> Message | None:
    """The request with only its allowed statements; None if every one is denied."""
    doc = json.loads(req.body)
    kept = [s for s, v in zip(doc["Statements"], d.verdicts, strict=True) if v is None]
    if not kept:
        return None
    return _message(req.start, req.headers, json.dumps({**doc, "Statements": kept}).encode())


def _error(v) -> dict:
    return {"Error": {"Code": "AccessDenied", "Message": v.message}}


def with_denied(resp: Message, d: StatementDenials) -> Message:
    """The upstream's answer for the allowed statements, with the denied ones' errors in their places."""
    if resp.status != 200:
        return resp
    doc = json.loads(resp.body)
    got = doc.get("Responses") or []
    if len(got) != sum(v is None for v in d.verdicts):
        raise ValueError(f"the upstream answered {len(got)} statements of {sum(v is None for v in d.verdicts)}")
    allowed = iter(got)
    doc["Responses"] = [next(allowed) if v is None else _error(v) for v in d.verdicts]
    body = json.dumps(doc).encode()
    # DynamoDB's clients check x-amz-crc32 against the body: it is the new body's.
    m = _message(resp.start, resp.headers, body, (("x-amz-crc32", str(zlib.crc32(body))),))
    m.status = resp.status
    return m


def answer(d: StatementDenials, _resp: None, keep_alive: bool) -> bytes:
    """The whole answer when every statement is denied (HTTP 200: each statement has its own error)."""
    body = json.dumps({"Responses": [_error(v) for v in d.verdicts]}).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amz-crc32", str(zlib.crc32(body))),
        ("Content-Length", str(len(body))),
    ]
    if not keep_alive:
        headers.append(("Connection", "close"))
    head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body
