"""Fault injection over real HTTP: the ModelManager against misbehaving fake upstreams.

The primary is a FakeOpenAI, its fallback a FakeAnthropic, both on loopback;
faults are injected into the primary and what each fake received is counted.
Waits go through a recording sleep (or the real clock where timing itself is
the point), and breakers run on a clock the test moves.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from plugins_api.edge.sse import chat_event_stream
from providers.errors import ProtocolError
from providers.plugins.anthropic_provider import AnthropicProvider
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime.manager import ModelManager
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest
from tests.fake_time import FakeClock, RecordedSleep

KEY = "sk-resilience-0000000000"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


class Upstreams:
    """The two fakes and a registry with ``openai`` failing over to ``anthropic``."""

    def __init__(self, primary: FakeOpenAI, fallback: FakeAnthropic) -> None:
        self.primary = primary
        self.fallback = fallback
        self.registry = ProviderRegistry()
        self.registry.register(OpenAIProvider, "openai", source="builtin")
        self.registry.register(AnthropicProvider, "anthropic", source="builtin")

    async def configure(self, **routing: Any) -> None:
        """(Re)load both providers, the primary with the ROUTING settings."""
        primary = {"base_url": self.primary.base_url, "api_key": KEY, **routing}
        await self.registry.apply(
            ProviderSpec("openai", "openai", primary, fallbacks=("anthropic",))
        )
        await self.registry.apply(
            ProviderSpec(
                "anthropic", "anthropic", {"base_url": self.fallback.base_url, "api_key": KEY}
            )
        )

    def manager(self, **kwargs: Any) -> ModelManager:
        return ModelManager(self.registry, **kwargs)

    @property
    def primary_calls(self) -> int:
        return len(self.primary.requests_to(CHAT))

    @property
    def fallback_calls(self) -> int:
        return len(self.fallback.requests_to(MESSAGES))


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    with FakeOpenAI() as primary, FakeAnthropic() as fallback:
        upstreams = Upstreams(primary, fallback)
        await upstreams.configure()
        yield upstreams
        await upstreams.registry.shutdown_all()


def ask(text: str = "one two three four five", *, stream: bool = False) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], stream=stream)


# --- 500 and 429 with Retry-After ---------------------------------------------------


async def test_500_then_429_are_retried_and_the_wait_follows_retry_after(upstreams) -> None:
    sleep = RecordedSleep()
    manager = upstreams.manager(sleep=sleep, rng=random.Random(7))
    upstreams.primary.inject(status=500)
    upstreams.primary.inject(status=429, retry_after=1.5)

    response = await manager.chat_completion(ask(), "openai")

    assert (response.provider, response.content) == ("openai", "You said: one two three four five")
    assert response.metadata["attempts"] == 3
    assert [r["error"] for r in response.metadata["retries"]] == ["unavailable", "rate_limited"]
    backoff, retry_after = sleep.waits
    assert 0 <= backoff <= 0.25
    assert retry_after == 1.5
    assert (upstreams.primary_calls, upstreams.fallback_calls) == (3, 0)


async def test_a_primary_that_keeps_failing_fails_over_and_every_request_succeeds(
    upstreams,
) -> None:
    # Fifteen failures in a row would open the breaker (test_the_breaker_...): not here.
    await upstreams.configure(breaker_failure_threshold=100)
    sleep = RecordedSleep()
    manager = upstreams.manager(sleep=sleep, rng=random.Random(7))
    for _ in range(5):
        upstreams.primary.inject(status=500)
        upstreams.primary.inject(status=429, retry_after=0.75)
        upstreams.primary.inject(status=503)

    responses = [await manager.chat_completion(ask(f"request {n}"), "openai") for n in range(5)]

    assert [r.provider for r in responses] == ["anthropic"] * 5
    assert [r.content for r in responses] == [f"You said: request {n}" for n in range(5)]
    for response in responses:
        assert response.metadata["fallback_path"] == [
            {"route": "openai", "error": "unavailable", "attempts": 3}
        ]
        assert response.metadata["attempts"] == 4
    assert sleep.waits[1::2] == [0.75] * 5  # each request's second wait is the Retry-After
    assert (upstreams.primary_calls, upstreams.fallback_calls) == (15, 5)


async def test_retry_after_is_waited_for_in_real_time(upstreams) -> None:
    manager = upstreams.manager()  # the real asyncio.sleep
    upstreams.primary.inject(status=429, retry_after=0.2)
    started = time.monotonic()

    response = await manager.chat_completion(ask(), "openai")

    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.6
    assert response.provider == "openai" and response.metadata["attempts"] == 2
    first, second = upstreams.primary.requests_to(CHAT)
    assert first.body == second.body


# --- a hanging primary --------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_hanging_primary_fails_over_inside_the_deadline(upstreams, stream) -> None:
    await upstreams.configure(deadline_seconds=1)
    manager = upstreams.manager()
    upstreams.primary.inject(delay=5)
    started = time.monotonic()

    if stream:
        chunks = [c async for c in manager.chat_completion_stream(ask(stream=True), "openai")]
        answered, metadata = chunks[-1].metadata["provider"], chunks[-1].metadata
        text = "".join(c.content for c in chunks)
    else:
        response = await manager.chat_completion(ask(), "openai")
        answered, metadata, text = response.provider, response.metadata, response.content

    elapsed = time.monotonic() - started
    assert elapsed < 1 + 0.3
    assert answered == "anthropic" and text == "You said: one two three four five"
    assert metadata["fallback_path"] == [{"route": "openai", "error": "timeout", "attempts": 1}]
    assert (upstreams.primary_calls, upstreams.fallback_calls) == (1, 1)


# --- circuit breaker ----------------------------------------------------------------


async def test_the_breaker_opens_keeps_traffic_away_then_lets_one_probe_through(
    upstreams,
) -> None:
    await upstreams.configure(
        max_retries=0, breaker_failure_threshold=3, breaker_cooldown_seconds=30
    )
    clock = FakeClock()
    manager = upstreams.manager(sleep=RecordedSleep(), clock=clock)
    primary = upstreams.primary
    primary.inject(status=503, times=1000)

    for _ in range(3):
        assert (await manager.chat_completion(ask(), "openai")).provider == "anthropic"
    assert upstreams.primary_calls == 3
    assert manager.breaker("openai").state == "open"

    # Open: the primary sees nothing, every request goes straight to the fallback.
    responses = await asyncio.gather(*(manager.chat_completion(ask(), "openai") for _ in range(10)))
    assert upstreams.primary_calls == 3
    assert {r.provider for r in responses} == {"anthropic"}
    assert responses[0].metadata["fallback_path"] == [
        {"route": "openai", "error": "circuit_open", "attempts": 0}
    ]

    # Half-open: of five requests at once, exactly one probes the primary (still failing).
    clock.now += 30
    primary.reset()
    primary.inject(status=503, delay=0.3, times=1000)
    responses = await asyncio.gather(*(manager.chat_completion(ask(), "openai") for _ in range(5)))
    assert upstreams.primary_calls == 1
    assert {r.provider for r in responses} == {"anthropic"}
    assert manager.breaker("openai").state == "open"

    # The next probe finds the primary well again: the breaker closes.
    clock.now += 30
    primary.reset()
    assert (await manager.chat_completion(ask(), "openai")).provider == "openai"
    assert manager.breaker("openai").state == "closed"
    assert (await manager.chat_completion(ask(), "openai")).provider == "openai"
    assert upstreams.primary_calls == 2


# --- a stream cut short ---------------------------------------------------------------


async def test_a_stream_cut_after_its_third_chunk_ends_with_an_error_and_no_failover(
    upstreams,
) -> None:
    manager = upstreams.manager(sleep=RecordedSleep())
    # The upstream's first event carries only the role: three text events, then the cut.
    upstreams.primary.inject(truncate_after=4)

    received = []
    with pytest.raises(ProtocolError) as caught:
        async for chunk in manager.chat_completion_stream(ask(stream=True), "openai"):
            received.append(chunk)

    assert [c.content for c in received] == ["You", " said:", " one"]
    assert {c.metadata["provider"] for c in received} == {"openai"}
    assert caught.value.provider == "openai"
    assert (upstreams.primary_calls, upstreams.fallback_calls) == (1, 0)
    assert manager._sleep.waits == []


async def test_the_cut_stream_reaches_the_client_as_three_chunks_and_an_error_event(
    upstreams,
) -> None:
    manager = upstreams.manager(sleep=RecordedSleep())
    upstreams.primary.inject(truncate_after=4)

    chunks = manager.chat_completion_stream(ask(stream=True), "openai")
    first = await anext(chunks)  # as the chat view does, before it answers 200
    events = [sse async for sse in chat_event_stream(first, chunks)]

    parsed = [json.loads(e.decode().split("data: ", 1)[1]) for e in events]
    assert [p["type"] for p in parsed] == ["chunk", "chunk", "chunk", "error"]
    assert "".join(p["content"] for p in parsed[:3]) == "You said: one"
    assert parsed[-1]["error"]["type"] == "protocol_error"
    assert parsed[-1]["error"]["provider"] == "openai"
    assert upstreams.fallback_calls == 0


# --- authentication ------------------------------------------------------------------


async def test_an_auth_failure_is_not_retried_and_fails_over(upstreams) -> None:
    manager = upstreams.manager(sleep=RecordedSleep())
    upstreams.primary.inject(status=401, message="Incorrect API key provided.", times=10)

    response = await manager.chat_completion(ask(), "openai")

    assert response.provider == "anthropic"
    assert (upstreams.primary_calls, upstreams.fallback_calls) == (1, 1)
    assert response.metadata["fallback_path"] == [
        {"route": "openai", "error": "authentication_error", "attempts": 1}
    ]
    state = manager.provider_state("openai")
    assert state["misconfigured"] is True
    assert "Incorrect API key provided." in state["misconfigured_reason"]
