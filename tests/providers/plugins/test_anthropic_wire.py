"""Anthropic's wire format, both ways, on recorded JSON: no network."""

from __future__ import annotations

import json

import pytest

from providers.errors import BadRequestError, ProtocolError
from providers.http_provider import UpstreamErrorEvent
from providers.plugins.anthropic_wire import (
    StreamFold,
    build_request,
    finish_reason,
    parse_model_list,
    parse_response,
    translate_messages,
    translate_tool_choice,
)
from providers.types import ChatMessage, ChatRequest, ToolCall

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

# A text answer as the Messages API returns it (shape from the API reference).
RECORDED_TEXT_MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 2095, "output_tokens": 503},
}

RECORDED_TOOL_MESSAGE = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [
        {"type": "text", "text": "I'll check the weather in Paris."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"city": "Paris"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 472,
        "output_tokens": 89,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 20,
    },
}

# A text stream as the documentation shows it, ping included.
RECORDED_TEXT_STREAM = """\
event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-3-5-sonnet-20241022", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}
"""

# A tool_use stream: the input arrives as partial JSON, in pieces.
RECORDED_TOOL_STREAM = """\
event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let's check"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" the weather."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": \\"San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}
"""


def events_of(transcript: str) -> list[dict]:
    """Return the data of each event in an SSE TRANSCRIPT."""
    events = []
    for block in transcript.strip().split("\n\n"):
        data = [line[len("data: ") :] for line in block.splitlines() if line.startswith("data: ")]
        events.append(json.loads("\n".join(data)))
    return events


def fold_all(transcript: str) -> list:
    fold = StreamFold(provider="anthropic")
    chunks = [c for c in (fold.feed(e) for e in events_of(transcript)) if c is not None]
    fold.finish()
    return chunks


def body_for(*messages: ChatMessage, **fields) -> dict:
    return build_request(
        ChatRequest(messages=list(messages), **fields),
        model="claude-3-5-haiku-latest",
        default_max_tokens=1024,
    )


# --- requests ---------------------------------------------------------------


def test_system_messages_are_carried_apart_and_joined() -> None:
    body = body_for(
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="system", content=[{"type": "text", "text": "Answer in French."}]),
    )
    assert body["system"] == "You are terse.\n\nAnswer in French."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert all(m["role"] != "system" for m in body["messages"])


def test_no_system_prompt_sends_no_system_field() -> None:
    assert "system" not in body_for(ChatMessage(role="user", content="Hi"))


def test_max_tokens_comes_from_settings_when_the_request_has_none() -> None:
    assert body_for(ChatMessage(role="user", content="Hi"))["max_tokens"] == 1024


def test_max_tokens_of_the_request_wins() -> None:
    assert body_for(ChatMessage(role="user", content="Hi"), max_tokens=50)["max_tokens"] == 50


def test_sampling_stop_user_and_stream_fields() -> None:
    request = ChatRequest(
        messages=[ChatMessage(role="user", content="Hi")],
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        user="user-42",
    )
    body = build_request(request, model="m", default_max_tokens=10, stream=True)
    assert body["model"] == "m"
    assert body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "user-42"}
    assert body["stream"] is True
    assert "stream" not in build_request(request, model="m", default_max_tokens=10)


def test_consecutive_messages_of_one_role_are_merged() -> None:
    body = body_for(
        ChatMessage(role="user", content="one"),
        ChatMessage(role="user", content="two"),
        ChatMessage(role="assistant", content="three"),
        ChatMessage(role="assistant", content=""),  # empty: dropped, not sent
        ChatMessage(role="user", content="four"),
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "four"},
    ]


def test_tool_calls_become_tool_use_and_tool_messages_tool_results() -> None:
    _, messages = translate_messages(
        [
            ChatMessage(role="user", content="Weather in Paris and Rome?"),
            ChatMessage(
                role="assistant",
                content="Checking both.",
                tool_calls=[
                    ToolCall(id="toolu_1", name="get_weather", arguments='{"city": "Paris"}'),
                    ToolCall(id="toolu_2", name="get_weather", arguments='{"city": "Rome"}'),
                ],
            ),
            ChatMessage(role="tool", content="Sunny", tool_call_id="toolu_1"),
            ChatMessage(role="tool", content="Rainy", tool_call_id="toolu_2"),
            ChatMessage(role="user", content="Which is nicer?"),
        ]
    )
    assert messages[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking both."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ],
    }
    # Both results and the next question share one user turn, results first.
    assert messages[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "Rainy"},
            {"type": "text", "text": "Which is nicer?"},
        ],
    }
    assert len(messages) == 3


def test_an_assistant_turn_with_only_tool_calls_has_no_empty_text_block() -> None:
    _, messages = translate_messages(
        [
            ChatMessage(role="user", content="Weather?"),
            ChatMessage(role="assistant", tool_calls=[ToolCall(id="t", name="f", arguments="")]),
        ]
    )
    assert messages[1]["content"] == [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_tool_arguments_that_are_not_a_json_object_are_a_bad_request(arguments: str) -> None:
    message = ChatMessage(
        role="assistant", tool_calls=[ToolCall(id="t", name="f", arguments=arguments)]
    )
    with pytest.raises(BadRequestError) as caught:
        translate_messages([ChatMessage(role="user", content="x"), message])
    assert caught.value.field == "messages"


def test_a_tool_message_without_its_call_id_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="tool_call_id"):
        translate_messages([ChatMessage(role="tool", content="42")])


def test_base64_and_url_images_become_image_blocks() -> None:
    body = body_for(
        ChatMessage(
            role="user",
            content=[
                {"type": "text", "text": "Compare these."},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        )
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url",
    ["data:image/bmp;base64,AAAA", "data:image/png,not-base64", "ftp://example.com/cat.png", ""],
)
def test_images_anthropic_cannot_take_are_a_bad_request(url: str) -> None:
    with pytest.raises(BadRequestError):
        body_for(
            ChatMessage(role="user", content=[{"type": "image_url", "image_url": {"url": url}}])
        )


def test_an_unknown_content_part_is_a_bad_request_naming_it() -> None:
    with pytest.raises(BadRequestError, match="input_audio"):
        body_for(ChatMessage(role="user", content=[{"type": "input_audio", "input_audio": {}}]))


def test_function_tools_become_anthropic_tools() -> None:
    body = body_for(
        ChatMessage(role="user", content="Hi"), tools=[WEATHER_TOOL], tool_choice="auto"
    )
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert body["tool_choice"] == {"type": "auto"}


def test_a_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in body_for(ChatMessage(role="user", content="Hi"), tool_choice="auto")


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
        ({"type": "tool", "name": "x"}, {"type": "tool", "name": "x"}),
    ],
)
def test_tool_choice_translation(choice, expected) -> None:
    assert translate_tool_choice(choice) == expected


def test_a_tool_that_is_not_a_function_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError) as caught:
        body_for(ChatMessage(role="user", content="Hi"), tools=[{"type": "retrieval"}])
    assert caught.value.field == "tools"


# --- responses --------------------------------------------------------------


def test_parse_a_text_message() -> None:
    response = parse_response(RECORDED_TEXT_MESSAGE, provider="anthropic")
    assert response.content == "Hi! My name is Claude."
    assert response.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert response.model == "claude-3-5-haiku-20241022"
    assert response.provider == "anthropic"
    assert response.finish_reason == "stop"
    assert response.tool_calls is None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (2095, 503)


def test_parse_a_tool_use_message() -> None:
    response = parse_response(RECORDED_TOOL_MESSAGE)
    assert response.content == "I'll check the weather in Paris."
    assert response.finish_reason == "tool_calls"
    [call] = response.tool_calls
    assert (call.id, call.name) == ("toolu_01A09q90qw90lq917835lq9", "get_weather")
    assert json.loads(call.arguments) == {"city": "Paris"}
    # Tokens read from and written to the prompt cache are prompt tokens too.
    assert response.usage.prompt_tokens == 472 + 10 + 20


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
        ("something_new", "stop"),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop_reason, expected) -> None:
    assert finish_reason(stop_reason) == expected
    body = {**RECORDED_TEXT_MESSAGE, "stop_reason": stop_reason}
    assert parse_response(body).finish_reason == expected


@pytest.mark.parametrize(
    "body",
    [None, [], {"type": "message"}, {"type": "error", "content": []}, {"content": ["text"]}],
)
def test_a_body_that_is_not_a_message_is_a_protocol_error(body) -> None:
    with pytest.raises(ProtocolError):
        parse_response(body)


def test_model_list_pages() -> None:
    page = {
        "data": [
            {
                "type": "model",
                "id": "claude-a",
                "display_name": "A",
                "created_at": "2025-01-01T00:00:00Z",
            },
            {
                "type": "model",
                "id": "claude-b",
                "display_name": "B",
                "created_at": "2025-01-01T00:00:00Z",
            },
        ],
        "has_more": True,
        "first_id": "claude-a",
        "last_id": "claude-b",
    }
    assert parse_model_list(page) == (["claude-a", "claude-b"], "claude-b")
    assert parse_model_list({**page, "has_more": False}) == (["claude-a", "claude-b"], None)
    with pytest.raises(ProtocolError):
        parse_model_list({"models": []})


# --- streams ----------------------------------------------------------------


def test_fold_a_text_stream() -> None:
    chunks = fold_all(RECORDED_TEXT_STREAM)
    assert [c.content for c in chunks[:-1]] == ["Hello", "!"]
    assert not any(c.is_final for c in chunks[:-1])
    final = chunks[-1]
    assert final.is_final and final.content == ""
    assert final.finish_reason == "stop"
    assert final.model == "claude-3-5-sonnet-20241022"
    # Input tokens from message_start, output tokens from message_delta.
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (25, 15)
    assert final.metadata["id"] == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"


def test_fold_a_tool_use_stream() -> None:
    chunks = fold_all(RECORDED_TOOL_STREAM)
    assert "".join(c.content for c in chunks) == "Okay, let's check the weather."
    final = chunks[-1]
    assert final.finish_reason == "tool_calls"
    [call] = final.tool_calls
    assert (call.id, call.name) == ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert json.loads(call.arguments) == {"city": "San Francisco, CA"}
    # A streamed call reads exactly like the same call in a whole answer.
    assert call.arguments == json.dumps({"city": "San Francisco, CA"})
    assert final.usage.total_tokens == 472 + 89


def test_a_stream_yields_each_delta_as_it_is_fed() -> None:
    fold = StreamFold()
    events = events_of(RECORDED_TEXT_STREAM)
    assert [fold.feed(e) for e in events[:3]] == [None, None, None]  # start, block start, ping
    assert fold.feed(events[3]).content == "Hello"


def test_unknown_events_are_skipped() -> None:
    events = events_of(RECORDED_TEXT_STREAM)
    events.insert(2, {"type": "some_future_event", "detail": 1})
    events.insert(
        4,
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hm"},
        },
    )
    fold = StreamFold()
    chunks = [c for c in map(fold.feed, events) if c is not None]
    fold.finish()
    assert "".join(c.content for c in chunks) == "Hello!"


def test_an_error_event_raises_with_the_status_of_its_type() -> None:
    fold = StreamFold()
    events = events_of(RECORDED_TEXT_STREAM)[:4]
    for event in events:
        fold.feed(event)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamErrorEvent) as caught:
        fold.feed(error)
    assert caught.value.status == 529
    assert caught.value.body == error


def test_a_stream_that_ends_before_message_stop_is_a_protocol_error() -> None:
    fold = StreamFold()
    for event in events_of(RECORDED_TEXT_STREAM)[:-1]:
        fold.feed(event)
    with pytest.raises(ProtocolError, match="message_stop"):
        fold.finish()


def test_a_delta_before_message_start_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        StreamFold().feed(events_of(RECORDED_TEXT_STREAM)[3])


def test_tool_input_that_is_not_json_is_a_protocol_error() -> None:
    events = events_of(RECORDED_TOOL_STREAM)
    events[9]["delta"]["partial_json"] = "{broken"
    fold = StreamFold()
    with pytest.raises(ProtocolError, match="get_weather"):
        for event in events:
            fold.feed(event)
