"""`ReceiveRequestAttemptId` the way SQS honours it on a FIFO queue, which the emulator (ministack) does not:
a ReceiveMessage repeated with the same attempt id on the same queue within 5 minutes is answered with the
first answer (the same messages, the same receipt handles), as long as none of those messages was deleted or
had its visibility changed since; otherwise it is an ordinary receive. A consumer that lost a receive's answer
(a transport failure, or a poll it ended itself) gets back what SQS handed it instead of leaving it hidden for
a whole visibility timeout.

Two more things make this hold for a long poll that its caller ends:
- SQS stops a poll whose caller has gone. The emulator does not: it would go on waiting and hand messages to a
  dead connection. So a long poll is served here as a series of immediate receives (the emulator's own long
  poll checks every 0.1 s the same way), ended when the caller hangs up or repeats its attempt id.
- A repeat that arrives while the first poll is still out waits for that poll's current check (one immediate
  receive) and is answered with its result: whatever the ended poll was handed is in the answer, once.

Only the JSON protocol (`x-amz-target: AmazonSQS.*`, what the Rust SDK and botocore speak) is read; any other
request goes through unchanged. Not modelled: a repeat within the window also resets the messages' visibility
timeout on SQS; here it leaves them as the first answer left them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from .http1 import Message

WINDOW = 300.0  # seconds an attempt id is remembered (SQS: 5 minutes)
TICK = 0.1  # seconds between the immediate receives that serve a long poll
MODIFYING = ("DeleteMessage", "DeleteMessageBatch", "ChangeMessageVisibility", "ChangeMessageVisibilityBatch")

Forward = Callable[[Message], Awaitable[Message | None]]


def json_params(req: Message) -> dict | None:
    """The request's parameters if it speaks SQS's JSON protocol, else None."""
    if not req.get("x-amz-target").startswith("AmazonSQS."):
        return None
    try:
        params = json.loads(req.body or b"{}")
    except ValueError:
        return None
    return params if isinstance(params, dict) else None


def receipt_handles(params: dict) -> list[str]:
    """The receipt handles a Delete / ChangeMessageVisibility request (single or batch) names."""
    out = []
    if isinstance(params.get("ReceiptHandle"), str):
        out.append(params["ReceiptHandle"])
    for e in params.get("Entries") or []:
        if isinstance(e, dict) and isinstance(e.get("ReceiptHandle"), str):
            out.append(e["ReceiptHandle"])
    return out


def answered_handles(resp: Message) -> list[str]:
    """The receipt handles of the messages a successful ReceiveMessage answer carries."""
    try:
        body = json.loads(resp.body or b"{}")
    except ValueError:
        return []
    msgs = body.get("Messages") if isinstance(body, dict) else None
    return [m["ReceiptHandle"] for m in msgs or [] if isinstance(m, dict) and isinstance(m.get("ReceiptHandle"), str)]


def with_params(req: Message, params: dict) -> Message:
    """The same request with another JSON body (the emulator does not check signatures)."""
    body = json.dumps(params).encode()
    keep = [f"{k}: {v}" for k, v in req.headers if k.lower() not in ("content-length", "transfer-encoding")]
    head = ("\r\n".join([req.start, *keep, f"content-length: {len(body)}"]) + "\r\n\r\n").encode("latin-1")
    m = Message(head)
    m.raw_body = m.body = body
    return m


class Attempt:
    """One (queue, attempt id): its answer once the first poll is done, and whether it may still be repeated."""

    def __init__(self, now: float):
        self.started = now
        self.done = asyncio.Event()
        self.ended = asyncio.Event()  # a repeat came: the first poll stops waiting for messages
        self.answer: Message | None = None
        self.handles: list[str] = []
        self.modified = False


class Attempts:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.table: dict[tuple[str, str], Attempt] = {}
        self.by_handle: dict[str, tuple[str, str]] = {}
        self.stats = {"receives": 0, "repeats_answered": 0, "repeats_forwarded": 0, "polls_ended": 0}

    def _expire(self, now: float) -> None:
        for key in [k for k, a in self.table.items() if a.done.is_set() and now - a.started >= WINDOW]:
            for h in self.table.pop(key).handles:
                self.by_handle.pop(h, None)

    def saw(self, operation: str, req: Message) -> None:
        """Every SQS request passes here: a delete or visibility change of a message some remembered answer
        carries means that answer may no longer be repeated."""
        if operation not in MODIFYING:
            return
        params = json_params(req)
        if params is None:
            return
        for h in receipt_handles(params):
            key = self.by_handle.pop(h, None)
            if key and key in self.table:
                self.table[key].modified = True

    async def receive(self, req: Message, forward: Forward, hangup: Callable[[], Awaitable[None]]) -> Message | None:
        """Serve one ReceiveMessage: the remembered answer of a repeated attempt id, or a poll whose answer is
        remembered. `forward` sends a request upstream; `hangup` returns when the caller closes its connection."""
        params = json_params(req)
        queue = params and params.get("QueueUrl")
        attempt_id = params and params.get("ReceiveRequestAttemptId")
        if not (isinstance(queue, str) and isinstance(attempt_id, str) and attempt_id):
            return await forward(req)
        now = self.clock()
        self._expire(now)
        key = (queue, attempt_id)
        first = self.table.get(key)
        if first is not None:
            first.ended.set()
            await first.done.wait()
            if first.answer is not None and not first.modified and self.clock() - first.started < WINDOW:
                self.stats["repeats_answered"] += 1
                return first.answer
            self.stats["repeats_forwarded"] += 1
            self._forget(key)
        self.stats["receives"] += 1
        attempt = Attempt(now)
        self.table[key] = attempt
        # This layer honours the attempt id: the receives it sends upstream carry none, or an upstream that honours
        # it too (a fault proxy in front of the region's gate) would remember the first empty check of a long poll
        # and answer every later check with it.
        params = {k: v for k, v in params.items() if k != "ReceiveRequestAttemptId"}
        req = with_params(req, params)
        try:
            answer = await self._poll(req, params, forward, attempt, hangup)
        except BaseException:
            self._forget(key)
            attempt.done.set()
            raise
        if answer is not None and answer.status == 200:
            attempt.answer = answer
            attempt.handles = answered_handles(answer)
            for h in attempt.handles:
                self.by_handle[h] = key
        else:
            self._forget(key)  # failed: nothing was handed out, the id starts afresh
        attempt.done.set()
        return answer

    def _forget(self, key: tuple[str, str]) -> None:
        a = self.table.pop(key, None)
        for h in a.handles if a else []:
            self.by_handle.pop(h, None)

    async def _poll(
        self, req: Message, params: dict, forward: Forward, attempt: Attempt, hangup: Callable[[], Awaitable[None]]
    ) -> Message | None:
        """A long poll as immediate receives every TICK until messages come, the wait is over, the caller hangs
        up or repeats its attempt id."""
        try:
            wait = float(params.get("WaitTimeSeconds") or 0)
        except (TypeError, ValueError):
            wait = 0.0
        if wait <= 0:
            return await forward(req)
        deadline = self.clock() + wait
        once = with_params(req, {**params, "WaitTimeSeconds": 0})
        gone = asyncio.ensure_future(hangup())
        try:
            while True:
                answer = await forward(once)
                if answer is None or answer.status != 200 or answered_handles(answer):
                    return answer
                if self.clock() >= deadline:
                    return answer
                if gone.done() or attempt.ended.is_set():
                    self.stats["polls_ended"] += 1
                    return answer
                ended = asyncio.ensure_future(attempt.ended.wait())
                try:
                    await asyncio.wait({gone, ended}, timeout=min(TICK, max(0.0, deadline - self.clock())))
                finally:
                    ended.cancel()
        finally:
            # The watcher reads the caller's connection: it must be gone before the next request is read from it
            # ("read() called while another coroutine is already waiting"), and a reset is a hang-up too.
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)

    def view(self) -> dict:
        return {**self.stats, "remembered": len(self.table)}
