"""ModelManager: routing and failover along the fallback chain."""

from __future__ import annotations

import pytest

from providers.errors import (
    BadRequestError,
    ProviderNotFoundError,
    ProviderUnavailableError,
)
from providers.manager import ModelManager, Route
from providers.plugins.echo_provider import EchoProvider
from providers.registry import ProviderRegistry, ProviderSpec
from providers.types import ChatMessage, ChatRequest


class DownProvider(EchoProvider):
    """Fails every call with a retryable error."""

    async def chat_completion(self, request):
        raise ProviderUnavailableError("upstream 503", status_code=503)

    async def chat_completion_stream(self, request):
        raise ProviderUnavailableError("upstream 503", status_code=503)
        yield  # pragma: no cover - makes this an async generator


class RejectingProvider(EchoProvider):
    """Rejects every request as malformed: retrying elsewhere cannot help."""

    async def chat_completion(self, request):
        raise BadRequestError("messages: too long")


class DiesMidStream(EchoProvider):
    """Streams one word, then the upstream goes away."""

    async def chat_completion_stream(self, request):
        yield await self._first(request)
        raise ProviderUnavailableError("connection reset")

    async def _first(self, request):
        from providers.types import StreamingChunk

        return StreamingChunk(content="partial")


@pytest.fixture
async def manager() -> ModelManager:
    registry = ProviderRegistry()
    registry.register(EchoProvider, "echo", source="builtin")
    registry.register(DownProvider, "down")
    registry.register(RejectingProvider, "rejecting")
    registry.register(DiesMidStream, "dies")
    await registry.apply(
        ProviderSpec("echo", "echo", {"models": ["echo-1", "echo-2"]}, is_default=True)
    )
    await registry.apply(ProviderSpec("backup", "echo", {"prefix": "backup: ", "models": ["b-1"]}))
    return ModelManager(registry)


def ask(text: str = "hi", model: str | None = None) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], model=model)


async def test_routes_by_name_prefix_or_default(manager) -> None:
    assert manager.resolve(ask(), "backup") == Route("backup", None)
    assert manager.resolve(ask(model="backup/b-1")) == Route("backup", "b-1")
    assert manager.resolve(ask(model="echo-2")) == Route("echo", "echo-2")
    # A slash that names no provider is part of the model name.
    assert manager.resolve(ask(model="library/llama3")) == Route("echo", "library/llama3")
    response = await manager.chat_completion(ask(model="backup/b-1"))
    assert (response.provider, response.model, response.content) == ("backup", "b-1", "backup: hi")


async def test_unknown_provider_and_missing_default(manager) -> None:
    with pytest.raises(ProviderNotFoundError) as caught:
        await manager.chat_completion(ask(), "nope")
    assert caught.value.field == "provider"
    await manager.registry.unregister("echo")
    with pytest.raises(ProviderNotFoundError, match="no default"):
        await manager.chat_completion(ask())


async def test_retryable_failure_fails_over_with_the_fallback_model(manager) -> None:
    await manager.registry.apply(ProviderSpec("down", "down", {}, fallbacks=("nope", "backup/b-1")))
    response = await manager.chat_completion(ask(), "down")
    assert response.provider == "backup" and response.model == "b-1"
    assert response.metadata["fallback_path"] == [{"route": "down", "error": "unavailable"}]


async def test_bad_request_is_not_failed_over(manager) -> None:
    await manager.registry.apply(ProviderSpec("rejecting", "rejecting", {}, fallbacks=("echo",)))
    with pytest.raises(BadRequestError) as caught:
        await manager.chat_completion(ask(), "rejecting")
    assert caught.value.provider == "rejecting"


async def test_the_last_failure_is_raised_when_every_route_fails(manager) -> None:
    await manager.registry.apply(ProviderSpec("down", "down", {}))
    with pytest.raises(ProviderUnavailableError):
        await manager.chat_completion(ask(), "down")


async def test_stream_fails_over_before_the_first_chunk(manager) -> None:
    await manager.registry.apply(ProviderSpec("down", "down", {}, fallbacks=("backup",)))
    chunks = [c async for c in manager.chat_completion_stream(ask("a b"), "down")]
    assert "".join(c.content for c in chunks) == "backup: a b"
    assert {c.metadata["provider"] for c in chunks} == {"backup"}
    assert chunks[-1].metadata["fallback_path"] == [{"route": "down", "error": "unavailable"}]


async def test_stream_does_not_fail_over_after_the_first_chunk(manager) -> None:
    await manager.registry.apply(ProviderSpec("dies", "dies", {}, fallbacks=("backup",)))
    received = []
    with pytest.raises(ProviderUnavailableError):
        async for chunk in manager.chat_completion_stream(ask(), "dies"):
            received.append(chunk.content)
    assert received == ["partial"]


async def test_a_lease_is_held_for_the_whole_stream(manager) -> None:
    stream = manager.chat_completion_stream(ask("a b c"), "echo")
    await anext(stream)
    assert manager.registry.status("echo")["active_requests"] == 1
    await stream.aclose()
    assert manager.registry.status("echo")["active_requests"] == 0


class BuggyProvider(EchoProvider):
    """A plugin with a bug: it raises something that is not a ProviderError."""

    async def chat_completion(self, request):
        raise KeyError("choices")

    async def chat_completion_stream(self, request):
        raise KeyError("choices")
        yield  # pragma: no cover


async def test_a_plugin_bug_becomes_a_typed_error_and_fails_over(manager) -> None:
    manager.registry.register(BuggyProvider, "buggy")
    await manager.registry.apply(ProviderSpec("buggy", "buggy", {}, fallbacks=("backup",)))
    response = await manager.chat_completion(ask(), "buggy")
    assert response.provider == "backup"
    chunks = [c async for c in manager.chat_completion_stream(ask(), "buggy")]
    assert chunks[-1].metadata["provider"] == "backup"
    await manager.registry.apply(ProviderSpec("buggy", "buggy", {}))
    with pytest.raises(ProviderUnavailableError, match="failed unexpectedly \\(KeyError\\)"):
        await manager.chat_completion(ask(), "buggy")


async def test_a_provider_default_temperature_applies_when_the_request_sets_none() -> None:
    from providers.testing.fake_openai import FakeOpenAI

    with FakeOpenAI() as fake:
        registry = ProviderRegistry()
        from providers.plugins.openai_provider import OpenAIProvider

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
