"""The built-in echo provider: deterministic, offline, streaming word by word."""

from __future__ import annotations

import time

import pytest

from providers.errors import ModelNotFoundError
from providers.plugins.echo_provider import EchoProvider
from providers.types import ChatMessage, ChatRequest


def conversation(*texts: str) -> ChatRequest:
    roles = ["user", "assistant"]
    return ChatRequest(
        messages=[ChatMessage(role=roles[i % 2], content=t) for i, t in enumerate(texts)]
    )


async def test_answers_with_the_last_user_message_and_counts_usage() -> None:
    provider = EchoProvider({"prefix": "You said: "})
    await provider.initialize()
    response = await provider.chat_completion(conversation("one two", "three", "four five six"))
    assert response.content == "You said: four five six"
    assert response.model == "echo-1"
    assert response.usage.prompt_tokens == 6
    assert response.usage.completion_tokens == 5


async def test_streams_word_by_word_with_the_configured_delay() -> None:
    provider = EchoProvider({"delay_ms": 30, "prefix": ""})
    await provider.initialize()
    started = time.perf_counter()
    chunks = [c async for c in provider.chat_completion_stream(conversation("a b c d"))]
    elapsed = time.perf_counter() - started
    assert [c.content for c in chunks[:-1]] == ["a", " b", " c", " d"]
    assert chunks[-1].is_final and chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 4
    assert elapsed >= 0.09  # three pauses between four words


async def test_unknown_model_is_a_typed_error() -> None:
    provider = EchoProvider({})
    request = conversation("hi")
    request.model = "gpt-4"
    with pytest.raises(ModelNotFoundError):
        await provider.chat_completion(request)


async def test_health_check_lists_models_without_network() -> None:
    provider = EchoProvider({"models": ["echo-1", "echo-2"]})
    status = await provider.health_check()
    assert status.available and status.models == ["echo-1", "echo-2"]
    assert provider.get_model_info("echo-2")["context_length"] > 0
    assert provider.get_model_info("nope") is None
