"""Websocket probes of Echo's chat consumer (``/ws/chat/``): one answer at a time, and many at once.

A key client authenticates with ``Authorization: Bearer`` on the handshake
(no ``Origin``: no browser page can set that header). After the server's
``providers`` frame, each question is a ``chat`` frame; the answer is
``start``, one ``chunk`` per piece of text, then ``done`` (or ``error``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

from bench.fast_upstream import CONTENT_MARKER


@dataclass(slots=True)
class Answer:
    """One answer over a socket; times in ms from just before the chat frame was sent."""

    ok: bool
    total_ms: float
    chunk_ms: list[float] = field(default_factory=list)
    error: str | None = None


async def open_socket(port: int, key: str) -> ClientConnection:
    """Open a chat socket on PORT as the client with KEY, and read its ``providers`` frame."""
    socket = await connect(
        f"ws://127.0.0.1:{port}/ws/chat/",
        additional_headers={"Authorization": f"Bearer {key}"},
        compression=None,
        open_timeout=60,
        ping_interval=None,
        max_size=2**22,
    )
    frame = json.loads(await socket.recv())
    if frame.get("type") != "providers":
        await socket.close()
        raise RuntimeError(f"expected the providers frame, got {str(frame)[:200]}")
    return socket


async def ask(socket: ClientConnection, message: str, provider: str, timeout: float = 60) -> Answer:
    """Ask MESSAGE of PROVIDER in a new conversation on SOCKET and read the answer to its end."""
    frame = json.dumps(
        {"type": "chat", "conversation": None, "message": message, "provider": provider}
    )
    started = time.perf_counter()
    chunks: list[float] = []
    await socket.send(frame)
    try:
        async with asyncio.timeout(timeout):
            while True:
                text = await socket.recv()
                now = (time.perf_counter() - started) * 1000
                if CONTENT_MARKER in text and '"type":"chunk"' in text:
                    chunks.append(now)
                    continue
                kind = json.loads(text).get("type")
                if kind == "done":
                    return Answer(ok=True, total_ms=now, chunk_ms=chunks)
                if kind == "error":
                    return Answer(ok=False, total_ms=now, chunk_ms=chunks, error=text[:300])
    except TimeoutError:
        return Answer(ok=False, total_ms=timeout * 1000, chunk_ms=chunks, error="timeout")
    except Exception as exc:  # the socket closed under the answer
        elapsed = (time.perf_counter() - started) * 1000
        return Answer(ok=False, total_ms=elapsed, chunk_ms=chunks, error=type(exc).__name__)
