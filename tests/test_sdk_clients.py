"""The official ``openai`` and ``anthropic`` SDKs, unchanged, against a live Echo.

Their ``base_url`` points at Echo (uvicorn on loopback) and their API key is
an Echo client key. Behind Echo: ``openai`` (the routing default) and
``anthropic``, built-in plugins aimed at FakeOpenAI and FakeAnthropic, and
the offline ``echo``. ``openai`` is the default so that a fault injected
there reaches the client: a default provider would otherwise take over as
the last failover. Providers have ``max_retries: 0``, so that one injected
fault is one failed request.
"""

# ruff: noqa: F811 - the shared fixtures (tests.sdk_gateway) are imported, then named as parameters

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.sdk_gateway import UPSTREAM_KEY, claude, fakes, oai, upstreams, user  # noqa: F401

# Slow: a live server for every test, driven by the OpenAI and Anthropic SDKs.
pytestmark = pytest.mark.slow

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


# --- OpenAI SDK ----------------------------------------------------------------


async def test_openai_chat_routes_by_prefix_and_by_default(oai: openai.AsyncOpenAI) -> None:
    raw = await oai.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=user("hello there")
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: hello there"
    assert completion.model == "openai/gpt-4o-mini"
    assert completion.usage.completion_tokens == 4
    assert raw.headers["x-echo-provider"] == "openai"

    via_anthropic = await oai.chat.completions.create(
        model="anthropic/claude-3-5-haiku-latest", messages=user("hi claude")
    )
    assert via_anthropic.choices[0].message.content == "You said: hi claude"
    assert via_anthropic.model.startswith("anthropic/claude-3-5-haiku")

    bare = await oai.chat.completions.create(model="gpt-4o", messages=user("bare"))
    assert (bare.model, bare.choices[0].message.content) == ("openai/gpt-4o", "You said: bare")

    offline = await oai.chat.completions.create(model="echo/echo-1", messages=user("offline"))
    assert offline.choices[0].message.content == "Echo: offline"


async def test_openai_stream_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="anthropic/claude-3-5-haiku-latest",
        messages=user("one two three"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: one two three"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 5)


async def test_openai_tool_call_round_trip_through_anthropic(oai: openai.AsyncOpenAI) -> None:
    tools = [{"type": "function", "function": WEATHER_TOOL}]
    messages = user('call get_weather {"city": "Paris"}')
    first = await oai.chat.completions.create(
        model="anthropic/claude-3-5-haiku-latest", messages=messages, tools=tools
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = await oai.chat.completions.create(
        model="anthropic/claude-3-5-haiku-latest", messages=messages, tools=tools
    )
    assert second.choices[0].message.content == "You said: sunny, 21C"


async def test_openai_streamed_tool_call(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=user('call get_weather {"city": "Oslo"}'),
        tools=[{"type": "function", "function": WEATHER_TOOL}],
        stream=True,
    )
    deltas = [c.choices[0].delta for c in [chunk async for chunk in stream] if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert [(c.index, c.function.name) for c in calls] == [(0, "get_weather")]
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo"}


async def test_openai_models_lists_every_provider(oai: openai.AsyncOpenAI) -> None:
    ids = [model.id async for model in oai.models.list()]
    assert "openai/gpt-4o-mini" in ids
    assert "anthropic/claude-3-5-haiku-20241022" in ids
    assert "echo/echo-1" in ids
    model = await oai.models.retrieve("openai/gpt-4o-mini")
    assert (model.id, model.owned_by) == ("openai/gpt-4o-mini", "openai")


async def test_openai_embeddings(oai: openai.AsyncOpenAI, upstreams: Any) -> None:
    # The SDK asks for base64 unless told otherwise; both formats decode to the same vectors.
    packed = await oai.embeddings.create(
        model="openai/text-embedding-3-small", input=["alpha", "beta"]
    )
    floats = await oai.embeddings.create(
        model="openai/text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
    )
    assert [e.index for e in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 8
    for a, b in zip(packed.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert floats.model == "openai/text-embedding-3-small"

    with pytest.raises(openai.BadRequestError) as raised:
        await oai.embeddings.create(model="echo/echo-1", input="x")
    assert raised.value.body["code"] == "unsupported_capability"


async def test_openai_error_classes(oai: openai.AsyncOpenAI, upstreams: Any, live_echo) -> None:
    openai_fake, _ = upstreams
    async with openai.AsyncOpenAI(
        base_url=f"{live_echo.url}/v1", api_key="echo-wrong", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError) as raised:
            await stranger.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    assert raised.value.body["code"] == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as raised:
        await oai.chat.completions.create(model="nosuch/gpt-4o-mini", messages=user("hi"))
    assert raised.value.body["code"] == "model_not_found"
    assert "No provider is named 'nosuch'" in raised.value.message
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(model="openai/gpt-9", messages=user("hi"))

    openai_fake.inject(status=429, retry_after=1, path="/v1/chat/completions")
    with pytest.raises(openai.RateLimitError) as limited:
        await oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    assert limited.value.response.headers["retry-after"] == "1"
    assert UPSTREAM_KEY not in limited.value.message

    openai_fake.inject(status=500, path="/v1/chat/completions")
    with pytest.raises(openai.InternalServerError) as failed:
        await oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"), stream=True)
    assert failed.value.status_code == 503


# --- Anthropic SDK ---------------------------------------------------------------


async def test_anthropic_chat_through_anthropic_and_openai(
    claude: anthropic.AsyncAnthropic,
) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="anthropic/claude-3-5-haiku-latest",
        max_tokens=100,
        system="Be brief.",
        messages=user("hello claude"),
    )
    message = await raw.parse()
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "You said: hello claude"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 4
    assert raw.headers["x-echo-provider"] == "anthropic"

    # The Anthropic SDK, any provider behind Echo: here the default, OpenAI.
    via_openai = await claude.messages.create(
        model="gpt-4o-mini", max_tokens=100, messages=user("hello gpt")
    )
    assert via_openai.content[0].text == "You said: hello gpt"
    assert via_openai.model == "openai/gpt-4o-mini"


async def test_anthropic_stream(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="openai/gpt-4o-mini", max_tokens=100, messages=user("stream me please")
    ) as stream:
        kinds = []
        async for event in stream:
            kinds.append(event.type)
        text = "".join([t async for t in stream.text_stream])  # already consumed: empty
        message = await stream.get_final_message()

    assert text == ""
    assert message.content[0].text == "You said: stream me please"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 5)
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "message_delta" in kinds


async def test_anthropic_tools_round_trip(claude: anthropic.AsyncAnthropic) -> None:
    tools = [
        {
            "name": WEATHER_TOOL["name"],
            "description": WEATHER_TOOL["description"],
            "input_schema": WEATHER_TOOL["parameters"],
        }
    ]
    messages: list[dict[str, Any]] = user('call get_weather {"city": "Rome"}')
    async with claude.messages.stream(
        model="openai/gpt-4o-mini", max_tokens=100, messages=messages, tools=tools
    ) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    (tool_use,) = [b for b in first.content if b.type == "tool_use"]
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Rome"})

    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "rainy"}],
        },
    ]
    second = await claude.messages.create(
        model="anthropic/claude-3-5-haiku-latest", max_tokens=100, messages=messages, tools=tools
    )
    assert second.content[0].text == "You said: rainy"
    assert second.stop_reason == "end_turn"


async def test_anthropic_error_classes(
    claude: anthropic.AsyncAnthropic, upstreams: Any, live_echo: Any
) -> None:
    openai_fake, _ = upstreams
    async with anthropic.AsyncAnthropic(
        base_url=live_echo.url, api_key="echo-wrong", max_retries=0
    ) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await stranger.messages.create(model="gpt-4o-mini", max_tokens=10, messages=user("x"))
    assert raised.value.body["error"]["type"] == "authentication_error"

    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="nosuch/model", max_tokens=10, messages=user("x"))
    assert missing.value.body["error"]["type"] == "not_found_error"

    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(
            model="gpt-4o-mini",
            messages=user("x"),
            max_tokens=None,  # type: ignore[arg-type]
        )
    assert "max_tokens" in bad.value.body["error"]["message"]

    openai_fake.inject(status=429, retry_after=2, path="/v1/chat/completions")
    with pytest.raises(anthropic.RateLimitError) as limited:
        await claude.messages.create(model="gpt-4o-mini", max_tokens=10, messages=user("x"))
    assert limited.value.response.headers["retry-after"] == "2"

    openai_fake.inject(status=500, path="/v1/chat/completions")
    with pytest.raises(anthropic.InternalServerError) as failed:
        async with claude.messages.stream(
            model="gpt-4o-mini", max_tokens=10, messages=user("x")
        ) as stream:
            await stream.get_final_message()
    assert failed.value.status_code == 503
    assert failed.value.body["error"]["type"] == "overloaded_error"


# --- per-key rate limits (issue 17) ------------------------------------------------


@pytest.fixture
def limited_key(upstreams: Any, live_echo: Any) -> Iterator[str]:
    """A chat key limited to 1 request a minute, with a fresh in-process limiter."""
    from plugins_api.access.client_keys import forget_cached_keys
    from plugins_api.access.key_changes import client_key_issue
    from plugins_api.access.key_limits import KeyLimiter, KeyLimits, set_key_limiter

    set_key_limiter(KeyLimiter())
    forget_cached_keys()
    _, key = client_key_issue(name="limited", scope="chat", limits=KeyLimits(requests_per_minute=1))
    yield key
    set_key_limiter(None)


async def test_openai_sdk_raises_rate_limit_error_with_the_retry_hint(
    limited_key: str, live_echo: Any
) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{live_echo.url}/v1", api_key=limited_key, max_retries=0, timeout=10
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="echo/echo-1", messages=user("one")
        )
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="echo/echo-1", messages=user("two"))
    headers = limited.value.response.headers
    assert 50 <= int(headers["retry-after"]) <= 60
    assert int(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.type == "requests"


async def test_anthropic_sdk_raises_rate_limit_error_with_the_retry_hint(
    limited_key: str, live_echo: Any
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=live_echo.url, api_key=limited_key, max_retries=0, timeout=10
    ) as client:
        await client.messages.create(model="echo/echo-1", max_tokens=10, messages=user("one"))
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model="echo/echo-1", max_tokens=10, messages=user("two"))
    headers = limited.value.response.headers
    assert 50 <= int(headers["retry-after"]) <= 60
    assert headers["anthropic-ratelimit-requests-limit"] == "1"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert limited.value.body["error"]["type"] == "rate_limit_error"
