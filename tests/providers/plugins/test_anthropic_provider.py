"""The Anthropic provider against FakeAnthropic, over real HTTP on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from providers.errors import (
    AuthenticationError,
    BadRequestError,
    ModelNotFoundError,
    ProtocolError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from providers.plugins.anthropic_provider import AnthropicProvider
from providers.testing.conformance import ProviderConformance
from providers.testing.fake_anthropic import FakeAnthropic
from providers.types import ChatMessage, ChatRequest, ToolCall

KEY = "sk-ant-api03-test-0123456789abcdef-SECRET"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(api_keys={KEY}).start()
    try:
        yield fake
    finally:
        fake.stop()


def make_provider(fake: FakeAnthropic, **settings) -> AnthropicProvider:
    return AnthropicProvider({"api_key": KEY, "base_url": fake.base_url, **settings}, name="claude")


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    provider = make_provider(fake)
    await provider.initialize()
    try:
        yield provider
    finally:
        await provider.shutdown()


def ask(*texts: str, **fields) -> ChatRequest:
    roles = ["user", "assistant"]
    messages = [ChatMessage(role=roles[i % 2], content=t) for i, t in enumerate(texts)]
    return ChatRequest(messages=messages, **fields)


def last_body(fake: FakeAnthropic) -> dict:
    return fake.requests_to("/v1/messages")[-1].body


def headers_of(fake: FakeAnthropic, path: str) -> dict[str, str]:
    return {k.lower(): v for k, v in fake.requests_to(path)[-1].headers.items()}


# --- configuration -----------------------------------------------------------


def test_schema_has_defaults_and_documents_every_setting() -> None:
    schema = AnthropicProvider.config_schema()
    properties = schema["properties"]
    assert schema["required"] == ["api_key"]
    assert schema["additionalProperties"] is False
    assert properties["api_key"]["writeOnly"] is True
    assert properties["base_url"]["default"] == "https://api.anthropic.com"
    assert properties["anthropic_version"]["default"] == "2023-06-01"
    assert properties["max_tokens"]["default"] == 1024
    assert {"timeout", "connect_timeout", "max_connections"} <= set(properties)
    for name, prop in properties.items():
        assert prop.get("title") and prop.get("description"), name


def test_bad_settings_are_named() -> None:
    provider = AnthropicProvider({"api_key": KEY})
    errors = provider.get_config_errors({"max_tokens": 0, "colour": "red"})
    assert set(errors) == {"api_key", "max_tokens", "colour"}


def test_model_info_comes_from_the_data_file() -> None:
    provider = AnthropicProvider({"api_key": KEY})
    info = provider.get_model_info("claude-3-5-haiku-20241022")
    assert info["context_length"] == 200_000
    assert info["input_cost_per_token"] == pytest.approx(0.80 / 1_000_000)
    assert info["output_cost_per_token"] == pytest.approx(4 / 1_000_000)
    assert provider.get_model_info("claude-sonnet-4-20250514")["output_cost_per_token"] == (
        pytest.approx(15 / 1_000_000)
    )
    assert provider.get_model_info("gpt-4o") is None


# --- chat ----------------------------------------------------------------------


async def test_chat_sends_the_messages_api_request(provider, fake) -> None:
    request = ask("Hello there Claude")
    request.messages.insert(0, ChatMessage(role="system", content="Be brief."))
    response = await provider.chat_completion(request)
    assert response.content == "You said: Hello there Claude"
    assert response.provider == "claude"
    assert response.model == "claude-3-5-haiku-20241022"
    assert response.finish_reason == "stop"
    # The fake counts system + message words in, answer words out.
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (5, 5)
    assert (fake.usage.prompt_tokens, fake.usage.completion_tokens) == (5, 5)
    body = last_body(fake)
    assert body["system"] == "Be brief."
    assert body["max_tokens"] == 1024
    assert body["model"] == "claude-3-5-haiku-latest"


async def test_authentication_headers_are_sent(provider, fake) -> None:
    await provider.chat_completion(ask("hi"))
    headers = headers_of(fake, "/v1/messages")
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


async def test_max_tokens_and_version_come_from_settings(fake) -> None:
    provider = make_provider(fake, max_tokens=77, anthropic_version="2023-01-01")
    try:
        await provider.chat_completion(ask("hi"))
        assert last_body(fake)["max_tokens"] == 77
        assert headers_of(fake, "/v1/messages")["anthropic-version"] == "2023-01-01"
        await provider.chat_completion(ask("hi", max_tokens=5))
        assert last_body(fake)["max_tokens"] == 5
    finally:
        await provider.shutdown()


async def test_stop_reasons_arrive_as_finish_reasons(provider) -> None:
    cut = await provider.chat_completion(ask("one two three four", max_tokens=3))
    assert (cut.content, cut.finish_reason) == ("You said: one", "length")
    stopped = await provider.chat_completion(ask("one two three", stop=["two"]))
    assert (stopped.content, stopped.finish_reason) == ("You said: one ", "stop")
    assert stopped.metadata["stop_sequence"] == "two"


async def test_image_parts_are_sent_as_image_blocks(provider, fake) -> None:
    request = ChatRequest(
        messages=[
            ChatMessage(
                role="user",
                content=[
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            )
        ]
    )
    response = await provider.chat_completion(request)
    assert response.content == "You said: What is in these?"
    blocks = last_body(fake)["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    assert blocks[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
    }


async def test_tools_round_trip(provider, fake) -> None:
    question = ChatMessage(role="user", content='call get_weather {"city": "Paris"}')
    first = await provider.chat_completion(ChatRequest(messages=[question], tools=[WEATHER_TOOL]))
    assert first.finish_reason == "tool_calls"
    [call] = first.tool_calls
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert last_body(fake)["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]

    conversation = [
        question,
        ChatMessage(role="assistant", content=first.content, tool_calls=first.tool_calls),
        ChatMessage(role="tool", content="Sunny, 21 C", tool_call_id=call.id),
    ]
    second = await provider.chat_completion(
        ChatRequest(messages=conversation, tools=[WEATHER_TOOL])
    )
    assert second.content == "You said: Sunny, 21 C"
    assert second.finish_reason == "stop"
    sent = last_body(fake)["messages"]
    assert sent[1]["content"][-1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}],
    }


async def test_untranslatable_input_fails_before_any_request(provider, fake) -> None:
    request = ChatRequest(
        messages=[
            ChatMessage(role="user", content="x"),
            ChatMessage(role="assistant", tool_calls=[ToolCall(id="t", name="f", arguments="{")]),
        ]
    )
    with pytest.raises(BadRequestError) as caught:
        await provider.chat_completion(request)
    assert caught.value.provider == "claude"
    assert fake.requests_to("/v1/messages") == []


# --- streaming -----------------------------------------------------------------


async def test_stream_yields_text_deltas_and_final_usage(provider, fake) -> None:
    chunks = [c async for c in provider.chat_completion_stream(ask("one two three four"))]
    texts = [c.content for c in chunks if c.content]
    assert len(texts) > 1
    assert "".join(texts) == "You said: one two three four"
    final = chunks[-1]
    assert final.is_final and [c for c in chunks if c.is_final] == [final]
    assert final.finish_reason == "stop"
    assert final.model == "claude-3-5-haiku-20241022"
    assert final.usage.prompt_tokens == fake.usage.prompt_tokens == 4
    assert final.usage.completion_tokens == fake.usage.completion_tokens == 6
    assert last_body(fake)["stream"] is True


async def test_stream_yields_as_events_arrive(fake) -> None:
    fake.stream_interval = 0.05
    provider = make_provider(fake)
    try:
        started = time.perf_counter()
        arrivals = []
        async for chunk in provider.chat_completion_stream(ask("a b c d e f g h")):
            arrivals.append((time.perf_counter() - started, chunk))
        first_text = next(t for t, c in arrivals if c.content)
        total = arrivals[-1][0]
        # ~16 events 50 ms apart: the first word comes long before the last event.
        assert first_text < total / 2
    finally:
        await provider.shutdown()


async def test_streamed_tool_calls_arrive_complete_on_the_final_chunk(provider) -> None:
    request = ChatRequest(
        messages=[ChatMessage(role="user", content='call get_weather {"city": "Rome", "days": 3}')],
        tools=[WEATHER_TOOL],
    )
    whole = await provider.chat_completion(request)
    chunks = [c async for c in provider.chat_completion_stream(request)]
    assert [c for c in chunks if c.tool_calls] == [chunks[-1]]
    [call] = chunks[-1].tool_calls
    assert call.name == "get_weather"
    assert (
        call.arguments == whole.tool_calls[0].arguments == json.dumps({"city": "Rome", "days": 3})
    )
    assert chunks[-1].finish_reason == "tool_calls"
    assert "".join(c.content for c in chunks) == whole.content == "Calling get_weather."


async def test_an_error_event_mid_stream_is_typed_after_the_partial_text(provider) -> None:
    received = []
    with pytest.raises(ProviderUnavailableError) as caught:
        async for chunk in provider.chat_completion_stream(ask("overload me mid-stream")):
            received.append(chunk)
    assert received and all(c.content and not c.is_final for c in received)
    assert caught.value.retryable
    assert caught.value.status_code == 529
    assert "overloaded_error" in caught.value.message
    assert caught.value.provider == "claude"


# --- models and health -----------------------------------------------------------


async def test_list_models(provider, fake) -> None:
    models = await provider.list_models()
    assert models == [m[0] for m in fake.models]
    assert headers_of(fake, "/v1/models")["x-api-key"] == KEY


async def test_health_check_lists_models_and_spends_no_tokens(provider, fake) -> None:
    status = await provider.health_check()
    assert status.available
    assert "claude-3-5-haiku-20241022" in status.models
    assert status.response_time_ms is not None
    assert fake.usage.completions == 0
    assert fake.requests_to("/v1/messages") == []


async def test_health_check_with_a_bad_key_is_unavailable_without_the_key(fake) -> None:
    provider = AnthropicProvider(
        {"api_key": "sk-ant-wrong-key-9876543210", "base_url": fake.base_url}
    )
    try:
        status = await provider.health_check()
    finally:
        await provider.shutdown()
    assert not status.available
    assert "authentication_error" in status.error
    assert "sk-ant-wrong-key-9876543210" not in status.error


# --- failures ------------------------------------------------------------------------


async def failure(
    provider: AnthropicProvider, request: ChatRequest, *, stream: bool
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        if stream:
            async for _ in provider.chat_completion_stream(request):
                pass
        else:
            await provider.chat_completion(request)
    error = caught.value
    assert KEY not in str(error) and KEY not in error.message
    assert error.provider == "claude"
    return error


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, ModelNotFoundError),
        (400, BadRequestError),
        (422, BadRequestError),
        (429, RateLimitError),
        (500, ProviderUnavailableError),
        (529, ProviderUnavailableError),
    ],
)
async def test_error_statuses_are_typed(provider, fake, status, kind, stream) -> None:
    # The message quotes the key, as a careless upstream might: it must not get through.
    fake.inject(status=status, message=f"Something about key {KEY}", retry_after=3)
    error = await failure(provider, ask("hi"), stream=stream)
    assert type(error) is kind
    assert error.status_code == status
    assert error.retryable == (status in (429, 500, 529))


async def test_rate_limit_carries_retry_after(provider, fake) -> None:
    fake.inject(status=429, retry_after=3)
    error = await failure(provider, ask("hi"), stream=False)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 3
    assert "rate_limit_error" in error.message


async def test_overloaded_is_unavailable_and_names_the_error_type(provider, fake) -> None:
    fake.inject(status=529, message="Overloaded")
    error = await failure(provider, ask("hi"), stream=False)
    assert isinstance(error, ProviderUnavailableError)
    assert "529" in error.message and "overloaded_error: Overloaded" in error.message


async def test_a_wrong_key_is_an_authentication_error(fake) -> None:
    provider = AnthropicProvider(
        {"api_key": "sk-ant-nope-000000000000", "base_url": fake.base_url}, name="claude"
    )
    try:
        error = await failure(provider, ask("hi"), stream=False)
    finally:
        await provider.shutdown()
    assert isinstance(error, AuthenticationError)
    assert "sk-ant-nope-000000000000" not in error.message


async def test_an_unknown_model_is_model_not_found(provider) -> None:
    error = await failure(provider, ask("hi", model="claude-9-ultra"), stream=False)
    assert isinstance(error, ModelNotFoundError)
    assert "not_found_error" in error.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_slow_upstream_times_out(fake, stream) -> None:
    provider = make_provider(fake, timeout=0.2)
    fake.inject(delay=1.0)
    try:
        error = await failure(provider, ask("hi"), stream=stream)
    finally:
        await provider.shutdown()
    assert isinstance(error, ProviderTimeoutError)


@pytest.mark.parametrize("after", [1, 2, 5])
async def test_a_truncated_stream_is_a_protocol_error(provider, fake, after) -> None:
    fake.inject(truncate_after=after)
    assert isinstance(await failure(provider, ask("a b c"), stream=True), ProtocolError)


async def test_a_stream_that_ends_without_message_stop_is_a_protocol_error(fake) -> None:
    # A well-closed HTTP answer whose events stop short is still a broken stream.
    class ShortFake(FakeAnthropic):
        def events(self, message):
            yield from list(super().events(message))[:-1]

    short = ShortFake(api_keys={KEY}).start()
    provider = make_provider(short)
    try:
        error = await failure(provider, ask("a b c"), stream=True)
    finally:
        await provider.shutdown()
        short.stop()
    assert isinstance(error, ProtocolError) and "message_stop" in error.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_malformed_json_is_a_protocol_error(provider, fake, stream) -> None:
    fake.inject(malformed=True)
    assert isinstance(await failure(provider, ask("a b c"), stream=stream), ProtocolError)


async def test_a_dropped_connection_is_retryable(provider, fake) -> None:
    fake.inject(drop=True)
    assert (await failure(provider, ask("hi"), stream=False)).retryable


async def test_an_unreachable_upstream_is_unavailable() -> None:
    provider = AnthropicProvider(
        {"api_key": KEY, "base_url": "http://127.0.0.1:9", "connect_timeout": 1}, name="claude"
    )
    try:
        error = await failure(provider, ask("hi"), stream=False)
    finally:
        await provider.shutdown()
    assert isinstance(error, ProviderUnavailableError)


# --- lifecycle -------------------------------------------------------------------------


async def test_one_pooled_client_closed_on_shutdown(fake) -> None:
    provider = make_provider(fake)
    await provider.initialize()
    session = provider._session
    await provider.chat_completion(ask("one"))
    pool = session.session
    await provider.chat_completion(ask("two"))
    assert provider._session is session and session.session is pool  # one pool for every call
    assert pool is not None and not pool.closed
    connector = pool.connector
    await provider.shutdown()
    assert pool.closed and connector.closed and provider._session is None
    await provider.shutdown()  # twice is harmless


# --- the fake keeps the API's rules -----------------------------------------------------


def post(fake: FakeAnthropic, body: dict, **headers: str) -> httpx.Response:
    sent = {"x-api-key": KEY, "anthropic-version": "2023-06-01", **headers}
    sent = {k: v for k, v in sent.items() if v}
    return httpx.post(f"{fake.url}/v1/messages", json=body, headers=sent)


GOOD = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize(
    ("body", "headers", "status", "error_type", "mentions"),
    [
        (GOOD, {"x-api-key": ""}, 401, "authentication_error", "x-api-key"),
        (GOOD, {"anthropic-version": ""}, 400, "invalid_request_error", "anthropic-version"),
        ({**GOOD, "max_tokens": None}, {}, 400, "invalid_request_error", "max_tokens"),
        (
            {
                **GOOD,
                "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}],
            },
            {},
            400,
            "invalid_request_error",
            "system",
        ),
        (
            {**GOOD, "messages": [{"role": "assistant", "content": "hi"}]},
            {},
            400,
            "invalid_request_error",
            "first",
        ),
        (
            {
                **GOOD,
                "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            },
            {},
            400,
            "invalid_request_error",
            "alternate",
        ),
        (
            {
                **GOOD,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "x", "content": "1"}],
                    }
                ],
            },
            {},
            400,
            "invalid_request_error",
            "tool_use_id",
        ),
        ({**GOOD, "model": "claude-9"}, {}, 404, "not_found_error", "claude-9"),
    ],
)
def test_the_fake_rejects_what_the_api_rejects(
    fake, body, headers, status, error_type, mentions
) -> None:
    body = {k: v for k, v in body.items() if v is not None}
    response = post(fake, body, **headers)
    assert response.status_code == status
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == error_type
    assert mentions in payload["error"]["message"]
    assert fake.usage.completions == 0


def test_the_fake_streams_the_documented_event_sequence(fake) -> None:
    with httpx.stream(
        "POST",
        f"{fake.url}/v1/messages",
        json={**GOOD, "stream": True},
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        names = [
            line[len("event: ") :] for line in response.iter_lines() if line.startswith("event: ")
        ]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_the_fake_pages_its_model_list(fake) -> None:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    first = httpx.get(f"{fake.url}/v1/models?limit=2", headers=headers).json()
    assert first["has_more"] is True and len(first["data"]) == 2
    assert first["data"][0]["type"] == "model" and first["data"][0]["display_name"]
    rest = httpx.get(
        f"{fake.url}/v1/models?limit=1000&after_id={first['last_id']}", headers=headers
    ).json()
    assert rest["has_more"] is False
    assert [m["id"] for m in first["data"] + rest["data"]] == [m[0] for m in fake.models]


# --- the generic contract ------------------------------------------------------------------


class TestAnthropicConformance(ProviderConformance):
    plugin_class = AnthropicProvider
    fake_class = FakeAnthropic

    def make_config(self, fake):
        return {"base_url": fake.base_url, "api_key": self.secret}
