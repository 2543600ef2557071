"""Soak: hundreds of concurrent requests through a primary that fails 30% of the time.

Over real HTTP, a FakeOpenAI primary fails a seeded random 30% of its chat
requests with a 503, and a FakeAnthropic fallback is healthy. No client may
see a failure, and every upstream call must be accounted for: the calls the
fakes received are the attempts the answers report, and each failure on the
primary was followed by a retry or a failover. The breaker keeps its default
settings: concurrent successes seldom let five failures in a row through,
and when they do, the skipped routes must be accounted for too. Waits are
skipped (a no-op sleep) to keep the run short.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from providers.plugins.anthropic_provider import AnthropicProvider
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime.manager import ModelManager
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest

# Slow: a soak under load.
pytestmark = pytest.mark.slow

REQUESTS = 300
CONCURRENCY = 50
FAILURE_RATE = 0.3
KEY = "sk-soak-000000000000"
CHAT = "/v1/chat/completions"


async def no_wait(seconds: float) -> None:
    """Skip the backoff: the soak is about accounting, not timing."""


async def test_a_flaky_primary_under_load_loses_no_request_and_every_call_is_counted() -> None:
    with FakeOpenAI() as primary, FakeAnthropic() as fallback:
        registry = ProviderRegistry()
        registry.register(OpenAIProvider, "openai", source="builtin")
        registry.register(AnthropicProvider, "anthropic", source="builtin")
        routing = {"max_retries": 1}
        await registry.apply(
            ProviderSpec(
                "openai",
                "openai",
                {"base_url": primary.base_url, "api_key": KEY, **routing},
                fallbacks=("anthropic",),
            )
        )
        await registry.apply(
            ProviderSpec("anthropic", "anthropic", {"base_url": fallback.base_url, "api_key": KEY})
        )
        manager = ModelManager(registry, sleep=no_wait, rng=random.Random(11))
        primary.fail_at_random(FAILURE_RATE, seed=20240601, path=CHAT)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(number: int) -> dict:
            """Send request NUMBER (every third one streamed); return its answer's metadata."""
            request = ChatRequest(messages=[ChatMessage(role="user", content=f"soak {number}")])
            async with gate:
                if number % 3:
                    response = await manager.chat_completion(request, "openai")
                    assert response.content == f"You said: soak {number}"
                    return {"provider": response.provider, **response.metadata}
                chunks = [c async for c in manager.chat_completion_stream(request, "openai")]
                assert "".join(c.content for c in chunks) == f"You said: soak {number}"
                return dict(chunks[-1].metadata)

        started = time.monotonic()
        results = await asyncio.gather(*(one(n) for n in range(REQUESTS)), return_exceptions=True)
        elapsed = time.monotonic() - started
        state = manager.provider_state("openai")
        await registry.shutdown_all()

    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], f"{len(failures)} client-visible failures, first: {failures[:1]!r}"
    assert elapsed < 30

    primary_calls = len(primary.requests_to(CHAT))
    fallback_calls = len(fallback.requests_to("/v1/messages"))
    # Every upstream call is one attempt some answer reports, and the other way round.
    assert sum(r["attempts"] for r in results) == primary_calls + fallback_calls
    by_fallback = [r for r in results if r["provider"] == "anthropic"]
    assert fallback_calls == len(by_fallback)  # the healthy fallback answers at once
    assert primary_calls - primary.random_faults_served == REQUESTS - len(by_fallback)

    # Every failure was on the primary, and each was followed by a retry there or a
    # failover: the primary's calls after the first of a request, or the move to the
    # fallback once the primary was given up.
    failed_calls = sum(r["attempts"] - 1 for r in results)
    assert failed_calls == primary.random_faults_served
    given_up = [s for r in results for s in r.get("fallback_path", []) if s["attempts"] > 0]
    by_primary = [r for r in results if r["provider"] == "openai"]
    retried = sum(r["attempts"] - 1 for r in by_primary) + sum(s["attempts"] - 1 for s in given_up)
    assert retried + len(given_up) == failed_calls
    # An answer from the primary after retries reports each wait it took.
    assert all(len(r.get("retries", [])) == r["attempts"] - 1 for r in by_primary)
    skipped = [s for r in results for s in r.get("fallback_path", []) if s["attempts"] == 0]
    assert all(s["error"] == "circuit_open" for s in skipped)
    assert state["counters"]["attempts"] == primary_calls
    assert state["counters"]["failures"] == primary.random_faults_served

    # The load really was what the test says: many failures, retries and failovers.
    assert 0.2 < primary.random_faults_served / primary_calls < 0.4
    assert retried > 20 and len(given_up) > 10
