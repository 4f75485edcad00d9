"""HTTP/1.1 as the fault proxy speaks it: every request and response read whole, by its framing (chunked,
Content-Length, or to EOF), so that the proxy can decide about a request before any byte of it goes upstream."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

BUF = 64 * 1024
MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """A peer sent something that is not HTTP/1.1 as we speak it."""


def host_port(s: str, default_port: int = 80) -> tuple[str, int]:
    """`http://h:p`, `h:p` or `:p` -> (host, port)."""
    if "://" in s:
        u = urlsplit(s)
        return u.hostname or "127.0.0.1", u.port or default_port
    host, _, port = s.rpartition(":")
    return host or "127.0.0.1", int(port)


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
