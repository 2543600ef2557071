"""The benchmark's fast upstream speaks OpenAI's wire over real HTTP, to a real client."""

from __future__ import annotations

import json

import httpx
import pytest

from bench import fast_upstream
from bench.http_probe import HttpConnection, post_request


@pytest.fixture
async def upstream():
    server = await fast_upstream.serve("127.0.0.1", 0, fast_upstream.Shape(chunks=4))
    port = server.sockets[0].getsockname()[1]
    yield port
    server.close()
    await server.wait_closed()


def chat(prompt: str, **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **extra}


async def test_a_chat_completion_is_openai_json(upstream):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{upstream}/v1") as client:
        response = await client.post("/chat/completions", json=chat("hello"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"] == "zq0 zq1 zq2 zq3"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}


async def test_a_stream_is_sse_chunks_ending_in_done(upstream):
    events = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{upstream}/v1") as client:
        body = chat("bench chunks=3", stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            async for line in response.aiter_lines():
                if line:
                    assert line.startswith("data: ")
                    events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "zq0 zq1 zq2"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_the_prompt_sets_latency_and_chunk_interval(upstream):
    connection = HttpConnection("127.0.0.1", upstream)
    request = post_request(
        "127.0.0.1",
        upstream,
        "/v1/chat/completions",
        chat("bench latency_ms=40 chunks=3 interval_ms=30", stream=True),
        {"authorization": "Bearer x"},
    )
    answer = await connection.exchange(request)
    whole = await connection.exchange(
        post_request("127.0.0.1", upstream, "/v1/chat/completions", chat("latency_ms=40"), {})
    )
    await connection.close()
    assert answer.status == 200 and len(answer.chunk_ms) == 3
    # Arrival times only move later under load (two chunks may then be read together),
    # so the interval shows as the last chunk's earliest possible arrival: 40 + 2 x 30 ms.
    assert answer.chunk_ms[0] >= 39
    assert 39 + 2 * 25 <= answer.chunk_ms[2] <= 2000
    assert whole.status == 200 and whole.total_ms >= 39


async def test_chunked_request_bodies_models_and_errors(upstream):
    async def pieces():
        yield json.dumps(chat("bench chunks=2"))[:10].encode()
        yield json.dumps(chat("bench chunks=2"))[10:].encode()

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{upstream}/v1") as client:
        chunked = await client.post("/chat/completions", content=pieces())
        models = await client.get("/models")
        missing = await client.get("/nowhere")
        broken = await client.post("/chat/completions", content=b"{not json")
        after = await client.post("/chat/completions", json=chat("still served"))
    assert chunked.status_code == 200
    assert chunked.json()["choices"][0]["message"]["content"] == "zq0 zq1"
    assert models.json()["data"][0]["id"] == "gpt-4o-mini"
    assert missing.status_code == 404 and "error" in missing.json()
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    assert after.status_code == 200


def test_shapes_from_the_prompt_are_bounded():
    shape = fast_upstream.Shape().overridden_by("chunks=99999999 interval_ms=1e9 latency_ms=5")
    assert shape.chunks == 10_000
    assert shape.latency_ms == 5
    assert fast_upstream.Shape().overridden_by("chunks=0").chunks == 1
