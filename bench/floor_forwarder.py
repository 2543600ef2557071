"""The floor: the least a Python gateway can do, a raw ASGI app that forwards to the upstream.

No framework: it reads the request body, sends it to ``BENCH_UPSTREAM`` plus
the same path with aiohttp (one pooled session, TCP_NODELAY), and answers
with the upstream's status, content type and body, passing a stream's
pieces on as they arrive. Whatever Echo adds beyond this is the price of
being a gateway (keys, routing, validation, usage) and of its framework.

    BENCH_UPSTREAM=http://127.0.0.1:9100 uvicorn bench.floor_forwarder:app \
        --loop uvloop --http httptools --lifespan on --no-access-log
"""

from __future__ import annotations

import os

import aiohttp

FORWARDED_HEADERS = (b"content-type", b"authorization")
session: aiohttp.ClientSession | None = None


async def _lifespan(receive, send) -> None:
    global session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
            session = aiohttp.ClientSession(
                os.environ["BENCH_UPSTREAM"],
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
            )
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    """Forward one HTTP request to the upstream (see the module docstring)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    assert session is not None, "served without the lifespan"
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {
        name.decode("latin1"): value.decode("latin1")
        for name, value in scope["headers"]
        if name in FORWARDED_HEADERS
    }
    async with session.request(
        scope["method"], scope["path"], data=bytes(body), headers=headers
    ) as upstream:
        content_type = upstream.headers.get("content-type", "application/json").encode("latin1")
        streamed = content_type.startswith(b"text/event-stream")
        if streamed:
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status,
                    "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
                }
            )
            async for piece in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        data = await upstream.read()
    await send(
        {
            "type": "http.response.start",
            "status": upstream.status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
