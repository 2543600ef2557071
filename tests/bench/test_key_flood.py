"""``bench.key_flood`` against a small server that knows one key: the report's figures are the server's answers."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from bench.key_flood import measure

VALID = "echo-valid-key"


async def serve(valid_status: int = 200) -> tuple[web.AppRunner, str]:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        if request.headers.get("Authorization") == f"Bearer {VALID}":
            return web.json_response({"ok": True}, status=valid_status)
        await asyncio.sleep(0.001)
        return web.json_response({"error": "unknown key"}, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def test_the_report_counts_the_valid_calls_and_the_made_up_keys_answers() -> None:
    async def scenario() -> dict:
        runner, url = await serve()
        try:
            return await measure(url, VALID, model="m", connections=5, seconds=0.3)
        finally:
            await runner.cleanup()

    report = asyncio.run(scenario())
    assert report["valid_alone"]["calls"] > 0 and report["valid_during_flood"]["calls"] > 0
    assert report["valid_alone"]["p50_ms"] <= report["valid_alone"]["p99_ms"]
    assert report["made_up_answered"] > 0
    assert report["made_up_statuses"] == {"401": report["made_up_answered"]}


def test_a_valid_key_that_is_refused_stops_the_measure() -> None:
    async def scenario() -> None:
        runner, url = await serve(valid_status=401)
        try:
            await measure(url, VALID, model="m", connections=2, seconds=0.2)
        finally:
            await runner.cleanup()

    with pytest.raises(RuntimeError, match="answered 401"):
        asyncio.run(scenario())
