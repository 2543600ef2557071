"""The openai provider against FakeOpenAI, over real HTTP on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from providers.base import PluginCapability, secret_fields
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
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime.registry import plugin_class_name
from providers.testing.conformance import ProviderConformance
from providers.testing.fake_openai import FakeOpenAI
from providers.testing.fake_server import ScriptedReply
from providers.types import ChatMessage, ChatRequest, StreamingChunk, ToolCall

# Distinctive, so that a leak into any message is easy to spot.
SECRET = "sk-proj-echo-test-7f3a9c1e5b2d4680-DO-NOT-LEAK"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def make_provider(fake: FakeOpenAI, **settings: Any) -> OpenAIProvider:
    config = {"api_key": SECRET, "base_url": fake.base_url, "timeout": 5, **settings}
    return OpenAIProvider(config, name="openai")


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    provider = make_provider(fake)
    await provider.initialize()
    yield provider
    await provider.shutdown()


def ask(text: str | list[dict[str, Any]], **fields: Any) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **fields)


async def collect(provider: OpenAIProvider, request: ChatRequest) -> list[StreamingChunk]:
    return [chunk async for chunk in provider.chat_completion_stream(request)]


def headers_of(fake: FakeOpenAI) -> dict[str, str]:
    return {k.lower(): v for k, v in fake.requests[-1].headers.items()}


async def failure(provider: OpenAIProvider, *, stream: bool = False) -> ProviderError:
    """Return the typed error one chat call raises; the key must not be in it."""
    with pytest.raises(ProviderError) as caught:
        if stream:
            await collect(provider, ask("Hello there"))
        else:
            await provider.chat_completion(ask("Hello there"))
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.as_dict())
    return caught.value


# --- the plugin ---------------------------------------------------------------


def test_the_registry_finds_the_class_by_its_plugin_name() -> None:
    assert plugin_class_name("openai").lower() == OpenAIProvider.__name__.lower()


def test_capabilities_are_the_guides() -> None:
    provider = OpenAIProvider({"api_key": SECRET})
    assert set(provider.metadata.capabilities) == {
        PluginCapability.STREAMING,
        PluginCapability.FUNCTION_CALLING,
        PluginCapability.VISION,
        PluginCapability.EMBEDDINGS,
    }
    assert provider.metadata.requires_api_key
    assert provider.metadata.models[0] == "gpt-4o-mini"


def test_config_schema_has_defaults_descriptions_and_a_secret_key() -> None:
    schema = OpenAIProvider.config_schema()
    properties = schema["properties"]
    assert schema["required"] == ["api_key"]
    assert schema["additionalProperties"] is False
    assert {"api_key", "organization", "base_url", "default_model", "timeout"} <= set(properties)
    assert all(p.get("title") and p.get("description") for p in properties.values())
    assert properties["api_key"]["writeOnly"] is True
    assert secret_fields(schema) == {"api_key"}
    assert properties["base_url"]["default"] == "https://api.openai.com/v1"
    assert properties["default_model"]["default"] == "gpt-4o-mini"
    provider = OpenAIProvider({"api_key": SECRET})
    assert provider.config["base_url"] == "https://api.openai.com/v1"
    assert provider.config["timeout"] == 60


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "api_key"),
        ({"api_key": ""}, "api_key"),
        ({"api_key": SECRET, "base_url": "api.openai.com"}, "base_url"),
        ({"api_key": SECRET, "timeout": 0}, "timeout"),
        ({"api_key": SECRET, "temperature": 5}, "temperature"),
        ({"api_key": SECRET, "temprature": 0.5}, "temprature"),
    ],
)
def test_bad_settings_are_named(config: dict[str, Any], field: str) -> None:
    errors = OpenAIProvider({"api_key": SECRET}).get_config_errors(config)
    assert field in errors
    assert SECRET not in json.dumps(errors)


def test_model_info_comes_from_the_yaml_catalogue() -> None:
    provider = OpenAIProvider({"api_key": SECRET})
    info = provider.get_model_info("gpt-4o-mini")
    assert info["context_length"] == 128000
    assert info["input_cost_per_token"] == pytest.approx(0.15 / 1_000_000)
    assert info["output_cost_per_token"] == pytest.approx(0.60 / 1_000_000)
    # A dated snapshot reads its family's entry, not a shorter prefix's.
    assert provider.get_model_info("gpt-4o-2024-08-06")["input_cost_per_token"] == pytest.approx(
        2.5 / 1_000_000
    )
    assert provider.get_model_info("gpt-4.1-mini")["context_length"] == 1047576
    assert provider.get_model_info("text-embedding-3-small")["output_cost_per_token"] == 0
    assert provider.get_model_info("no-such-model") is None


# --- chat -----------------------------------------------------------------------


async def test_chat_answers_with_the_usage_the_upstream_counted(provider, fake) -> None:
    response = await provider.chat_completion(ask("one two three"))
    assert response.content == "You said: one two three"
    assert response.model == "gpt-4o-mini"
    assert response.provider == "openai"
    assert response.finish_reason == "stop"
    assert response.usage.prompt_tokens == fake.usage.prompt_tokens == 3
    assert response.usage.completion_tokens == fake.usage.completion_tokens == 5
    request = fake.requests_to("/v1/chat/completions")[-1]
    assert request.body["model"] == "gpt-4o-mini"
    assert "stream" not in request.body
    assert headers_of(fake)["authorization"] == f"Bearer {SECRET}"
    assert "openai-organization" not in headers_of(fake)


async def test_the_organization_header_is_sent_when_configured(fake) -> None:
    provider = make_provider(fake, organization="org-echo123")
    await provider.initialize()
    try:
        await provider.chat_completion(ask("hi"))
        assert headers_of(fake)["openai-organization"] == "org-echo123"
        await provider.list_models()
        assert headers_of(fake)["openai-organization"] == "org-echo123"
    finally:
        await provider.shutdown()


async def test_request_options_reach_the_upstream(provider, fake) -> None:
    await provider.chat_completion(
        ask("a b c d e f", model="gpt-4.1", temperature=0.3, top_p=0.9, max_tokens=3, user="u1")
    )
    body = fake.requests[-1].body
    assert body["model"] == "gpt-4.1"
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["user"]) == (
        0.3,
        0.9,
        3,
        "u1",
    )


async def test_reasoning_models_get_max_completion_tokens(provider, fake) -> None:
    response = await provider.chat_completion(ask("a b c d e f", model="o4-mini", max_tokens=2))
    body = fake.requests[-1].body
    assert body["max_completion_tokens"] == 2 and "max_tokens" not in body
    assert response.finish_reason == "length"
    assert response.content == "You said:"


async def test_stream_yields_chunks_as_they_arrive_and_ends_with_usage() -> None:
    words = "alpha beta gamma delta epsilon"
    with FakeOpenAI(stream_interval=0.05) as fake:
        provider = make_provider(fake)
        await provider.initialize()
        try:
            arrivals: list[tuple[float, StreamingChunk]] = []
            async for chunk in provider.chat_completion_stream(ask(words)):
                arrivals.append((time.perf_counter(), chunk))
        finally:
            await provider.shutdown()
    chunks = [chunk for _, chunk in arrivals]
    content = [chunk for chunk in chunks if chunk.content]
    assert len(content) > 1
    assert "".join(c.content for c in chunks) == f"You said: {words}"
    # Each piece came when the upstream sent it, not all at once at the end.
    first, last = arrivals[0][0], arrivals[len(content) - 1][0]
    assert last - first >= 0.05 * (len(content) - 1) * 0.8
    final = chunks[-1]
    assert final.is_final and [c for c in chunks if c.is_final] == [final]
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.prompt_tokens == fake.usage.prompt_tokens == 5
    assert final.usage.completion_tokens == fake.usage.completion_tokens == 7
    body = fake.requests_to("/v1/chat/completions")[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_streams_reuse_one_pooled_connection(provider, fake) -> None:
    for _ in range(4):
        await collect(provider, ask("hello"))
    await provider.chat_completion(ask("hello"))
    assert len(fake.peers) == 1


# --- tools and images -----------------------------------------------------------


async def test_tool_call_round_trip(provider, fake) -> None:
    request = ask('call get_weather {"city": "Paris"}', tools=[WEATHER_TOOL], tool_choice="auto")
    response = await provider.chat_completion(request)
    assert response.finish_reason == "tool_calls"
    assert response.content == ""
    [call] = response.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")
    assert fake.requests[-1].body["tools"] == [WEATHER_TOOL]

    request.messages += [
        ChatMessage(role="assistant", content="", tool_calls=response.tool_calls),
        ChatMessage(role="tool", content='{"temp_c": 18}', tool_call_id=call.id),
    ]
    answer = await provider.chat_completion(request)
    assert answer.content == 'Tool result: {"temp_c": 18}'
    assert answer.tool_calls is None
    sent = fake.requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[1]["content"] is None
    assert sent[2] == {"role": "tool", "content": '{"temp_c": 18}', "tool_call_id": call.id}


async def test_a_streamed_tool_call_arrives_whole_on_the_final_chunk(provider) -> None:
    request = ask('call get_weather {"city": "Paris", "unit": "celsius"}', tools=[WEATHER_TOOL])
    chunks = await collect(provider, request)
    final = chunks[-1]
    assert final.is_final and final.finish_reason == "tool_calls"
    assert [c.tool_calls for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    [call] = final.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    assert final.usage is not None and final.usage.completion_tokens > 0


async def test_parallel_streamed_tool_calls_are_kept_apart(provider, fake) -> None:
    fake.script(
        ScriptedReply(
            tool_calls=[
                {"id": "call_a", "name": "get_weather", "arguments": {"city": "Paris"}},
                {"id": "call_b", "name": "get_weather", "arguments": {"city": "Tokyo"}},
            ]
        )
    )
    final = (await collect(provider, ask("both cities", tools=[WEATHER_TOOL])))[-1]
    assert final.tool_calls == [
        ToolCall(id="call_a", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCall(id="call_b", name="get_weather", arguments='{"city": "Tokyo"}'),
    ]


async def test_images_are_sent_as_parts(provider, fake) -> None:
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    response = await provider.chat_completion(ask(parts, model="gpt-4o"))
    assert response.content == "You said: What is in this picture?"
    assert fake.requests[-1].body["messages"][0]["content"] == parts


# --- embeddings, models, health ---------------------------------------------------


async def test_embeddings(provider, fake) -> None:
    vectors = await provider.embeddings(["first text", "second"])
    assert len(vectors) == 2 and all(len(v) == 8 for v in vectors)
    assert vectors[0] != vectors[1]
    assert await provider.embeddings(["first text"]) == vectors[:1]
    body = fake.requests_to("/v1/embeddings")[-1].body
    assert body["model"] == "text-embedding-3-small" and body["input"] == ["first text"]
    await provider.embeddings(["x"], model="text-embedding-3-large")
    assert fake.requests[-1].body["model"] == "text-embedding-3-large"
    count = len(fake.requests)
    assert await provider.embeddings([]) == []
    assert len(fake.requests) == count, "nothing to embed, nothing sent"


async def test_models_are_listed(provider, fake) -> None:
    assert await provider.list_models() == fake.models


async def test_health_check_lists_models_and_spends_no_tokens(provider, fake) -> None:
    status = await provider.health_check()
    assert status.available and status.models == fake.models
    assert status.response_time_ms is not None and status.response_time_ms >= 0
    assert fake.usage.completions == 0
    assert [r.path for r in fake.requests] == ["/v1/models"]


async def test_health_check_reports_a_refused_key_without_the_key(fake) -> None:
    fake.api_keys = {"sk-another-key"}
    provider = make_provider(fake)
    status = await provider.health_check()
    await provider.shutdown()
    assert not status.available
    assert "401" in status.error and "invalid_api_key" in status.error
    assert SECRET not in status.error


# --- failures -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, ModelNotFoundError),
        (422, BadRequestError),
        (500, ProviderUnavailableError),
        (502, ProviderUnavailableError),
        (503, ProviderUnavailableError),
    ],
)
async def test_every_status_is_a_typed_error(provider, fake, status, kind, stream) -> None:
    fake.inject(status=status, message=f"Injected with {SECRET} inside.")
    error = await failure(provider, stream=stream)
    assert type(error) is kind
    assert error.status_code == status
    assert error.provider == "openai"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_rate_limit_carries_retry_after(provider, fake, stream) -> None:
    fake.inject(status=429, retry_after=3)
    error = await failure(provider, stream=stream)
    assert isinstance(error, RateLimitError) and error.retryable
    assert error.retry_after == 3
    assert "rate_limit_exceeded" in error.message


async def test_a_wrong_key_is_an_authentication_error(fake) -> None:
    fake.api_keys = {"sk-the-right-one"}
    provider = make_provider(fake)
    try:
        error = await failure(provider)
    finally:
        await provider.shutdown()
    assert isinstance(error, AuthenticationError) and not error.retryable


async def test_an_unknown_model_is_model_not_found(provider) -> None:
    with pytest.raises(ModelNotFoundError, match="model_not_found") as caught:
        await provider.chat_completion(ask("hi", model="gpt-nope"))
    assert "gpt-nope" in caught.value.message


async def test_a_bad_request_names_the_upstreams_reason(provider) -> None:
    request = ChatRequest(messages=[ChatMessage(role="robot", content="beep")])
    with pytest.raises(BadRequestError, match="invalid_value") as caught:
        await provider.chat_completion(request)
    assert "robot" in caught.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_slow_upstream_times_out(fake, stream) -> None:
    provider = make_provider(fake, timeout=0.2)
    fake.inject(delay=1.0)
    try:
        error = await failure(provider, stream=stream)
    finally:
        await provider.shutdown()
    assert isinstance(error, ProviderTimeoutError) and error.retryable


# "You said: Hello there": role (0), four words (1-4), finish (5), usage (6), [DONE] (7).
@pytest.mark.parametrize("after", [0, 2, 5, 6, 7])
async def test_a_cut_stream_is_a_protocol_error(provider, fake, after) -> None:
    fake.inject(truncate_after=after)
    assert isinstance(await failure(provider, stream=True), ProtocolError)


async def test_a_cut_whole_answer_is_a_protocol_error(provider, fake) -> None:
    fake.inject(truncate_after=0)
    assert isinstance(await failure(provider), ProtocolError)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_malformed_json_is_a_protocol_error(provider, fake, stream) -> None:
    fake.inject(malformed=True)
    error = await failure(provider, stream=stream)
    assert isinstance(error, ProtocolError)
    assert "OpenAI" in error.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_dropped_connection_is_retryable(provider, fake, stream) -> None:
    fake.inject(drop=True)
    error = await failure(provider, stream=stream)
    assert isinstance(error, ProviderUnavailableError | ProtocolError) and error.retryable


class FakeWithoutDone(FakeOpenAI):
    """Ends its streams cleanly but leaves out ``data: [DONE]``."""

    def stream_events(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        return (e for e in super().stream_events(*args, **kwargs) if e != b"data: [DONE]\n\n")


class FakeWithoutFinish(FakeOpenAI):
    """Leaves out the chunk that carries the finish reason."""

    def stream_events(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        return (
            e
            for e in super().stream_events(*args, **kwargs)
            if b'"finish_reason": null' in e or b'"choices": []' in e or e == b"data: [DONE]\n\n"
        )


class FakeFailingMidStream(FakeOpenAI):
    """Sends an ``error`` event in place of the rest of the answer."""

    def stream_events(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        events = super().stream_events(*args, **kwargs)
        yield next(events)
        yield next(events)
        error = {"error": {"message": "The server had an error.", "type": "server_error"}}
        yield b"data: " + json.dumps(error).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("fake_class", "kind", "words"),
    [
        (FakeWithoutDone, ProtocolError, "[DONE]"),
        (FakeWithoutFinish, ProtocolError, "finish reason"),
        (FakeFailingMidStream, ProviderUnavailableError, "mid-stream"),
    ],
)
async def test_a_stream_that_ends_wrong_is_an_error(fake_class, kind, words) -> None:
    with fake_class() as fake:
        provider = make_provider(fake)
        seen: list[StreamingChunk] = []
        try:
            with pytest.raises(kind, match=words.replace("[", r"\[").replace("]", r"\]")):
                async for chunk in provider.chat_completion_stream(ask("one two")):
                    seen.append(chunk)
        finally:
            await provider.shutdown()
    assert not any(c.is_final for c in seen)


async def test_a_pasted_key_with_a_newline_is_sent_bare(fake) -> None:
    provider = make_provider(fake, api_key=f"{SECRET}\n", organization=" org-echo123\n")
    try:
        await provider.chat_completion(ask("hi"))
    finally:
        await provider.shutdown()
    assert headers_of(fake)["authorization"] == f"Bearer {SECRET}"
    assert headers_of(fake)["openai-organization"] == "org-echo123"


async def test_an_invalid_header_error_never_quotes_the_key(fake) -> None:
    class Unstripped(OpenAIProvider):
        def auth_headers(self) -> dict[str, str]:
            return {"Authorization": f"Bearer {self.config['api_key']}"}

    # The HTTP library refuses the header and quotes it, newline escaped.
    provider = Unstripped({"api_key": f"{SECRET}\r\n", "base_url": fake.base_url}, name="openai")
    try:
        error = await failure(provider)
    finally:
        await provider.shutdown()
    assert "header" in error.message.lower()


async def test_it_recovers_after_a_failure(provider, fake) -> None:
    fake.inject(status=503)
    await failure(provider)
    assert (await provider.chat_completion(ask("again"))).content == "You said: again"


async def test_shutdown_closes_the_client(fake) -> None:
    provider = make_provider(fake)
    await provider.initialize()
    session = provider._session
    await provider.chat_completion(ask("hi"))
    await provider.list_models()
    await provider.chat_completion(ask("again"))
    assert provider._session is session  # one pool for every call ...
    assert len(fake.peers) == 1  # ... and its one connection, reused
    pool = session.session
    assert pool is not None and not pool.closed
    connector = pool.connector
    await provider.shutdown()
    assert pool.closed and connector.closed and provider._session is None
    await provider.shutdown()  # twice is harmless


# --- the conformance kit ------------------------------------------------------------


class TestOpenAIConformance(ProviderConformance):
    plugin_class = OpenAIProvider
    fake_class = FakeOpenAI
    secret = SECRET

    def make_config(self, fake):
        return {"api_key": self.secret, "base_url": fake.base_url}


class FakeWritingSSEEveryWay(FakeOpenAI):
    """Writes each event in another of the forms the SSE format allows, the same JSON in each.

    ``data:`` with no space, a comment, an ``event:`` line, CRLF line ends, and
    the JSON cut over two ``data:`` lines (joined with a line feed, still JSON).
    """

    def stream_events(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        forms = [
            lambda data: b"data:" + data + b"\n\n",
            lambda data: b": keep-alive\n" + b"data: " + data + b"\n\n",
            lambda data: b"event: message\ndata: " + data + b"\n\n",
            lambda data: b"data: " + data + b"\r\n\r\n",
            lambda data: b"data: " + data.replace(b", ", b",\ndata: ", 1) + b"\n\n",
        ]
        for position, event in enumerate(super().stream_events(*args, **kwargs)):
            data = event.removeprefix(b"data: ").removesuffix(b"\n\n")
            yield forms[position % len(forms)](data)


async def test_every_form_of_an_sse_event_is_read_the_same() -> None:
    request = ask("Tell me something long enough for several chunks")
    with FakeOpenAI() as plain_fake, FakeWritingSSEEveryWay() as varied_fake:
        chunks = []
        for fake in (plain_fake, varied_fake):
            provider = make_provider(fake)
            await provider.initialize()
            try:
                chunks.append(await collect(provider, request))
            finally:
                await provider.shutdown()
    plain, varied = chunks
    assert len(plain) > 3
    assert varied == plain
