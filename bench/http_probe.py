"""A lean HTTP/1.1 client for latency probes: one kept-alive connection, arrival time of each text chunk.

Standard library only (asyncio streams), so that the client costs the same
whichever system it measures and adds little beside it. ``exchange`` sends
one request and returns when the response is whole: its status, total time,
and for a stream the arrival time of every event that carries the fake
upstream's ``CONTENT_MARKER`` (an SSE event, whatever the gateway's format).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field

from bench.fast_upstream import CONTENT_MARKER

MARKER = CONTENT_MARKER.encode()
READ_SIZE = 256 * 1024


class ProbeError(Exception):
    """The server closed the connection or sent something that is not HTTP/1.1."""


@dataclass(slots=True)
class Exchange:
    """One request's outcome; times in ms from just before the request was written."""

    status: int
    total_ms: float
    chunk_ms: list[float] = field(default_factory=list)
    body: bytes = b""

    @property
    def first_chunk_ms(self) -> float | None:
        return self.chunk_ms[0] if self.chunk_ms else None


def post_request(host: str, port: int, path: str, payload: dict, headers: dict[str, str]) -> bytes:
    """Return the bytes of ``POST PATH`` with PAYLOAD as JSON and HEADERS (encoded once, reused)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        "accept: */*",
        f"content-length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get_request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    """Return the bytes of ``GET PATH`` with HEADERS."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"host: {host}:{port}",
        "accept: */*",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class EventCounter:
    """Split a streamed body into events (blank-line separated) and time those carrying the marker."""

    def __init__(self, started: float, keep_body: bool) -> None:
        self.started = started
        self.pending = b""
        self.times: list[float] = []
        self.keep_body = keep_body
        self.body = bytearray()

    def feed(self, data: bytes, now: float) -> None:
        if self.keep_body:
            self.body += data
        self.pending = (self.pending + data).replace(b"\r\n", b"\n")
        *events, self.pending = self.pending.split(b"\n\n")
        stamp = (now - self.started) * 1000
        self.times.extend(stamp for event in events if MARKER in event)

    def finish(self, now: float) -> None:
        if MARKER in self.pending:  # a last event without its blank line
            self.times.append((now - self.started) * 1000)
        self.pending = b""


class HttpConnection:
    """One kept-alive HTTP/1.1 connection to HOST:PORT, opened on first use and after a close."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = b""

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def _read(self) -> bytes:
        assert self.reader is not None
        data = await self.reader.read(READ_SIZE)
        if not data:
            raise ProbeError("connection closed by the server")
        return data

    async def exchange(self, request: bytes, *, keep_body: bool = False) -> Exchange:
        """Send REQUEST and read its whole response (see the module docstring)."""
        if self.writer is None:
            await self.open()
        assert self.writer is not None
        started = time.perf_counter()
        self.writer.write(request)
        counter = EventCounter(started, keep_body)
        buffer = self.buffer
        while b"\r\n\r\n" not in buffer:
            buffer += await self._read()
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            raise ProbeError(f"not an HTTP response: {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        close_after = headers.get(b"connection") == b"close"
        if headers.get(b"transfer-encoding") == b"chunked":
            rest = await self._read_chunked(rest, counter)
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            while len(rest) < length:
                rest += await self._read()
            counter.feed(rest[:length], time.perf_counter())
            rest = rest[length:]
        else:  # delimited by the close
            counter.feed(rest, time.perf_counter())
            try:
                while True:
                    counter.feed(await self._read(), time.perf_counter())
            except ProbeError:
                pass
            close_after = True
            rest = b""
        ended = time.perf_counter()
        counter.finish(ended)
        self.buffer = rest
        if close_after:
            await self.close()
        return Exchange(
            status=status,
            total_ms=(ended - started) * 1000,
            chunk_ms=counter.times,
            body=bytes(counter.body),
        )

    async def _read_chunked(self, buffer: bytes, counter: EventCounter) -> bytes:
        """Read a chunked body, feeding COUNTER as data arrives; return what follows it."""
        now = time.perf_counter()
        while True:
            line_end = buffer.find(b"\r\n")
            while line_end < 0:
                buffer += await self._read()
                now = time.perf_counter()
                line_end = buffer.find(b"\r\n")
            try:
                size = int(buffer[:line_end].split(b";")[0], 16)
            except ValueError:
                raise ProbeError("bad chunk size") from None
            if size == 0:
                while (
                    buffer.find(b"\r\n\r\n", line_end) < 0
                    and buffer[line_end + 2 : line_end + 4] != b"\r\n"
                ):
                    buffer += await self._read()
                if buffer[line_end + 2 : line_end + 4] == b"\r\n":
                    return buffer[line_end + 4 :]
                return buffer[buffer.find(b"\r\n\r\n", line_end) + 4 :]
            while len(buffer) < line_end + 2 + size + 2:
                buffer += await self._read()
                now = time.perf_counter()
            counter.feed(buffer[line_end + 2 : line_end + 2 + size], now)
            buffer = buffer[line_end + 2 + size + 2 :]
