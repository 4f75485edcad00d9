"""The fault proxy itself: the data path (each client connection relayed to the upstream of its request's
service, request by request, unless a whole-endpoint fault or a rule decides otherwise) and the control port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from iamgate.evaluator import Evaluator
from iamgate.gate import Gate, StatementDenials
from iamgate.stack import Stack

from . import partiql
from .attempts import Attempts
from .aws import error_for, error_response, identify, tables
from .http1 import Message, ProtocolError, Stream, host_port, read_request, read_response
from .rules import ACTIONS, Rule, decide


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
    def __init__(self, upstream: tuple[str, int], per_service: dict[str, tuple[str, int]] | None = None,
                 gate: Gate | None = None):  # fmt: skip
        self.upstream = upstream
        self.per_service = dict(per_service or {})
        # The IAM gate (chaos/iamgate): every request authorised as AWS would, before it is forwarded.
        self.gate = gate
        self.mode = "pass"
        self.until = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.conns: set[Conn] = set()
        self.rules: list[Rule] = []
        self.attempts = Attempts()  # ReceiveRequestAttemptId as SQS honours it (the emulator does not)
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

    def pick(self, service: str, operation: str, req: Message) -> Rule | None:
        # The tables are read only when a rule asks for one (the reading parses the body).
        named = tables(service, operation, req) if any(r.table for r in self.rules) else frozenset()
        return decide(self.rules, service, operation, time.monotonic(), named)

    def status(self) -> dict:
        left = max(0.0, self.until - time.monotonic()) if self.mode != "pass" else 0.0
        return {
            "mode": self.mode,
            "seconds_left": round(left, 3),
            **self.stats,
            "requests": self.requests,
            "attempts": self.attempts.view(),
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
        rule = self.pick(service, operation, req)
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
                # The watcher reads the client's connection: gone before the next request is read from it.
                await asyncio.gather(hangup, released, return_exceptions=True)
            if hangup.done() and not hangup.cancelled():
                self.stats["abandoned"] += 1  # the client gave up: never forward what it no longer waits for
                return False
        # The IAM gate first: a denied request is answered here and never reaches SQS or the attempt-id memory.
        statements: StatementDenials | None = None
        if self.gate:
            method, path = req.start.split(" ")[:2]
            denial = await self.gate.authorize(service, operation, method, path, req.get, req.body)
            if isinstance(denial, StatementDenials):
                statements = denial
                req = partiql.without_denied(req, statements)
                if req is None:  # every statement denied: DynamoDB answers them all, nothing is executed
                    c.down_w.write(partiql.answer(statements, None, keep_alive))
                    await c.down_w.drain()
                    return keep_alive
            elif denial:
                c.down_w.write(error_for(denial.service, denial.code, keep_alive, message=denial.message))
                await c.down_w.drain()
                return keep_alive
        upstream = self.per_service.get(service, self.upstream)
        if service == "sqs":
            self.attempts.saw(operation, req)
        if service == "sqs" and operation == "ReceiveMessage":
            resp = await self.attempts.receive(req, lambda r: self.forward(c, r, upstream), c.down.until_hangup)
        else:
            resp = await self.forward(c, req, upstream)
        if resp is not None and statements is not None:
            resp = partiql.with_denied(resp, statements)
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

    async def route(self, method: str, path: str, raw: bytes) -> dict:
        if method == "GET" and path == "/status":
            return self.status()
        if path.startswith("/iam"):
            return await self.route_iam(method, path, raw)
        if method == "POST" and path == "/upstream":
            req = json.loads(raw or b"{}")
            self.per_service[str(req["service"])] = host_port(str(req["url"]))
            return {"upstreams": {k: f"{h}:{p}" for k, (h, p) in self.per_service.items()}}
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

    async def route_iam(self, method: str, path: str, raw: bytes) -> dict:
        if self.gate is None:
            raise LookupError("the IAM gate is off (--iam off)")
        if method == "GET" and path == "/iam":
            return self.gate.status()
        if method == "POST" and path == "/iam/stacks":
            return await self.gate.add_stack(Stack.from_json(json.loads(raw or b"{}")))
        if method == "POST" and path == "/iam/authorize":
            return await self.gate.authorize_role(json.loads(raw or b"{}"))
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
                body = await self.route(method, path, raw)
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
                upstream_for: dict[str, str] | None = None, iam: str = "off", iam_stacks: list[str] | None = None,
                iam_use_dir: str | None = None) -> None:  # fmt: skip
    gate = None
    if iam != "off":
        # A policy the gate cannot enforce, or an evaluator that does not start, stops the proxy here.
        gate = Gate(await Evaluator().start(), iam, use_dir=iam_use_dir)
        for path in iam_stacks or []:
            await gate.add_stack(Stack.from_json(json.loads(Path(path).read_text())))
    proxy = Proxy(host_port(upstream), {k: host_port(v) for k, v in (upstream_for or {}).items()}, gate)
    lh, lp = host_port(listen)
    ch, cp = host_port(control)
    data_srv = await asyncio.start_server(proxy.handle, lh, lp, reuse_address=True, backlog=512)
    ctl_srv = await asyncio.start_server(proxy.control, ch, cp, reuse_address=True)
    la = data_srv.sockets[0].getsockname()
    ca = ctl_srv.sockets[0].getsockname()
    info = {"listen": f"http://{la[0]}:{la[1]}", "control": f"http://{ca[0]}:{ca[1]}", "pid": os.getpid(), "iam": iam}
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
    if gate:
        print(f"iam gate stopped: {json.dumps(gate.status())}", file=sys.stderr, flush=True)
        await gate.evaluator.close()
