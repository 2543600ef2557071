"""``POST /v1/messages/count_tokens`` (``plugins_api/compat/count_tokens.py``), driven by the ``anthropic`` SDK.

A live Echo with ``anthropic`` (aimed at FakeAnthropic, which counts one
token per word and records every request), ``openai`` on FakeOpenAI and the
offline ``echo``: an ``anthropic`` model is counted by its upstream, any
other model is estimated (a quarter of the characters), and the
``x-echo-token-count`` header says which.
"""

# ruff: noqa: F811 - the shared fixtures (tests.sdk_gateway) are imported, then named as parameters

from __future__ import annotations

import math
from typing import Any

import anthropic
import httpx
import pytest
from asgiref.sync import sync_to_async

from plugins_api.access.key_changes import client_key_issue
from plugins_api.access.key_model_access import ModelAccess
from plugins_api.compat.count_tokens import IMAGE_TOKENS, estimate_tokens
from providers.types import ChatMessage, ChatRequest
from tests.sdk_gateway import UPSTREAM_KEY, claude, fakes, oai, upstreams, user  # noqa: F401

pytestmark = pytest.mark.slow

COUNT_PATH = "/v1/messages/count_tokens"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


async def test_anthropic_models_are_counted_by_their_upstream(
    claude: anthropic.AsyncAnthropic, upstreams
) -> None:
    _, anthropic_fake = upstreams
    raw = await claude.messages.with_raw_response.count_tokens(
        model="anthropic/claude-3-5-haiku-latest",
        system="Be brief.",
        messages=[{"role": "user", "content": "how many tokens is this"}],
    )
    counted = await raw.parse()
    assert counted.input_tokens == 2 + 5  # the fake's count: one per word
    assert raw.headers["x-echo-token-count"] == "upstream"
    assert raw.headers["x-echo-provider"] == "anthropic"
    sent = anthropic_fake.requests_to(COUNT_PATH)[-1].body
    assert sent == {
        "model": "claude-3-5-haiku-latest",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "how many tokens is this"}],
    }
    # Tools count too, and go upstream in Anthropic's shape.
    with_tools = await claude.messages.count_tokens(
        model="anthropic/claude-3-5-haiku-latest",
        messages=[{"role": "user", "content": "how many tokens is this"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto"},
    )
    assert with_tools.input_tokens > 5
    sent = anthropic_fake.requests_to(COUNT_PATH)[-1].body
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tool_choice"] == {"type": "auto"}
    # Counting is no chat: nothing went to /v1/messages.
    assert anthropic_fake.requests_to("/v1/messages") == []


async def test_other_providers_are_estimated(claude: anthropic.AsyncAnthropic, upstreams) -> None:
    text = "a" * 41
    raw = await claude.messages.with_raw_response.count_tokens(
        model="echo/echo-1", messages=[{"role": "user", "content": text}]
    )
    assert (await raw.parse()).input_tokens == math.ceil(41 / 4)
    assert raw.headers["x-echo-token-count"] == "estimate"
    assert raw.headers["x-echo-provider"] == "echo"
    via_openai = await claude.messages.with_raw_response.count_tokens(
        model="openai/gpt-4o-mini",
        system="abcd",
        messages=[
            {"role": "user", "content": "abcdefgh"},
            {"role": "assistant", "content": "abcd"},
            {"role": "user", "content": "abcd"},
        ],
    )
    assert (await via_openai.parse()).input_tokens == 5
    assert via_openai.headers["x-echo-token-count"] == "estimate"
    openai_fake, _ = upstreams
    assert openai_fake.requests == []


def test_the_estimate_counts_images_tool_calls_and_tools() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    request = ChatRequest(
        messages=[
            ChatMessage(role="user", content=[{"type": "text", "text": "abcd"}, image]),
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    # "abcd" (4) + '{"name":"f"}' (12): 16 characters, 4 tokens, plus the image.
    assert estimate_tokens(request) == 4 + IMAGE_TOKENS
    assert estimate_tokens(ChatRequest(messages=[ChatMessage(role="user", content="")])) == 1


async def test_upstream_failure_has_anthropics_shape(
    claude: anthropic.AsyncAnthropic, upstreams
) -> None:
    _, anthropic_fake = upstreams
    anthropic_fake.inject(status=529, message="Overloaded", path=COUNT_PATH)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.count_tokens(
            model="anthropic/claude-3-5-haiku-latest",
            messages=[{"role": "user", "content": "hi"}],
        )
    assert caught.value.status_code >= 500
    assert caught.value.body["type"] == "error"
    assert UPSTREAM_KEY not in str(caught.value.body)


async def test_a_model_the_upstream_does_not_know_is_404(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await claude.messages.count_tokens(
            model="anthropic/claude-nonexistent", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"


async def test_without_a_valid_key_is_401(upstreams, live_echo) -> None:
    body = {"model": "echo/echo-1", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as plain:
        assert (await plain.post(f"{live_echo.url}{COUNT_PATH}", json=body)).status_code == 401
    async with anthropic.AsyncAnthropic(
        base_url=live_echo.url, api_key="echo-not-a-key", max_retries=0, timeout=10
    ) as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.count_tokens(**body)


async def test_a_model_the_key_may_not_use_is_403(upstreams, live_echo) -> None:
    _, key = await sync_to_async(client_key_issue)(
        name="echo-only", access=ModelAccess(patterns=("echo/*",))
    )
    async with anthropic.AsyncAnthropic(
        base_url=live_echo.url, api_key=key, max_retries=0, timeout=10
    ) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            await client.messages.count_tokens(
                model="anthropic/claude-3-5-haiku-latest",
                messages=[{"role": "user", "content": "hi"}],
            )
        assert "model_not_allowed" in str(caught.value) or "may not use" in str(caught.value)
        allowed = await client.messages.count_tokens(
            model="echo/echo-1", messages=[{"role": "user", "content": "hi"}]
        )
        assert allowed.input_tokens == 1
    _, anthropic_fake = upstreams
    assert anthropic_fake.requests_to(COUNT_PATH) == []


HOSTILE_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": 5, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "echo/echo-1"}, "messages"),
    ({"model": "echo/echo-1", "messages": "hi"}, "messages"),
    ({"model": "echo/echo-1", "messages": [{"role": "user", "content": "x"}] * 10_001}, "messages"),
    ({"model": "echo/echo-1", "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"model": "echo/echo-1", "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
    (
        {"model": "echo/echo-1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
        "max_tokens",
    ),
    (
        {"model": "echo/echo-1", "messages": [{"role": "user", "content": "x"}], "stream": True},
        "stream",
    ),
    (
        {
            "model": "echo/echo-1",
            "messages": [{"role": "user", "content": "x"}],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
        },
        "thinking",
    ),
    (
        {"model": "echo/echo-1", "messages": [{"role": "user", "content": "x"}], "tools": "all"},
        "tools",
    ),
    (
        {
            "model": "echo/echo-1",
            "messages": [{"role": "user", "content": "x"}],
            "tool_choice": {"type": "sometimes"},
        },
        "tool_choice",
    ),
    (
        {
            "model": "echo/echo-1",
            "messages": [{"role": "user", "content": "x"}],
            "base_url": "http://evil",
        },
        "base_url",
    ),
]


def test_hostile_input_is_a_400_naming_the_field(upstreams, chat_key, live_echo) -> None:
    url = f"{live_echo.url}{COUNT_PATH}"
    with httpx.Client(headers={"x-api-key": chat_key[1]}, timeout=10) as client:
        for body, field in HOSTILE_BODIES:
            answer = client.post(url, json=body)
            assert answer.status_code == 400, (body, answer.text[:300])
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["message"].startswith(f"{field}:"), (body, error)
            assert len(answer.content) < 2000
        nested: Any = "x"
        for _ in range(200):
            nested = {"a": nested}
        assert (
            client.post(url, json={"model": "echo/echo-1", "messages": nested}).status_code == 400
        )
        nul = client.post(
            url, json={"model": "echo/echo-1", "messages": [{"role": "user", "content": "a\u0000"}]}
        )
        assert nul.status_code == 400
        assert client.get(url).status_code == 405
    _, anthropic_fake = upstreams
    assert anthropic_fake.requests_to(COUNT_PATH) == []
