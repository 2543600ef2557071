"""A minimal, fast fake OpenAI upstream for benchmarks: raw asyncio protocol, bodies encoded once.

It speaks just enough of OpenAI's API for a gateway in front of it:
``POST /v1/chat/completions`` answers a ``chat.completion`` object, or with
``"stream": true`` ``chat.completion.chunk`` Server-Sent Events (``data:``
lines, a usage chunk when ``stream_options.include_usage`` is set, then
``data: [DONE]``); ``GET /v1/models`` lists one model. HTTP/1.1 keep-alive,
``Content-Length`` or chunked request bodies, TCP_NODELAY on every socket,
each distinct answer encoded once and cached.

The shape of an answer (latency before the first byte, number of content
chunks, interval between chunks) has defaults from the command line; a
request can override them in its last message's text, which every gateway
passes through unchanged: ``bench latency_ms=0 chunks=20 interval_ms=50``.
Every content piece contains ``CONTENT_MARKER`` so that a client can tell a
text chunk from the rest of a stream, whatever wire format a gateway re-encodes it in.

    python -m bench.fast_upstream --port 9100 [--latency-ms 0] [--chunks 8] [--interval-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
from dataclasses import dataclass

CONTENT_MARKER = "zq"
MODEL = "gpt-4o-mini"
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
_SHAPE_WORD = re.compile(r"\b(latency_ms|chunks|interval_ms)=(\d+(?:\.\d+)?)")


@dataclass(frozen=True, slots=True)
class Shape:
    """How an answer is served: LATENCY_MS before the first byte, CHUNKS pieces INTERVAL_MS apart."""

    latency_ms: float = 0.0
    chunks: int = 8
    interval_ms: float = 0.0

    def overridden_by(self, text: str) -> Shape:
        """Return this shape with the ``name=value`` words found in TEXT applied (bounded)."""
        values = {
            "latency_ms": self.latency_ms,
            "chunks": self.chunks,
            "interval_ms": self.interval_ms,
        }
        for name, value in _SHAPE_WORD.findall(text[:4096]):
            values[name] = float(value)
        return Shape(
            latency_ms=min(float(values["latency_ms"]), 60_000.0),
            chunks=max(1, min(int(values["chunks"]), 10_000)),
            interval_ms=min(float(values["interval_ms"]), 60_000.0),
        )


def content_pieces(chunks: int) -> list[str]:
    """Return the CHUNKS pieces of text an answer is made of (each holds the marker)."""
    return [f"{'' if i == 0 else ' '}{CONTENT_MARKER}{i}" for i in range(chunks)]


def _response_head(status: str, content_type: str, length: int | None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{framing}\r\n"
        "connection: keep-alive\r\n\r\n"
    ).encode()


def _whole(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return _response_head(status, content_type, len(body)) + body


def completion_response(chunks: int) -> bytes:
    """Return the whole HTTP response of a non-streamed answer of CHUNKS pieces."""
    text = "".join(content_pieces(chunks))
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks},
        "system_fingerprint": "fp_bench",
    }
    return _whole("200 OK", json.dumps(body, separators=(",", ":")).encode())


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_frames(chunks: int, include_usage: bool) -> list[bytes]:
    """Return a streamed answer as HTTP frames: the head with the role chunk, one per piece, the end.

    Each frame is written at once; with an interval the pieces are spaced by it.
    """
    head = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
    }
    if include_usage:
        head["usage"] = None

    def event(payload: dict) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return event({**head, "choices": [choice]})

    opening = _response_head("200 OK", "text/event-stream", None) + _chunked(
        chunk({"role": "assistant", "content": ""})
    )
    pieces = [_chunked(chunk({"content": piece})) for piece in content_pieces(chunks)]
    ending = chunk({}, "stop")
    if include_usage:
        usage = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}
        ending += event({**head, "choices": [], "usage": usage})
    ending += b"data: [DONE]\n\n"
    return [opening, *pieces, _chunked(ending) + b"0\r\n\r\n"]


MODELS_RESPONSE = _whole(
    "200 OK",
    json.dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}],
        }
    ).encode(),
)
NOT_FOUND = _whole(
    "404 Not Found",
    b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}',
)
BAD_REQUEST = _whole(
    "400 Bad Request",
    b'{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}',
)


class Answers:
    """Encoded answers, made once per shape and kept (the shapes a benchmark uses are few)."""

    def __init__(self) -> None:
        self._whole: dict[int, bytes] = {}
        self._streams: dict[tuple[int, bool], list[bytes]] = {}

    def whole(self, chunks: int) -> bytes:
        found = self._whole.get(chunks)
        if found is None:
            found = self._whole[chunks] = completion_response(chunks)
        return found

    def stream(self, chunks: int, include_usage: bool) -> list[bytes]:
        key = (chunks, include_usage)
        found = self._streams.get(key)
        if found is None:
            found = self._streams[key] = stream_frames(chunks, include_usage)
        return found


def _last_message_text(body: dict) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return ""
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests in order, answer each from the encoded answers."""

    def __init__(self, shape: Shape, answers: Answers) -> None:
        self.shape = shape
        self.answers = answers
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a streamed answer is still being written
        self.pending: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in self.pending:
            handle.cancel()
        self.pending.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_HEAD_BYTES + MAX_BODY_BYTES:
            self._fail()
            return
        self._serve_buffered()

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def _serve_buffered(self) -> None:
        while not self.busy and self.transport is not None:
            request = self._take_request()
            if request is None:
                return
            self._answer(*request)

    def _take_request(self) -> tuple[bytes, bytes, bytes] | None:
        """Remove one whole request from the buffer: (method, path, body); None if incomplete."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._fail()
            return None
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            self._fail()
            return None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            decoded = self._dechunk(start)
            if decoded is None:
                return None
            body, consumed = decoded
        else:
            try:
                length = int(headers.get(b"content-length", b"0"))
            except ValueError:
                self._fail()
                return None
            if length < 0 or length > MAX_BODY_BYTES:
                self._fail()
                return None
            if len(self.buffer) < start + length:
                return None
            body, consumed = bytes(self.buffer[start : start + length]), start + length
        del self.buffer[:consumed]
        return parts[0], parts[1], body

    def _dechunk(self, start: int) -> tuple[bytes, int] | None:
        body = bytearray()
        position = start
        while True:
            line_end = self.buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            try:
                size = int(bytes(self.buffer[position:line_end]).split(b";")[0], 16)
            except ValueError:
                self._fail()
                return None
            data_start = line_end + 2
            if size == 0:
                if self.buffer[data_start : data_start + 2] == b"\r\n":
                    return bytes(body), data_start + 2
                trailers_end = self.buffer.find(b"\r\n\r\n", line_end)
                return None if trailers_end < 0 else (bytes(body), trailers_end + 4)
            if len(self.buffer) < data_start + size + 2:
                return None
            body += self.buffer[data_start : data_start + size]
            position = data_start + size + 2

    def _answer(self, method: bytes, path: bytes, raw: bytes) -> None:
        assert self.transport is not None
        path = path.split(b"?")[0]
        if method == b"GET" and path.endswith(b"/models"):
            self.transport.write(MODELS_RESPONSE)
            return
        if method != b"POST" or not path.endswith(b"/chat/completions"):
            self.transport.write(NOT_FOUND)
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self.transport.write(BAD_REQUEST)
            return
        shape = self.shape.overridden_by(_last_message_text(body))
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            frames = self.answers.stream(shape.chunks, include_usage)
            self._write_stream(frames, shape)
        else:
            self._write_later(self.answers.whole(shape.chunks), shape.latency_ms)

    def _write_later(self, data: bytes, delay_ms: float) -> None:
        assert self.transport is not None
        if delay_ms <= 0:
            self.transport.write(data)
            return
        self.busy = True

        def write() -> None:
            self.pending.clear()
            self.busy = False
            if self.transport is not None:
                self.transport.write(data)
                self._serve_buffered()

        self.pending.append(asyncio.get_running_loop().call_later(delay_ms / 1000, write))

    def _write_stream(self, frames: list[bytes], shape: Shape) -> None:
        assert self.transport is not None
        if shape.interval_ms <= 0:
            self._write_later(b"".join(frames), shape.latency_ms)
            return
        loop = asyncio.get_running_loop()
        self.busy = True
        # The opening and first piece go together; then one piece per interval, the end with the last.
        groups = [frames[0] + frames[1], *frames[2:-2], frames[-2] + frames[-1]]
        if len(frames) == 3:  # one piece: opening, piece and end at once
            groups = [b"".join(frames)]
        start = loop.time() + shape.latency_ms / 1000
        interval = shape.interval_ms / 1000

        def write(index: int) -> None:
            if self.transport is None:
                return
            self.transport.write(groups[index])
            if index + 1 < len(groups):
                self.pending[:] = [loop.call_at(start + (index + 1) * interval, write, index + 1)]
            else:
                self.pending.clear()
                self.busy = False
                self._serve_buffered()

        self.pending[:] = [loop.call_at(start, write, 0)]


async def serve(host: str, port: int, shape: Shape) -> asyncio.Server:
    """Start the upstream on HOST:PORT (0: any free port) and return its server."""
    answers = Answers()
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: UpstreamProtocol(shape, answers), host, port, backlog=4096, reuse_address=True
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    shape = Shape(args.latency_ms, args.chunks, args.interval_ms)

    async def run() -> None:
        server = await serve(args.host, args.port, shape)
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # the faster loop when it is installed (it is in Echo's .venv)

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
