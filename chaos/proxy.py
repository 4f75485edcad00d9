#!/usr/bin/env python3
"""A TCP proxy between the workers and the SQS/DynamoDB endpoint that can make the endpoint unreachable for a
while: the chaos soak's "network fault". Standard library only (asyncio).

    chaos/proxy.py --upstream http://127.0.0.1:4566 [--listen 127.0.0.1:0] [--ready-file F]

Workers get `AWS_ENDPOINT_URL=http://<listen>` and reach the emulator through it. A control port (plain HTTP,
JSON) injects faults:

    POST /fault {"mode": "stall", "seconds": 5}   accept connections but hold every byte in both directions
                                                  (open connections freeze mid-request; new ones connect and
                                                  hear nothing), then let the held bytes through
    POST /fault {"mode": "drop", "seconds": 5}    reset every open connection (RST) and reset new ones at once
    POST /fault {"mode": "pass"}                  end a fault now
    GET  /status                                  mode, seconds left, connection and byte counters, faults

`--ready-file` receives {"listen": "http://...", "control": "http://...", "pid": N} once both ports listen.
The proxy exits on SIGTERM / SIGINT, closing every connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

BUF = 64 * 1024


def host_port(s: str, default_port: int = 80) -> tuple[str, int]:
    """`http://h:p`, `h:p` or `:p` -> (host, port)."""
    if "://" in s:
        u = urlsplit(s)
        return u.hostname or "127.0.0.1", u.port or default_port
    host, _, port = s.rpartition(":")
    return host or "127.0.0.1", int(port)


class Proxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.mode = "pass"
        self.until = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.conns: set[tuple[asyncio.StreamWriter, Optional[asyncio.StreamWriter]]] = set()
        self.stats = {
            "connections": 0,
            "open": 0,
            "reset": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "upstream_errors": 0,
            "faults": {"stall": 0, "drop": 0},
            "fault_seconds": {"stall": 0.0, "drop": 0.0},
        }
        self._timer: Optional[asyncio.TimerHandle] = None

    # ---- faults ----------------------------------------------------------------------------------------------

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
            for down, up in list(self.conns):
                self._reset(down)
                if up:
                    self._reset(up)
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

    def status(self) -> dict:
        left = max(0.0, self.until - time.monotonic()) if self.mode != "pass" else 0.0
        return {"mode": self.mode, "seconds_left": round(left, 3), **self.stats}

    # ---- data path -------------------------------------------------------------------------------------------

    async def handle(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        self.stats["open"] += 1
        entry: list = [down_w, None]
        key = None
        try:
            if self.mode == "drop":
                self._reset(down_w)
                return
            await self.flowing.wait()  # a stalled endpoint: the connection is accepted and hears nothing
            if self.mode == "drop":
                self._reset(down_w)
                return
            try:
                up_r, up_w = await asyncio.open_connection(*self.upstream)
            except OSError:
                self.stats["upstream_errors"] += 1
                self._reset(down_w)
                return
            key = (down_w, up_w)
            self.conns.add(key)
            await asyncio.gather(
                self.pipe(down_r, up_w, "bytes_up"),
                self.pipe(up_r, down_w, "bytes_down"),
            )
        finally:
            if key:
                self.conns.discard(key)
                for w in key:
                    w.close()
            else:
                down_w.close()
            self.stats["open"] -= 1

    async def pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, counter: str) -> None:
        try:
            while True:
                data = await r.read(BUF)
                if not data:
                    break
                if not self.flowing.is_set():
                    await self.flowing.wait()  # hold the bytes until the stall ends
                if w.is_closing():
                    break
                w.write(data)
                self.stats[counter] += len(data)
                await w.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # Half-close towards the other side so HTTP keep-alive ends cleanly when one side hangs up.
            try:
                if w.can_write_eof() and not w.is_closing():
                    w.write_eof()
            except (OSError, RuntimeError):
                pass

    # ---- control ---------------------------------------------------------------------------------------------

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
            if method == "GET" and path == "/status":
                body = self.status()
            elif method == "POST" and path == "/fault":
                req = json.loads(raw or b"{}")
                body = self.set_fault(str(req.get("mode", "pass")), float(req.get("seconds", 0)))
            else:
                code, body = 404, {"error": f"no route {method} {path}"}
        except (ValueError, KeyError) as e:
            code, body = 400, {"error": str(e)}
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
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


async def serve(upstream: str, listen: str, control: str, ready_file: Optional[str]) -> None:
    proxy = Proxy(host_port(upstream))
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
    for down, up in list(proxy.conns):
        down.transport.abort()
        if up:
            up.transport.abort()
    print(f"proxy stopped: {json.dumps(proxy.status())}", file=sys.stderr, flush=True)


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="the real endpoint, http://host:port")
    p.add_argument("--listen", default="127.0.0.1:0", help="address the workers use (default a free port)")
    p.add_argument("--control", default="127.0.0.1:0", help="control address (default a free port)")
    p.add_argument("--ready-file", help="write the addresses here (JSON) once listening")
    a = p.parse_args(argv)
    asyncio.run(serve(a.upstream, a.listen, a.control, a.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
