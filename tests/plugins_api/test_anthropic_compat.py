"""``POST /v1/messages``: Anthropic's request translated, its answer and event sequence exact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.test import Client

from plugins_api.compat.anthropic_api import parse_messages_call
from plugins_api.edge.chat_requests import RequestFieldError
from providers.config.services import provider_config_create
from providers.runtime import process as runtime
from providers.types import ChatMessage, ToolCall
from tests.conftest import LiveEcho
from tests.plugins_api.test_openai_compat import DiesMidStream, ToolCaller, add, go_live

IMAGE = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def test_a_messages_body_becomes_the_common_conversation() -> None:
    call = parse_messages_call(
        {
            "model": "openai/gpt-4o-mini",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "tools": [{"name": "f", "description": "F.", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image", "source": IMAGE},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Calling."},
                        {"type": "tool_use", "id": "tu_1", "name": "f", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "tu_1", "content": "42"},
                        {"type": "text", "text": "and now?"},
                    ],
                },
            ],
        }
    )
    request = call.request
    assert request.messages == [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(
            role="user",
            content=[
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        ),
        ChatMessage(
            role="assistant",
            content="Calling.",
            tool_calls=[ToolCall(id="tu_1", name="f", arguments='{"a": 1}')],
        ),
        ChatMessage(role="tool", content="42", tool_call_id="tu_1"),
        ChatMessage(role="user", content="and now?"),
    ]
    assert request.tools == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "description": "F."},
        }
    ]
    assert (request.tool_choice, request.stop, request.max_tokens) == ("required", ["END"], 64)
    assert (request.model, request.temperature, call.stream) == ("openai/gpt-4o-mini", 0.5, False)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "search_result"}]}]},
            "messages.0.content.0.type",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web"}]}, "tools.0.input_schema"),
        ({"temperature": 1.5}, "temperature"),
    ],
)
def test_bad_bodies_name_the_field(change: dict[str, Any], field: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(RequestFieldError) as raised:
        parse_messages_call(body | change)
    assert raised.value.field == field


@pytest.fixture
def api(echo_config, chat_key: tuple[Any, str]) -> Client:
    go_live(echo_config)
    add("tools", ToolCaller)
    return Client(headers={"x-api-key": chat_key[1]})


def post(client: Client, body: dict[str, Any]) -> Any:
    return client.post("/v1/messages", data=json.dumps(body), content_type="application/json")


def ask(model: str = "echo/echo-1", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    } | extra


def test_whole_answers_in_the_message_shape(api: Client) -> None:
    body = post(api, ask()).json()
    assert body["type"] == "message"
    assert body["content"] == [{"type": "text", "text": "Echo: hi"}]
    assert (body["model"], body["stop_reason"], body["stop_sequence"]) == (
        "echo/echo-1",
        "end_turn",
        None,
    )
    assert body["usage"] == {"input_tokens": 1, "output_tokens": 2}

    tools = post(api, ask("tools/x")).json()
    assert tools["stop_reason"] == "tool_use"
    assert tools["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]


def test_errors_in_anthropic_shape(api: Client) -> None:
    missing = post(api, ask(max_tokens=None))
    assert missing.status_code == 400
    assert missing.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required."},
    }
    unknown = post(api, ask("nosuch/model"))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"

    anonymous = post(Client(), ask())
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    wrong = post(Client(headers={"x-api-key": "echo-wrong"}), ask())
    assert wrong.json()["error"]["type"] == "authentication_error"


@pytest.fixture
def live(transactional_db, chat_key: tuple[Any, str]) -> Iterator[httpx.Client]:
    provider_config_create(name="echo", plugin="echo", is_default=True)
    for name, cls in (("tools", ToolCaller), ("dies", DiesMidStream)):
        runtime.registry.register(cls, name)
        provider_config_create(name=name, plugin=name)
    server = LiveEcho().start()
    with httpx.Client(base_url=server.url, headers={"x-api-key": chat_key[1]}) as client:
        yield client
    server.stop()


def events_of(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """Return (event, data) pairs, checking that each data repeats its event's type."""
    pairs = []
    for block in response.text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        pairs.append((name, data))
    return pairs


@pytest.mark.slow
def test_stream_event_sequence_text_then_tool_use(live: httpx.Client) -> None:
    response = live.post("/v1/messages", json=ask("tools/x", stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["model"] == "tools/tool-1"
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "Let me look."}
    assert events[5][1]["index"] == 1
    assert events[5][1]["content_block"]["type"] == "tool_use"
    assert json.loads(events[6][1]["delta"]["partial_json"]) == {"city": "Paris"}
    assert events[8][1]["delta"]["stop_reason"] == "tool_use"
    assert events[8][1]["usage"] == {"input_tokens": 3, "output_tokens": 4}


@pytest.mark.slow
def test_stream_failure_after_start_is_an_error_event(live: httpx.Client) -> None:
    events = events_of(live.post("/v1/messages", json=ask("dies/x", stream=True)))
    assert [name for name, _ in events][-1] == "error"
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    assert "message_stop" not in [name for name, _ in events]


@pytest.mark.parametrize(
    "text", ["Hi", ' "quoted" \\ and \n lines', "café 🙂", "lone \ud800 surrogate"]
)
def test_a_text_delta_is_the_same_bytes_as_the_general_way_writes_it(text: str) -> None:
    """The stream's text deltas take a short way (the event's head written once): the same bytes."""
    from plugins_api.compat.anthropic_api import MessageEvents
    from plugins_api.edge.sse import sse_event
    from providers.types import StreamingChunk

    events = MessageEvents()
    meta = {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 3}
    first = StreamingChunk(content="first", metadata=meta)
    list(events.opening(first))
    opened = list(events.chunk(first))  # the block's start, the ping, the first delta
    assert [e.split(b"\n")[0] for e in opened] == [
        b"event: content_block_start",
        b"event: ping",
        b"event: content_block_delta",
    ]
    for index in (0, 7):
        events.index = index
        chunk = StreamingChunk(content=text, metadata=meta)
        (event,) = events.chunk(chunk)
        delta = {"index": index, "delta": {"type": "text_delta", "text": text}}
        assert event == sse_event("content_block_delta", delta)
        assert list(events._events(chunk)) == [event]
