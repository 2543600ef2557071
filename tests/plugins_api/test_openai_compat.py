"""``/v1/chat/completions``, ``/v1/models`` and ``/v1/embeddings``: the exact wire, byte by byte.

The SDK tests (``tests/test_sdk_clients.py``) prove the official client
works; these pin the framing, the error shape and the request translation
against small test providers in the process registry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from django.test import Client

from plugins_api.compat import openai_api as openai_compat
from providers.config.services import provider_config_create
from providers.errors import AuthenticationError, ProviderUnavailableError
from providers.models import ProviderConfig
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.types import ChatRequest, ChatResponse, StreamingChunk, ToolCall, Usage
from tests.conftest import LiveEcho

SECRET = "sk-live-0123456789abcdef"


class Recorder(EchoProvider):
    """Echo that keeps the last request it was given."""

    last: ChatRequest | None = None

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        type(self).last = request
        return await super().chat_completion(request)


class ToolCaller(EchoProvider):
    """Answers with some text and then a tool call, whole or streamed."""

    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(
            content="",
            model="tool-1",
            usage=Usage(3, 4),
            finish_reason="tool_calls",
            tool_calls=[self.call],
        )

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        yield StreamingChunk(content="Let me look.", model="tool-1")
        yield StreamingChunk(
            is_final=True,
            finish_reason="tool_calls",
            usage=Usage(3, 4),
            tool_calls=[self.call],
            model="tool-1",
        )


class DiesMidStream(EchoProvider):
    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        yield StreamingChunk(content="partial")
        raise ProviderUnavailableError("connection reset by upstream")


class Leaky(EchoProvider):
    """Has a secret, and an upstream that quotes it back in its error."""

    def get_config_schema(self) -> dict[str, Any]:
        schema = super().get_config_schema()
        schema["properties"]["api_key"] = {"type": "string", "writeOnly": True}
        return schema

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        raise AuthenticationError(f"Incorrect API key provided: {self.config['api_key']}")


class NoModelList(EchoProvider):
    """A provider whose live model list hangs."""

    async def list_models(self) -> list[str]:
        await asyncio.sleep(30)
        return []


def go_live(row: ProviderConfig) -> None:
    error = runtime.run_in_serving_loop(runtime.apply_config_state, row.name, row.to_spec(), "")
    assert error is None, error


def add(name: str, cls: type[EchoProvider], **fields: Any) -> None:
    runtime.registry.register(cls, name)
    go_live(provider_config_create(name=name, plugin=name, **fields))


@pytest.fixture
def providers(echo_config: ProviderConfig) -> None:
    go_live(echo_config)
    add("recorder", Recorder)
    add("tools", ToolCaller)
    add("dies", DiesMidStream)


@pytest.fixture
def api(chat_key: tuple[Any, str]) -> Client:
    return Client(headers={"Authorization": f"Bearer {chat_key[1]}"})


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json")


@pytest.fixture
def live(transactional_db, chat_key: tuple[Any, str]) -> Iterator[httpx.Client]:
    """Echo served over HTTP (streams need one event loop), with the test providers."""
    provider_config_create(name="echo", plugin="echo", is_default=True)
    for name, cls in (("tools", ToolCaller), ("dies", DiesMidStream)):
        runtime.registry.register(cls, name)
        provider_config_create(name=name, plugin=name)
    server = LiveEcho().start()
    headers = {"Authorization": f"Bearer {chat_key[1]}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        yield client
    server.stop()


def stream(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/v1/chat/completions", json=body | {"stream": True})


def data_events(response: httpx.Response) -> list[str]:
    """Return the data of each SSE event, checking every event is one ``data:`` line."""
    body = response.text
    assert body.endswith("\n\n")
    events = body.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e.removeprefix("data: ") for e in events]


def chat(messages: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "model": "echo/echo-1",
        "messages": messages or [{"role": "user", "content": "hi"}],
    } | extra


@pytest.mark.slow
def test_stream_framing_role_text_finish_usage_done(live: httpx.Client) -> None:
    body = chat([{"role": "user", "content": "one two"}])
    body["stream_options"] = {"include_usage": True}
    response = stream(live, body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-echo-provider"] == "echo"
    assert response.headers["x-echo-model"] == "echo-1"
    *chunks, done = data_events(response)
    assert done == "[DONE]"
    chunks = [json.loads(c) for c in chunks]
    assert {(c["object"], c["model"]) for c in chunks} == {("chat.completion.chunk", "echo/echo-1")}
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Echo:"},
        {"content": " one"},
        {"content": " two"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


@pytest.mark.slow
def test_stream_without_include_usage_has_no_usage_chunk(live: httpx.Client) -> None:
    events = data_events(stream(live, chat()))
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)

    # The streamed tool call: one whole delta with its index, after the text.
    events = data_events(stream(live, chat(model="tools/x")))
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[1] == {"content": "Let me look."}
    assert deltas[2]["tool_calls"][0]["index"] == 0
    assert deltas[2]["tool_calls"][0]["function"]["name"] == "get_weather"

    # A failure after the first chunk: an error event in OpenAI's shape, no [DONE].
    events = data_events(stream(live, chat(model="dies/x")))
    assert json.loads(events[1])["choices"][0]["delta"] == {"content": "partial"}
    error = json.loads(events[-1])["error"]
    assert (error["type"], error["code"]) == ("server_error", "unavailable")
    assert "[DONE]" not in events


def test_tool_calls_whole(providers, api: Client) -> None:
    whole = post(api, "/v1/chat/completions", chat(model="tools/tool-1")).json()
    message = whole["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert whole["choices"][0]["finish_reason"] == "tool_calls"


def test_images_tools_and_developer_messages_reach_the_provider(providers, api: Client) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = chat(
        [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]},
        ],
        model="recorder/echo-1",
        tools=tools,
        tool_choice="auto",
        max_completion_tokens=50,
        stop="END",
    )
    assert post(api, "/v1/chat/completions", body).status_code == 200

    request = Recorder.last
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[1].content[1] == image
    assert (request.tools, request.tool_choice) == (tools, "auto")
    assert (request.max_tokens, request.stop, request.model) == (50, ["END"], "echo-1")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "echo-1", "messages": []}, "messages"),
        (chat(tools=[{"type": "function"}]), "tools.0"),
        (chat(n=9), "n"),  # 1 to 8 (test_n_choices.py)
        (chat(temperature=3), "temperature"),
        (chat(base_url="http://evil"), "base_url"),
    ],
)
def test_bad_bodies_name_the_param(providers, api: Client, body: dict, param: str) -> None:
    response = post(api, "/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_errors_have_openai_shape(providers, api: Client, chat_key) -> None:
    missing = post(api, "/v1/chat/completions", chat(model="echo/nope"))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"

    anonymous = Client().post(
        "/v1/chat/completions", data=json.dumps(chat()), content_type="application/json"
    )
    assert anonymous.status_code == 401
    assert set(anonymous.json()["error"]) == {"message", "type", "param", "code"}
    assert anonymous.json()["error"]["code"] == "invalid_api_key"

    by_api_key = Client(headers={"x-api-key": chat_key[1]})
    assert post(by_api_key, "/v1/chat/completions", chat()).status_code == 200


def test_secret_stripped_when_the_last_provider_fails(db, chat_key, api: Client) -> None:
    runtime.registry.register(Leaky, "leaky")
    go_live(
        provider_config_create(
            name="leaky", plugin="leaky", secrets={"api_key": SECRET}, is_default=True
        )
    )
    response = post(api, "/v1/chat/completions", chat(model="leaky/echo-1"))
    assert response.status_code == 502
    assert SECRET not in response.content.decode()
    assert response.json()["error"]["type"] == "server_error"
    assert response["x-echo-provider"] == "leaky"


def test_models_fall_back_to_declared_models_when_the_live_list_hangs(
    providers, api: Client, monkeypatch
) -> None:
    monkeypatch.setattr(openai_compat, "MODEL_LIST_SECONDS", 0.1)
    add("slowlist", NoModelList, settings={"models": ["m-1", "m-2"]})
    body = api.get("/v1/models").json()
    ids = [m["id"] for m in body["data"]]
    assert body["object"] == "list"
    assert "echo/echo-1" in ids
    assert {"slowlist/m-1", "slowlist/m-2"} <= set(ids)
    assert {m["owned_by"] for m in body["data"] if m["id"].startswith("slowlist/")} == {"slowlist"}

    assert api.get("/v1/models/echo/echo-1").json()["id"] == "echo/echo-1"
    assert api.get("/v1/models/echo/nope").status_code == 404


def test_embeddings_unsupported_and_bad_input(providers, api: Client) -> None:
    response = post(api, "/v1/embeddings", {"model": "echo/echo-1", "input": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_capability"
    response = post(api, "/v1/embeddings", {"model": "echo/echo-1", "input": [[1, 2]]})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "input")
    response = post(api, "/v1/embeddings", {"model": "x", "input": "x", "dimensions": 3})
    assert response.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(
    "text", ["Hi", ' "quoted" \\ and \n lines', "café 🙂", "lone \ud800 surrogate"]
)
def test_a_text_chunk_is_the_same_bytes_as_the_general_way_writes_it(
    include_usage: bool, text: str
) -> None:
    """The stream's text events take a short way (the frame encoded once): the bytes ``_event`` writes."""
    chunks = openai_compat.CompletionChunks(include_usage=include_usage)
    meta = {"provider": "openai", "model": "gpt-4o-mini"}
    first = StreamingChunk(content="first", metadata=meta)
    list(chunks.opening(first))
    opened = list(chunks.chunk(first))  # the role's event, then the text's
    assert len(opened) == 2 and b'"role":"assistant"' in opened[0]
    chunk = StreamingChunk(content=text, model="gpt-4o-mini", metadata=meta)
    (event,) = chunks.chunk(chunk)
    assert event == chunks._event(0, {"content": text})
    assert json.loads(event.removeprefix(b"data: "))["choices"][0]["delta"] == {"content": text}
