"""The ollama provider against FakeOllama, over real HTTP on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from providers.errors import (
    BadRequestError,
    ModelNotFoundError,
    ProtocolError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from providers.plugins.ollama_provider import OllamaProvider
from providers.testing.conformance import ProviderConformance
from providers.testing.fake_ollama import EMBEDDING_DIMENSIONS, FakeOllama, OllamaFault
from providers.types import ChatMessage, ChatRequest, StreamingChunk, ToolCall

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

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
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
async def provider(fake: FakeOllama) -> AsyncIterator[OllamaProvider]:
    provider = OllamaProvider({"base_url": fake.base_url, "timeout": 5}, name="ollama")
    await provider.initialize()
    yield provider
    await provider.shutdown()


def ask(text: str, **fields) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **fields)


async def collect(provider: OllamaProvider, request: ChatRequest) -> list[StreamingChunk]:
    return [chunk async for chunk in provider.chat_completion_stream(request)]


def sent(fake: FakeOllama, path: str = "/api/chat") -> dict:
    """Return the body of the last request the fake received at PATH."""
    return fake.requests_to(path)[-1].body


# --- configuration ---------------------------------------------------------------


def test_schema_has_defaults_no_key_and_a_title_for_every_setting() -> None:
    schema = OllamaProvider.config_schema()
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    assert props["base_url"]["default"] == "http://localhost:11434"
    assert props["default_model"]["default"] == "llama3"
    assert {"timeout", "connect_timeout", "max_connections", "keep_alive"} <= set(props)
    assert "api_key" not in props
    assert all(p.get("title") and p.get("description") for p in props.values())
    provider = OllamaProvider({})
    assert provider.config["base_url"] == "http://localhost:11434"
    assert provider.metadata.requires_api_key is False


def test_bad_settings_are_named() -> None:
    provider = OllamaProvider({})
    errors = provider.get_config_errors(
        {"base_url": "localhost:11434", "keep_alive": "5", "api_key": "x"}
    )
    assert set(errors) == {"base_url", "keep_alive", "api_key"}
    for good in ("5m", "1h30m", "0", "-1m", "90s"):
        assert provider.validate_config({"keep_alive": good}), good


def test_model_info_is_data_with_zero_prices_whatever_the_tag() -> None:
    provider = OllamaProvider({})
    info = provider.get_model_info("llama3:8b")
    assert info["context_length"] == 8192
    assert info["input_cost_per_token"] == 0.0 and info["output_cost_per_token"] == 0.0
    assert provider.get_model_info("llama3.1:70b")["context_length"] == 131072
    assert provider.get_model_info("nomic-embed-text:latest")["context_length"] > 0
    assert provider.get_model_info("no-such-model") is None


# --- chat ------------------------------------------------------------------------


async def test_chat_sends_stream_false_and_reads_eval_counts_as_usage(provider, fake) -> None:
    response = await provider.chat_completion(ask("hello there"))
    assert response.content == "You said: hello there"
    assert response.model == "llama3" and response.provider == "ollama"
    assert response.finish_reason == "stop"
    assert response.usage.prompt_tokens == fake.usage.prompt_tokens == 2
    assert response.usage.completion_tokens == fake.usage.completion_tokens == 4
    body = sent(fake)
    assert body["stream"] is False  # Ollama streams when it is left out
    assert body["model"] == "llama3"


async def test_stream_arrives_in_pieces_and_ends_with_the_fakes_counts(provider, fake) -> None:
    chunks = await collect(provider, ask("one two three four", model="mistral"))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) > 1
    assert "".join(texts) == "You said: one two three four"
    final = chunks[-1]
    assert final.is_final and [c for c in chunks if c.is_final] == [final]
    assert final.finish_reason == "stop" and final.model == "mistral"
    assert final.usage.prompt_tokens == fake.usage.prompt_tokens
    assert final.usage.completion_tokens == fake.usage.completion_tokens == 6
    assert sent(fake)["stream"] is True


async def test_sampling_settings_reach_ollama_as_options(provider, fake) -> None:
    response = await provider.chat_completion(
        ask("a b c d e", max_tokens=3, temperature=0.1, top_p=0.5, stop=["END"])
    )
    assert sent(fake)["options"] == {
        "temperature": 0.1,
        "top_p": 0.5,
        "num_predict": 3,
        "stop": ["END"],
    }
    assert response.content == "You said: a"
    assert response.finish_reason == "length"


async def test_keep_alive_is_sent_when_configured(fake) -> None:
    provider = OllamaProvider({"base_url": fake.base_url, "keep_alive": "30m"})
    await provider.initialize()
    try:
        await provider.chat_completion(ask("hi"))
        await provider.embeddings(["hi"])
    finally:
        await provider.shutdown()
    assert sent(fake)["keep_alive"] == "30m"
    assert sent(fake, "/api/embed")["keep_alive"] == "30m"


async def test_images_are_sent_as_base64_images(provider, fake) -> None:
    request = ChatRequest(
        model="llava",
        messages=[
            ChatMessage(
                role="user",
                content=[
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            )
        ],
    )
    response = await provider.chat_completion(request)
    assert response.content == "You said: what is this"
    assert sent(fake)["messages"] == [{"role": "user", "content": "what is this", "images": [PNG]}]


async def test_a_linked_image_is_refused_before_any_request(provider, fake) -> None:
    request = ChatRequest(
        messages=[
            ChatMessage(
                role="user",
                content=[{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
            )
        ]
    )
    with pytest.raises(BadRequestError) as caught:
        await provider.chat_completion(request)
    assert caught.value.provider == "ollama"
    assert caught.value.field == "messages.0.content.0.image_url"
    assert fake.requests_to("/api/chat") == []


async def test_tools_round_trip(provider, fake) -> None:
    request = ask('call get_weather {"city": "Paris"}', model="llama3", tools=[WEATHER_TOOL])
    response = await provider.chat_completion(request)
    assert sent(fake)["tools"] == [WEATHER_TOOL]
    assert response.finish_reason == "tool_calls"
    [call] = response.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.id

    request.messages += [
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content="22 degrees and sunny", tool_call_id=call.id),
        ChatMessage(role="user", content="thanks"),
    ]
    answer = await provider.chat_completion(request)
    assert answer.content == "You said: thanks" and answer.finish_reason == "stop"
    assistant, tool = sent(fake)["messages"][1:3]
    assert assistant["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert tool == {"role": "tool", "content": "22 degrees and sunny", "tool_name": "get_weather"}


async def test_a_streamed_tool_call_finishes_with_tool_calls(provider) -> None:
    request = ask('call get_weather {"city": "Oslo"}', tools=[WEATHER_TOOL])
    chunks = await collect(provider, request)
    calls = [call for c in chunks for call in (c.tool_calls or [])]
    assert [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Oslo"}
    assert chunks[-1].is_final and chunks[-1].finish_reason == "tool_calls"


async def test_a_round_trip_of_our_own_tool_call(provider) -> None:
    # A conversation Echo built: the assistant's call has JSON text arguments.
    call = ToolCall(id="call_9", name="get_weather", arguments='{"city": "Rome"}')
    request = ChatRequest(
        messages=[
            ChatMessage(role="user", content="weather?"),
            ChatMessage(role="assistant", tool_calls=[call]),
            ChatMessage(role="tool", content="sunny", tool_call_id="call_9"),
        ],
        tools=[WEATHER_TOOL],
    )
    assert (await provider.chat_completion(request)).content == "You said: weather?"


# --- embeddings, models, health ----------------------------------------------------------


async def test_embeddings_are_one_vector_per_text(provider, fake) -> None:
    vectors = await provider.embeddings(["one", "two", "one"])
    assert len(vectors) == 3 and all(len(v) == EMBEDDING_DIMENSIONS for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert sent(fake, "/api/embed") == {"model": "nomic-embed-text", "input": ["one", "two", "one"]}
    await provider.embeddings(["x"], model="llama3")
    assert sent(fake, "/api/embed")["model"] == "llama3"
    assert await provider.embeddings([]) == []


async def test_embeddings_with_an_unknown_model_is_model_not_found(provider) -> None:
    with pytest.raises(ModelNotFoundError):
        await provider.embeddings(["x"], model="all-minilm")


async def test_models_come_from_tags(provider) -> None:
    models = await provider.list_models()
    assert {"llama3:latest", "mistral:latest", "nomic-embed-text:latest"} <= set(models)


async def test_health_check_lists_models_and_spends_no_tokens(provider, fake) -> None:
    status = await provider.health_check()
    assert status.available and "llama3:latest" in status.models
    assert status.response_time_ms is not None
    assert fake.usage.completions == 0
    assert [r.path for r in fake.requests] == ["/api/tags"]


async def test_health_check_of_a_server_that_is_down_says_why() -> None:
    with FakeOllama() as gone:
        url = gone.base_url
    provider = OllamaProvider({"base_url": url, "connect_timeout": 1})
    await provider.initialize()
    try:
        status = await provider.health_check()
    finally:
        await provider.shutdown()
    assert not status.available and "Cannot reach Ollama" in status.error


# --- failures ------------------------------------------------------------------------


async def test_unknown_model_is_model_not_found_with_ollamas_message(provider) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        await provider.chat_completion(ask("hi", model="llama9"))
    assert caught.value.status_code == 404
    assert 'model "llama9" not found' in caught.value.message
    assert caught.value.provider == "ollama"
    with pytest.raises(ModelNotFoundError):
        await collect(provider, ask("hi", model="llama9"))


async def test_a_model_that_cannot_chat_is_a_bad_request(provider) -> None:
    with pytest.raises(BadRequestError) as caught:
        await provider.chat_completion(ask("hi", model="nomic-embed-text"))
    assert "does not support chat" in caught.value.message and not caught.value.retryable


@pytest.mark.parametrize("stream", [False, True])
async def test_bad_request_is_typed(provider, fake, stream: bool) -> None:
    fake.inject(status=400, message="invalid options")
    with pytest.raises(BadRequestError) as caught:
        if stream:
            await collect(provider, ask("hi"))
        else:
            await provider.chat_completion(ask("hi"))
    assert caught.value.message.endswith("invalid options")


async def test_rate_limit_carries_retry_after(provider, fake) -> None:
    fake.inject(status=429, retry_after=3, message="too many requests")
    with pytest.raises(RateLimitError) as caught:
        await provider.chat_completion(ask("hi"))
    assert caught.value.retry_after == 3 and caught.value.retryable


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_unavailable(provider, fake, status: int) -> None:
    fake.inject(status=status)
    with pytest.raises(ProviderUnavailableError) as caught:
        await collect(provider, ask("hi"))
    assert caught.value.status_code == status


async def test_a_slow_server_times_out(fake) -> None:
    provider = OllamaProvider({"base_url": fake.base_url, "timeout": 0.2})
    await provider.initialize()
    fake.inject(delay=1.0)
    try:
        with pytest.raises(ProviderTimeoutError):
            await provider.chat_completion(ask("hi"))
    finally:
        await provider.shutdown()


async def test_a_cut_stream_is_an_error_after_the_text_so_far(provider, fake) -> None:
    fake.inject(truncate_after=2)
    received: list[str] = []
    with pytest.raises(ProtocolError):
        async for chunk in provider.chat_completion_stream(ask("one two three four")):
            received.append(chunk.content)
    assert "".join(received) == "You said:"


async def test_a_cut_whole_answer_is_a_protocol_error(provider, fake) -> None:
    fake.inject(truncate_after=0)
    with pytest.raises(ProtocolError):
        await provider.chat_completion(ask("hi"))


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_json_is_a_protocol_error(provider, fake, stream: bool) -> None:
    fake.inject(malformed=True)
    with pytest.raises(ProtocolError):
        if stream:
            await collect(provider, ask("one two three"))
        else:
            await provider.chat_completion(ask("hi"))


async def test_a_stream_without_its_done_object_is_a_protocol_error(provider, fake) -> None:
    fake.inject(OllamaFault(skip_done=True))
    with pytest.raises(ProtocolError, match="without its final 'done'"):
        await collect(provider, ask("one two"))


async def test_a_dropped_connection_is_a_retryable_error(provider, fake) -> None:
    fake.inject(drop=True)
    with pytest.raises(ProviderError) as caught:
        await provider.chat_completion(ask("hi"))
    assert isinstance(caught.value, ProtocolError | ProviderUnavailableError)
    assert caught.value.retryable
    assert (await provider.chat_completion(ask("again"))).content == "You said: again"


async def test_an_error_object_mid_stream_is_unavailable(provider, fake) -> None:
    fake.inject(OllamaFault(stream_error="an error was encountered while running the model"))
    received: list[str] = []
    with pytest.raises(ProviderUnavailableError) as caught:
        async for chunk in provider.chat_completion_stream(ask("one two three")):
            received.append(chunk.content)
    assert received == ["You"]
    assert "an error was encountered while running the model" in caught.value.message
    assert caught.value.provider == "ollama"


async def test_a_model_not_found_error_object_is_model_not_found(provider, fake) -> None:
    fake.inject(OllamaFault(stream_error='model "x" not found', error_after=0))
    with pytest.raises(ModelNotFoundError):
        await collect(provider, ask("hi"))


# --- lifecycle -------------------------------------------------------------------------


async def test_one_pooled_client_closed_on_shutdown(fake) -> None:
    provider = OllamaProvider({"base_url": fake.base_url})
    await provider.initialize()
    session = provider._session
    await provider.chat_completion(ask("a"))
    pool = session.session
    await provider.list_models()
    assert provider._session is session and session.session is pool  # one pool for every call
    assert pool is not None and not pool.closed
    connector = pool.connector
    await provider.shutdown()
    assert pool.closed and connector.closed and provider._session is None


# --- the fake speaks Ollama's protocol (from docs/api.md), not Echo's client's -----------


def test_the_fake_streams_when_stream_is_left_out(fake) -> None:
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi you"}]}
    response = httpx.post(f"{fake.url}/api/chat", json=body)
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["done"] for line in lines] == [False, False, False, False, True]
    assert lines[-1]["eval_count"] == 4 and lines[-1]["done_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"messages": []}, 400, "model is required"),
        ({"model": "llama3"}, 400, "messages is required"),
        ({"model": "gpt-4", "messages": []}, 404, 'model "gpt-4" not found, try pulling it first'),
        (
            {"model": "llava", "messages": [{"role": "user", "content": "", "images": ["@@"]}]},
            400,
            "illegal base64 data in images",
        ),
    ],
)
def test_the_fake_refuses_bad_bodies_as_ollama_does(fake, body, status, error) -> None:
    response = httpx.post(f"{fake.url}/api/chat", json=body)
    assert response.status_code == status
    assert response.json() == {"error": error}


def test_the_fake_loads_a_model_for_an_empty_message_list(fake) -> None:
    body = {"model": "llama3", "messages": [], "stream": False}
    answer = httpx.post(f"{fake.url}/api/chat", json=body).json()
    assert answer["done"] is True and answer["done_reason"] == "load"
    assert fake.usage.completions == 0


def test_the_fake_embeds_a_single_string_and_says_its_version(fake) -> None:
    answer = httpx.post(f"{fake.url}/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    assert len(answer.json()["embeddings"]) == 1
    assert httpx.get(f"{fake.url}/api/version").json()["version"]


def test_the_fakes_injected_errors_have_ollamas_shape(fake) -> None:
    fake.inject(status=503, message="server busy")
    response = httpx.get(f"{fake.url}/api/tags")
    assert response.status_code == 503 and response.json() == {"error": "server busy"}


# --- the generic provider contract ------------------------------------------------------


class TestOllamaConformance(ProviderConformance):
    plugin_class = OllamaProvider
    fake_class = FakeOllama
