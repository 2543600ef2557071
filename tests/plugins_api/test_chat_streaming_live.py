"""``POST /chat`` with ``"stream": true`` over real HTTP: chunks as they come, disconnects, errors.

Echo runs in uvicorn on a loopback port in this process (``live_echo``), so a
test plugin registered here serves there too, and its generator can report
what the server did to it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from plugins_api.models import ClientAPIKey
from providers.config.services import provider_config_create
from providers.errors import BadRequestError, ProviderUnavailableError
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.types import ChatRequest, ChatResponse, StreamingChunk

# Slow: a live server for every test.
pytestmark = pytest.mark.slow

DELAY_MS = 150
PROMPT = "one two three four five"


@dataclass
class Event:
    """One Server-Sent Event, with the time it arrived."""

    event: str
    data: dict[str, Any]
    arrived: float = field(default_factory=time.monotonic)


async def sse_events(response: httpx.Response) -> AsyncIterator[Event]:
    """Yield the events of RESPONSE as they arrive."""
    name, data = None, []
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "" and name is not None:
            payload = json.loads("\n".join(data))
            assert payload["type"] == name
            yield Event(name, payload)
            name, data = None, []


class Endless:
    """What the endless plugin's generator did, seen from the test thread."""

    yielded = 0
    closed = threading.Event()

    @classmethod
    def reset(cls) -> None:
        cls.yielded = 0
        cls.closed = threading.Event()


class EndlessProvider(EchoProvider):
    """Streams a word every 50 ms until someone stops it."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        try:
            while True:
                Endless.yielded += 1
                yield StreamingChunk(content=f"w{Endless.yielded} ")
                await asyncio.sleep(0.05)
        finally:
            Endless.closed.set()


class Slow:
    """What the slow plugin's call went through."""

    started = threading.Event()
    cancelled = threading.Event()

    @classmethod
    def reset(cls) -> None:
        cls.started = threading.Event()
        cls.cancelled = threading.Event()


class SlowProvider(EchoProvider):
    """Takes half a minute to answer as a whole."""

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        Slow.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            Slow.cancelled.set()
            raise
        return await super().chat_completion(request)


class RefusingProvider(EchoProvider):
    """Rejects the request before streaming anything."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        raise BadRequestError("prompt rejected by policy", status_code=400)
        yield StreamingChunk()  # pragma: no cover - makes this an async generator


class DownProvider(EchoProvider):
    """Unavailable before its first chunk: a stream may still fail over."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        raise ProviderUnavailableError("upstream answered 503", status_code=503)
        yield StreamingChunk()  # pragma: no cover - makes this an async generator


class DiesMidStreamProvider(EchoProvider):
    """Streams two pieces, then the upstream connection drops."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        yield StreamingChunk(content="partial")
        yield StreamingChunk(content=" answer")
        raise ProviderUnavailableError("connection reset by upstream")


def add_provider(name: str, cls: type[EchoProvider], **fields: Any) -> None:
    """Register CLS as plugin NAME and configure a provider of it (live once committed)."""
    runtime.registry.register(cls, name)
    provider_config_create(name=name, plugin=name, **fields)


@pytest.fixture
def providers(transactional_db) -> None:
    """Echo (slow enough to watch) as the default, and the misbehaving test providers."""
    provider_config_create(
        name="echo",
        plugin="echo",
        settings={"delay_ms": DELAY_MS, "prefix": "Echo: "},
        is_default=True,
    )
    Endless.reset()
    Slow.reset()
    add_provider("endless", EndlessProvider)
    add_provider("slow", SlowProvider)
    add_provider("refusing", RefusingProvider, fallbacks=["echo"])
    add_provider("down", DownProvider, fallbacks=["echo"])
    add_provider("dies", DiesMidStreamProvider, fallbacks=["echo"])


@pytest.fixture
async def client(
    providers: None, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the live server, sending the chat key."""
    headers = {"Authorization": f"Bearer {chat_key[1]}"}
    async with httpx.AsyncClient(base_url=live_echo.url, headers=headers, timeout=10) as http:
        yield http


async def test_chunks_arrive_one_by_one_as_the_provider_sends_them(
    client: httpx.AsyncClient,
) -> None:
    async with client.stream("POST", "/chat", json={"prompt": PROMPT, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events = [event async for event in sse_events(response)]

    chunks = [e for e in events if e.event == "chunk"]
    assert "".join(c.data["content"] for c in chunks) == f"Echo: {PROMPT}"
    assert len(chunks) == 6  # one event per word, never merged
    assert {(c.data["provider"], c.data["model"]) for c in chunks} == {("echo", "echo-1")}
    delay = DELAY_MS / 1000
    # Arrival times, not the body: the words come a provider's delay apart, and the
    # first is in the client's hands long before the stream ends. (Gaps are counted
    # rather than all required, so that a stalled test loop on a busy machine,
    # which reads two events at once, does not fail the test.)
    assert chunks[-1].arrived - chunks[0].arrived >= 3 * delay
    gaps = [b.arrived - a.arrived for a, b in zip(chunks, chunks[1:], strict=False)]
    assert sum(gap >= delay / 2 for gap in gaps) >= 3, gaps

    assert [e.event for e in events][-1] == "done"
    done = events[-1].data
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    assert (done["provider"], done["model"]) == ("echo", "echo-1")


async def test_disconnect_mid_stream_stops_the_upstream_generator(
    client: httpx.AsyncClient,
) -> None:
    body = {"prompt": "go on forever", "provider": "endless", "stream": True}
    async with client.stream("POST", "/chat", json=body) as response:
        assert response.status_code == 200
        received = []
        async for event in sse_events(response):
            received.append(event)
            if len(received) == 2:
                break
    # Leaving the block closed the connection half-way through the stream.
    assert [e.data["content"] for e in received] == ["w1 ", "w2 "]

    # Closed: its ``finally`` ran, so it can yield no more (no need to watch it stay quiet).
    closed = await asyncio.to_thread(Endless.closed.wait, 2.0)
    assert closed, f"the provider's generator is still running ({Endless.yielded} chunks)"
    assert runtime.registry.status("endless")["active_requests"] == 0


async def test_disconnect_during_a_json_answer_cancels_the_provider_call(
    client: httpx.AsyncClient,
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/chat", json={"prompt": "Hello", "provider": "slow"}, timeout=0.5)

    assert Slow.started.is_set()
    assert await asyncio.to_thread(Slow.cancelled.wait, 2.0), "the provider call kept running"
    assert runtime.registry.status("slow")["active_requests"] == 0


async def test_error_before_the_first_chunk_gets_an_honest_status(
    client: httpx.AsyncClient,
) -> None:
    body = {"prompt": "Hello", "provider": "refusing", "stream": True}
    response = await client.post("/chat", json=body)

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert (error["type"], error["provider"]) == ("bad_request", "refusing")


async def test_retryable_error_before_the_first_chunk_fails_over(
    client: httpx.AsyncClient,
) -> None:
    body = {"prompt": "Hello", "provider": "down", "stream": True}
    async with client.stream("POST", "/chat", json=body) as response:
        assert response.status_code == 200
        events = [event async for event in sse_events(response)]

    chunks = [e.data for e in events if e.event == "chunk"]
    assert "".join(c["content"] for c in chunks) == "Echo: Hello"
    assert {c["provider"] for c in chunks} == {"echo"}
    done = events[-1]
    assert done.event == "done"
    assert done.data["provider"] == "echo"
    # Tried three times (max_retries 2 by default) before failing over.
    assert done.data["fallback_path"] == [{"route": "down", "error": "unavailable", "attempts": 3}]


async def test_error_after_the_first_chunk_ends_the_stream_with_an_error_event(
    client: httpx.AsyncClient,
) -> None:
    body = {"prompt": "Hello", "provider": "dies", "stream": True}
    async with client.stream("POST", "/chat", json=body) as response:
        assert response.status_code == 200
        events = [event async for event in sse_events(response)]

    assert [e.event for e in events] == ["chunk", "chunk", "error"]
    assert "".join(e.data["content"] for e in events[:2]) == "partial answer"
    assert {e.data["provider"] for e in events[:2]} == {"dies"}  # no failover after text
    error = events[-1].data["error"]
    assert (error["type"], error["provider"]) == ("unavailable", "dies")


async def test_stream_without_a_key_is_401(live_echo: Any, providers: None) -> None:
    async with httpx.AsyncClient(base_url=live_echo.url, timeout=5) as anonymous:
        response = await anonymous.post("/chat", json={"prompt": "Hello", "stream": True})

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_required"
