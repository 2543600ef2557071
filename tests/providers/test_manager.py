"""ModelManager: routing, retries, failover along the fallback chain, breakers and deadlines.

In-process providers here, so that each rule is seen alone and fast; the
same rules over real HTTP against the fake upstreams are in
``test_resilience.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from providers.errors import (
    AuthenticationError,
    BadRequestError,
    ModelNotFoundError,
    PluginError,
    ProtocolError,
    ProviderNotFoundError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    UnsupportedCapabilityError,
)
from providers.plugins.anthropic_provider import AnthropicProvider
from providers.plugins.echo_provider import EchoProvider
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime.manager import ModelManager, Route
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest, StreamingChunk, ToolCall
from tests.fake_time import FakeClock, RecordedSleep


class DownProvider(EchoProvider):
    """Fails every call with a retryable error, counting the calls."""

    calls = 0

    async def chat_completion(self, request):
        type(self).calls += 1
        raise ProviderUnavailableError("upstream 503", status_code=503)

    async def chat_completion_stream(self, request):
        type(self).calls += 1
        raise ProviderUnavailableError("upstream 503", status_code=503)
        yield  # pragma: no cover - makes this an async generator


class FlakyProvider(EchoProvider):
    """Fails its first two calls, then answers."""

    calls = 0

    async def chat_completion(self, request):
        type(self).calls += 1
        if type(self).calls <= 2:
            raise ProviderUnavailableError("upstream 502", status_code=502)
        return await super().chat_completion(request)

    async def chat_completion_stream(self, request):
        type(self).calls += 1
        if type(self).calls <= 2:
            raise ProviderTimeoutError("read timed out")
        async for chunk in super().chat_completion_stream(request):
            yield chunk


class ThrottledProvider(EchoProvider):
    """Rate-limits every call, asking for the wait in its ``retry_after`` setting."""

    calls = 0

    def get_config_schema(self):
        schema = super().get_config_schema()
        schema["properties"]["retry_after"] = {"type": "number", "title": "Retry-After to send"}
        return schema

    async def chat_completion(self, request):
        type(self).calls += 1
        raise RateLimitError("slow down", status_code=429, retry_after=self.config["retry_after"])


class RejectingProvider(EchoProvider):
    """Rejects every request as malformed: retrying elsewhere cannot help."""

    calls = 0

    async def chat_completion(self, request):
        type(self).calls += 1
        raise BadRequestError("messages: too long")


class LockedOutProvider(EchoProvider):
    """Its key was revoked: every call is refused as unauthenticated."""

    calls = 0

    async def chat_completion(self, request):
        type(self).calls += 1
        raise AuthenticationError("Incorrect API key provided.", status_code=401)


class LeakyProvider(EchoProvider):
    """Has a key, and an upstream that quotes it back when it refuses it."""

    def get_config_schema(self):
        schema = super().get_config_schema()
        schema["properties"]["api_key"] = {"type": "string", "writeOnly": True}
        return schema

    async def chat_completion(self, request):
        raise AuthenticationError(f"Incorrect API key provided: {self.config['api_key']}")


class HangingProvider(EchoProvider):
    """Never answers (an upstream that accepted the connection and went silent)."""

    async def chat_completion(self, request):
        await asyncio.sleep(3600)

    async def chat_completion_stream(self, request):
        await asyncio.sleep(3600)
        yield StreamingChunk(content="never")  # pragma: no cover


class DiesMidStream(EchoProvider):
    """Streams one word, then the upstream goes away."""

    async def chat_completion_stream(self, request):
        yield StreamingChunk(content="partial")
        raise ProviderUnavailableError("connection reset")


class SilentStream(EchoProvider):
    """Ends its stream without a single chunk."""

    async def chat_completion_stream(self, request):
        return
        yield  # pragma: no cover


PLUGINS = {
    "down": DownProvider,
    "flaky": FlakyProvider,
    "throttled": ThrottledProvider,
    "rejecting": RejectingProvider,
    "locked": LockedOutProvider,
    "leaky": LeakyProvider,
    "hanging": HangingProvider,
    "dies": DiesMidStream,
    "silent": SilentStream,
}


@pytest.fixture
async def manager() -> ModelManager:
    registry = ProviderRegistry()
    registry.register(EchoProvider, "echo", source="builtin")
    for name, cls in PLUGINS.items():
        cls.calls = 0
        registry.register(cls, name)
    await registry.apply(
        ProviderSpec("echo", "echo", {"models": ["echo-1", "echo-2"]}, is_default=True)
    )
    await registry.apply(ProviderSpec("backup", "echo", {"prefix": "backup: ", "models": ["b-1"]}))
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(5), clock=FakeClock())
    return manager


def ask(text: str = "hi", model: str | None = None) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], model=model)


async def live(manager: ModelManager, name: str, fallbacks: tuple[str, ...] = (), **config):
    await manager.registry.apply(ProviderSpec(name, name, config, fallbacks=fallbacks))


# --- routing -----------------------------------------------------------------


async def test_routes_by_name_prefix_or_default(manager) -> None:
    assert manager.resolve(ask(), "backup") == Route("backup", None)
    assert manager.resolve(ask(model="backup/b-1")) == Route("backup", "b-1")
    assert manager.resolve(ask(model="echo-2")) == Route("echo", "echo-2")
    # A slash that names no provider is part of the model name.
    assert manager.resolve(ask(model="library/llama3")) == Route("echo", "library/llama3")
    response = await manager.chat_completion(ask(model="backup/b-1"))
    assert (response.provider, response.model, response.content) == ("backup", "b-1", "backup: hi")
    assert response.metadata["attempts"] == 1
    assert set(response.metadata) == {"attempts", "upstream_ms"}


async def test_unknown_provider_and_missing_default(manager) -> None:
    with pytest.raises(ProviderNotFoundError) as caught:
        await manager.chat_completion(ask(), "nope")
    assert caught.value.field == "provider"
    await manager.registry.unregister("echo")
    with pytest.raises(ProviderNotFoundError, match="no default"):
        await manager.chat_completion(ask())


async def test_the_chain_is_the_fallbacks_then_the_default_each_once(manager) -> None:
    await live(manager, "down", fallbacks=("nope", "backup/b-1", "echo", "backup"))
    assert manager.chain(Route("down", "x")) == [
        Route("down", "x"),
        Route("backup", "b-1"),
        Route("echo", None),
    ]
    await live(manager, "flaky", fallbacks=("backup",))
    assert manager.chain(Route("flaky", None))[-1] == Route("echo", None)
    assert manager.chain(Route("echo", None)) == [Route("echo", None)]


# --- retries and failover -------------------------------------------------------


async def test_retryable_failure_is_retried_then_fails_over_with_the_fallback_model(
    manager,
) -> None:
    await live(manager, "down", fallbacks=("nope", "backup/b-1"))
    response = await manager.chat_completion(ask(), "down")
    assert response.provider == "backup" and response.model == "b-1"
    assert DownProvider.calls == 3  # the first try and max_retries (2) retries
    assert response.metadata["attempts"] == 4
    assert response.metadata["fallback_path"] == [
        {"route": "down", "error": "unavailable", "attempts": 3}
    ]
    # Full jitter: each wait is drawn between 0 and 0.25 s x 2^retry.
    first, second = manager._sleep.waits
    assert 0 <= first <= 0.25 and 0 <= second <= 0.5
    assert [r["wait_seconds"] for r in response.metadata["retries"]] == [
        round(first, 3),
        round(second, 3),
    ]


async def test_a_retry_that_succeeds_needs_no_failover(manager) -> None:
    await live(manager, "flaky", fallbacks=("backup",))
    response = await manager.chat_completion(ask(), "flaky")
    assert response.provider == "flaky" and FlakyProvider.calls == 3
    assert response.metadata["attempts"] == 3
    assert "fallback_path" not in response.metadata
    assert [r["error"] for r in response.metadata["retries"]] == ["unavailable"] * 2
    assert manager.breaker("flaky").state == "closed"
    assert manager.breaker("flaky").consecutive_failures == 0


async def test_max_retries_zero_fails_over_at_once(manager) -> None:
    await live(manager, "down", fallbacks=("backup",), max_retries=0)
    response = await manager.chat_completion(ask(), "down")
    assert response.provider == "backup" and DownProvider.calls == 1
    assert manager._sleep.waits == []


async def test_retry_after_sets_the_wait(manager) -> None:
    await live(manager, "throttled", fallbacks=("backup",), retry_after=1.5)
    response = await manager.chat_completion(ask(), "throttled")
    assert manager._sleep.waits == [1.5, 1.5]
    assert ThrottledProvider.calls == 3
    assert response.metadata["fallback_path"] == [
        {"route": "throttled", "error": "rate_limited", "attempts": 3}
    ]


async def test_a_retry_after_beyond_the_cap_or_the_deadline_fails_over_without_waiting(
    manager,
) -> None:
    await live(manager, "throttled", fallbacks=("backup",), retry_after=25)
    assert (await manager.chat_completion(ask(), "throttled")).provider == "backup"
    await live(manager, "throttled", fallbacks=("backup",), retry_after=5, retry_max_wait_seconds=4)
    assert (await manager.chat_completion(ask(), "throttled")).provider == "backup"
    await live(manager, "throttled", fallbacks=("backup",), retry_after=5, deadline_seconds=3)
    assert (await manager.chat_completion(ask(), "throttled")).provider == "backup"
    assert manager._sleep.waits == []
    assert ThrottledProvider.calls == 3


async def test_when_every_route_fails_the_last_error_is_raised(manager) -> None:
    await manager.registry.unregister("echo")  # no default to fall back on
    await live(manager, "throttled", fallbacks=("down",), retry_after=7, max_retries=0)
    await live(manager, "down", max_retries=1)
    with pytest.raises(ProviderUnavailableError) as caught:
        await manager.chat_completion(ask(), "throttled")
    assert caught.value.provider == "down"
    assert (ThrottledProvider.calls, DownProvider.calls) == (1, 2)


async def test_the_routing_default_is_the_last_fallback(manager) -> None:
    await live(manager, "down", max_retries=0)
    response = await manager.chat_completion(ask(model="gpt-9"), "down")
    # The default answers with its own default model: "gpt-9" was meant for "down".
    assert (response.provider, response.model) == ("echo", "echo-1")
    assert response.metadata["fallback_path"] == [
        {"route": "down/gpt-9", "error": "unavailable", "attempts": 1}
    ]


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("messages: too long"),
        ModelNotFoundError("no such model"),
        UnsupportedCapabilityError("no tools here"),
    ],
)
async def test_the_callers_mistakes_are_neither_retried_nor_failed_over(manager, error) -> None:
    class Refusing(EchoProvider):
        calls = 0

        async def chat_completion(self, request):
            type(self).calls += 1
            raise error

    manager.registry.register(Refusing, "refusing")
    await live(manager, "refusing", fallbacks=("echo",))
    with pytest.raises(type(error)) as caught:
        await manager.chat_completion(ask(), "refusing")
    assert caught.value.provider == "refusing"
    assert Refusing.calls == 1 and manager._sleep.waits == []
    assert manager.breaker("refusing").consecutive_failures == 0


async def test_auth_failure_is_not_retried_marks_the_provider_and_fails_over(manager) -> None:
    await live(manager, "locked", fallbacks=("backup",))
    response = await manager.chat_completion(ask(), "locked")
    assert response.provider == "backup" and LockedOutProvider.calls == 1
    assert manager._sleep.waits == []
    assert response.metadata["fallback_path"] == [
        {"route": "locked", "error": "authentication_error", "attempts": 1}
    ]
    state = manager.provider_state("locked")
    assert state["misconfigured"] is True
    assert state["misconfigured_reason"] == "Incorrect API key provided."
    assert state["consecutive_failures"] == 1 and state["last_failure"] == "authentication_error"
    assert state["counters"]["failures"] == 1 and state["counters"]["failovers"] == 1
    # A new configuration (a new key, say) clears the mark: it may work now.
    await live(manager, "locked", fallbacks=("backup",), prefix="again: ")
    assert manager.provider_state("locked")["misconfigured"] is False
    await manager.chat_completion(ask(), "locked")
    assert manager.provider_state("locked")["misconfigured"] is True  # refused again
    manager.registry.register(EchoProvider, "locked")
    await live(manager, "locked")
    assert (await manager.chat_completion(ask(), "locked")).provider == "locked"
    assert manager.provider_state("locked")["misconfigured"] is False


async def test_the_misconfigured_reason_never_shows_the_key(manager) -> None:
    secret = "sk-live-0123456789abcdef"
    await live(manager, "leaky", fallbacks=("backup",), api_key=secret)
    await manager.chat_completion(ask(), "leaky")
    reason = manager.provider_state("leaky")["misconfigured_reason"]
    assert secret not in reason and reason.endswith("sk-...cdef")


async def test_a_provider_alone_with_a_bad_key_says_so(manager) -> None:
    await manager.registry.unregister("echo")
    await live(manager, "locked")
    with pytest.raises(AuthenticationError):
        await manager.chat_completion(ask(), "locked")
    assert LockedOutProvider.calls == 1


# --- deadline ----------------------------------------------------------------


async def test_a_hanging_provider_fails_over_inside_the_deadline() -> None:
    registry = ProviderRegistry()
    registry.register(EchoProvider, "echo", source="builtin")
    registry.register(HangingProvider, "hanging")
    await registry.apply(ProviderSpec("echo", "echo", {}, is_default=True))
    await registry.apply(ProviderSpec("hanging", "hanging", {"deadline_seconds": 0.4}))
    manager = ModelManager(registry)  # the real clock and sleep
    started = time.monotonic()
    response = await manager.chat_completion(ask(), "hanging")
    # Two routes: the hanging one may use half the deadline, leaving the rest to echo.
    assert 0.2 <= time.monotonic() - started < 0.4
    assert response.provider == "echo"
    assert response.metadata["fallback_path"] == [
        {"route": "hanging", "error": "timeout", "attempts": 1}
    ]
    chunks = [c async for c in manager.chat_completion_stream(ask(), "hanging")]
    assert chunks[-1].metadata["provider"] == "echo"
    await registry.unregister("echo")
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match="share of the request's deadline"):
        await manager.chat_completion(ask(), "hanging")
    assert 0.4 <= time.monotonic() - started < 0.6


# --- circuit breaker ------------------------------------------------------------


async def test_an_open_breaker_skips_its_provider_until_one_probe(manager) -> None:
    await live(
        manager,
        "down",
        fallbacks=("backup",),
        max_retries=0,
        breaker_failure_threshold=2,
        breaker_cooldown_seconds=30,
    )
    for _ in range(2):
        await manager.chat_completion(ask(), "down")
    assert DownProvider.calls == 2 and manager.breaker("down").state == "open"
    response = await manager.chat_completion(ask(), "down")
    assert DownProvider.calls == 2
    assert response.metadata["fallback_path"] == [
        {"route": "down", "error": "circuit_open", "attempts": 0}
    ]
    assert response.metadata["attempts"] == 1
    manager._clock.now += 30
    await manager.chat_completion(ask(), "down")  # the probe, which fails
    assert DownProvider.calls == 3 and manager.breaker("down").state == "open"
    assert manager.provider_state("down")["counters"] == {
        "attempts": 3,
        "successes": 0,
        "failures": 3,
        "retries": 0,
        "failovers": 3,
        "skipped": 1,
    }


async def test_retries_stop_when_the_breaker_opens(manager) -> None:
    await live(manager, "down", fallbacks=("backup",), breaker_failure_threshold=2)
    response = await manager.chat_completion(ask(), "down")
    assert DownProvider.calls == 2
    assert response.metadata["fallback_path"] == [
        {"route": "down", "error": "unavailable", "attempts": 2}
    ]


async def test_every_breaker_open_says_when_to_come_back(manager) -> None:
    await manager.registry.unregister("echo")
    await live(manager, "down", max_retries=0, breaker_failure_threshold=1)
    with pytest.raises(ProviderUnavailableError, match="upstream 503"):
        await manager.chat_completion(ask(), "down")
    manager._clock.now += 10
    with pytest.raises(ProviderUnavailableError, match="circuit breaker open") as caught:
        await manager.chat_completion(ask(), "down")
    assert caught.value.retry_after == pytest.approx(20)
    assert DownProvider.calls == 1


async def test_a_bad_request_gives_back_the_probe(manager) -> None:
    await live(manager, "rejecting", breaker_failure_threshold=1, breaker_cooldown_seconds=5)
    breaker = manager.breaker("rejecting")
    breaker.configure(failure_threshold=1, cooldown_seconds=5)
    breaker.record_failure("unavailable")
    manager._clock.now += 5
    with pytest.raises(BadRequestError):
        await manager.chat_completion(ask(), "rejecting")
    assert breaker.state == "half_open" and not breaker.probe_in_flight


async def test_a_cancelled_probe_is_given_back(manager) -> None:
    await live(manager, "hanging", breaker_failure_threshold=1, breaker_cooldown_seconds=5)
    breaker = manager.breaker("hanging")
    breaker.configure(failure_threshold=1, cooldown_seconds=5)
    breaker.record_failure("timeout")
    manager._clock.now += 5
    task = asyncio.create_task(manager.chat_completion(ask(), "hanging"))
    await asyncio.sleep(0.01)
    assert breaker.probe_in_flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "half_open" and not breaker.probe_in_flight


# --- streams -----------------------------------------------------------------


async def test_stream_retries_and_fails_over_before_the_first_chunk(manager) -> None:
    await live(manager, "flaky", fallbacks=("backup",))
    chunks = [c async for c in manager.chat_completion_stream(ask("a b"), "flaky")]
    assert "".join(c.content for c in chunks) == "Echo: a b"
    assert chunks[-1].metadata["attempts"] == 3
    assert [r["error"] for r in chunks[-1].metadata["retries"]] == ["timeout"] * 2

    await live(manager, "down", fallbacks=("backup",), max_retries=1)
    chunks = [c async for c in manager.chat_completion_stream(ask("a b"), "down")]
    assert "".join(c.content for c in chunks) == "backup: a b"
    assert {c.metadata["provider"] for c in chunks} == {"backup"}
    assert chunks[-1].metadata["fallback_path"] == [
        {"route": "down", "error": "unavailable", "attempts": 2}
    ]
    assert chunks[-1].metadata["attempts"] == 3


async def test_stream_does_not_fail_over_after_the_first_chunk(manager) -> None:
    await live(manager, "dies", fallbacks=("backup",))
    received = []
    with pytest.raises(ProviderUnavailableError) as caught:
        async for chunk in manager.chat_completion_stream(ask(), "dies"):
            received.append(chunk.content)
    assert received == ["partial"] and caught.value.provider == "dies"
    assert manager.breaker("dies").consecutive_failures == 1
    assert manager._sleep.waits == []


async def test_a_stream_with_no_chunk_is_a_protocol_failure_before_the_first_chunk(
    manager,
) -> None:
    await live(manager, "silent", fallbacks=("backup",), max_retries=0)
    chunks = [c async for c in manager.chat_completion_stream(ask(), "silent")]
    assert chunks[-1].metadata["provider"] == "backup"
    assert chunks[-1].metadata["fallback_path"][0]["error"] == ProtocolError.kind


async def test_a_lease_is_held_for_the_whole_stream(manager) -> None:
    stream = manager.chat_completion_stream(ask("a b c"), "echo")
    await anext(stream)
    assert manager.registry.status("echo")["active_requests"] == 1
    await stream.aclose()
    assert manager.registry.status("echo")["active_requests"] == 0


async def test_an_answer_holds_its_lease_while_it_is_made_and_gives_it_back_after(manager) -> None:
    held: dict[str, int] = {}

    class Watched(EchoProvider):
        async def chat_completion(self, request):
            held[self.name] = manager.registry.status(self.name)["active_requests"]
            return await super().chat_completion(request)

    manager.registry.register(Watched, "watched")
    manager.registry.register(DownProvider, "down")
    await manager.registry.apply(ProviderSpec("watched", "watched", {}))
    await live(manager, "down", fallbacks=("watched",), max_retries=1)

    # Failed over: the failing route's lease, each retry's, and the answering one's given back.
    response = await manager.chat_completion(ask(), "down")
    assert response.provider == "watched" and held == {"watched": 1}
    assert manager.registry.status("watched")["active_requests"] == 0
    assert manager.registry.status("down")["active_requests"] == 0
    # A request cancelled while its answer is made gives its lease back too.
    gate = asyncio.Event()

    class Stuck(EchoProvider):
        async def chat_completion(self, request):
            gate.set()
            await asyncio.sleep(3600)

    manager.registry.register(Stuck, "stuck")
    await manager.registry.apply(ProviderSpec("stuck", "stuck", {}))
    call = asyncio.create_task(manager.chat_completion(ask(), "stuck"))
    await gate.wait()
    assert manager.registry.status("stuck")["active_requests"] == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert manager.registry.status("stuck")["active_requests"] == 0


class BuggyProvider(EchoProvider):
    """A plugin with a bug: it raises something that is not a ProviderError."""

    async def chat_completion(self, request):
        raise KeyError("choices")

    async def chat_completion_stream(self, request):
        raise KeyError("choices")
        yield  # pragma: no cover


async def test_a_plugin_bug_is_a_typed_error_that_neither_fails_over_nor_counts(manager) -> None:
    # A bug is tripped by the request, not by the upstream's health: failing
    # over would trip other plugins' bugs, and counting it would let one
    # client open the breaker for everyone (tests/providers/test_request_errors_and_breakers.py).
    manager.registry.register(BuggyProvider, "buggy")
    await manager.registry.apply(ProviderSpec("buggy", "buggy", {}, fallbacks=("backup",)))
    with pytest.raises(PluginError, match="failed unexpectedly \\(KeyError\\)") as caught:
        await manager.chat_completion(ask(), "buggy")
    assert caught.value.http_status == 502 and not caught.value.retryable
    with pytest.raises(PluginError):
        [c async for c in manager.chat_completion_stream(ask(), "buggy")]
    assert manager.breaker("buggy").consecutive_failures == 0
    assert manager.counters("backup").attempts == 0


# --- settings ------------------------------------------------------------------


async def test_a_provider_default_temperature_applies_when_the_request_sets_none() -> None:
    with FakeOpenAI() as fake:
        registry = ProviderRegistry()
        registry.register(OpenAIProvider, "openai", source="builtin")
        config = {"base_url": fake.base_url, "api_key": "sk-x-000000000000", "temperature": 0.3}
        await registry.apply(ProviderSpec("openai", "openai", config))
        manager = ModelManager(registry)
        await manager.chat_completion(ask(), "openai")
        explicit = ask()
        explicit.temperature = 1.5
        await manager.chat_completion(explicit, "openai")
        await registry.shutdown_all()
    sent = [r.body.get("temperature") for r in fake.requests_to("/v1/chat/completions")]
    assert sent == [0.3, 1.5]


async def test_the_guides_routing_update_validates_and_applies() -> None:
    registry = ProviderRegistry()
    registry.register(OpenAIProvider, "openai", source="builtin")
    config = {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x-000000000000"}
    await registry.apply(ProviderSpec("openai", "openai", config))
    assert registry.get("openai").config["max_retries"] == 2
    await registry.update_provider_config("openai", {"timeout": 120, "max_retries": 5})
    assert registry.get("openai").config["max_retries"] == 5
    assert ModelManager(registry).provider_state("openai")["max_retries"] == 5
    await registry.shutdown_all()


# --- multi-provider conversations ---------------------------------------------------


async def test_one_conversation_moves_from_echo_to_openai_to_anthropic() -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Look up the weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        registry = ProviderRegistry()
        registry.register(EchoProvider, "echo", source="builtin")
        registry.register(OpenAIProvider, "openai", source="builtin")
        registry.register(AnthropicProvider, "anthropic", source="builtin")
        key = "sk-conversation-000000"
        await registry.apply(ProviderSpec("echo", "echo", {}, is_default=True))
        await registry.apply(
            ProviderSpec("openai", "openai", {"base_url": openai.base_url, "api_key": key})
        )
        await registry.apply(
            ProviderSpec("anthropic", "anthropic", {"base_url": anthropic.base_url, "api_key": key})
        )
        manager = ModelManager(registry)
        history = [
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Hello"),
        ]
        first = await manager.chat_completion(ChatRequest(messages=list(history)))
        assert (first.provider, first.content) == ("echo", "Echo: Hello")

        history += [
            ChatMessage(role="assistant", content=first.content),
            ChatMessage(role="user", content='call get_weather {"city": "Oslo"}'),
        ]
        second = await manager.chat_completion(
            ChatRequest(messages=list(history), tools=[weather]), "openai"
        )
        (call,) = second.tool_calls
        sent = openai.requests_to("/v1/chat/completions")[-1].body["messages"]
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
        assert sent[2]["content"] == "Echo: Hello"

        history += [
            ChatMessage(role="assistant", content=second.content, tool_calls=second.tool_calls),
            ChatMessage(role="tool", content="-3C and snow", tool_call_id=call.id),
        ]
        third = await manager.chat_completion(
            ChatRequest(messages=list(history), tools=[weather]), "anthropic"
        )
        await registry.shutdown_all()

    sent = anthropic.requests_to("/v1/messages")[-1].body
    # Anthropic's shape: the system prompt apart, tool use and result as content blocks.
    assert sent["system"] == "Be brief."
    assert [m["role"] for m in sent["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    tool_use = next(b for b in sent["messages"][3]["content"] if b["type"] == "tool_use")
    assert (tool_use["id"], tool_use["input"]) == (call.id, {"city": "Oslo"})
    result = sent["messages"][4]["content"][0]
    assert (result["type"], result["tool_use_id"]) == ("tool_result", call.id)
    assert third.provider == "anthropic" and "-3C and snow" in third.content
    assert isinstance(call, ToolCall) and json.loads(call.arguments) == {"city": "Oslo"}


async def test_the_retries_waits_are_recorded_apart_from_the_upstream_time(manager) -> None:
    clock = manager._clock

    async def sleeping(seconds: float) -> None:  # the fake clock moves by the wait
        clock.now += seconds

    manager._sleep = sleeping
    await live(manager, "flaky", fallbacks=("backup",))
    response = await manager.chat_completion(ask(), "flaky")
    waits = sum(r["wait_seconds"] for r in response.metadata["retries"])
    assert response.metadata["retry_wait_ms"] == pytest.approx(waits * 1000, abs=2)
    assert response.metadata["upstream_ms"] == 0  # the fake clock did not move during calls
