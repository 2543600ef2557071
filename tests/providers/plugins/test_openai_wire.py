"""The OpenAI wire format on recorded JSON: request bodies, answers, stream events. No network."""

from __future__ import annotations

import json

import pytest

from providers.http_provider import UpstreamErrorEvent
from providers.plugins.openai_wire import (
    ToolCallAssembler,
    WireFormatError,
    build_chat_body,
    build_embeddings_body,
    parse_chat_response,
    parse_embeddings,
    parse_model_list,
    parse_stream_event,
)
from providers.types import ChatMessage, ChatRequest, ToolCall, Usage

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

# Recorded answers, in the shapes of OpenAI's API reference.
TEXT_COMPLETION = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I assist you today?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_eb9dce56a8",
}

TOOL_COMPLETION = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1699896916,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{\n"city": "Paris"\n}',
                        },
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99},
}

HEAD = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
}


def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return json.dumps({**HEAD, "choices": [choice], **extra})


# Two parallel tool calls, streamed: each opens with id and name, then its
# arguments arrive in pieces, and the pieces of the two calls interleave.
PARALLEL_TOOL_STREAM = [
    chunk({"role": "assistant", "content": None}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_paris",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_tokyo",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Tokyo"}'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
    chunk({}, "tool_calls"),
    json.dumps({**HEAD, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12}}),
    "[DONE]",
]


def conversation(*messages: ChatMessage, **fields) -> ChatRequest:
    return ChatRequest(messages=list(messages), **fields)


# --- request bodies -----------------------------------------------------------


def test_a_plain_request_sends_only_the_fields_it_sets() -> None:
    request = conversation(
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hello"),
        temperature=0.2,
        stop=["\n\n"],
    )
    assert build_chat_body(request, model="gpt-4o-mini", stream=False) == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        "temperature": 0.2,
        "stop": ["\n\n"],
    }


def test_a_streamed_request_asks_for_usage() -> None:
    body = build_chat_body(
        conversation(ChatMessage(role="user", content="Hi")), model="gpt-4o", stream=True
    )
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_the_length_limit_goes_in_the_field_the_model_takes() -> None:
    request = conversation(ChatMessage(role="user", content="Hi"), max_tokens=50)
    assert build_chat_body(request, model="gpt-4o", stream=False)["max_tokens"] == 50
    reasoning = build_chat_body(
        request, model="o4-mini", stream=False, max_tokens_field="max_completion_tokens"
    )
    assert reasoning["max_completion_tokens"] == 50
    assert "max_tokens" not in reasoning


def test_tools_and_a_tool_round_trip_are_sent_in_openai_shape() -> None:
    request = conversation(
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')],
        ),
        ChatMessage(role="tool", content='{"temp_c": 18}', tool_call_id="call_1"),
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )
    body = build_chat_body(request, model="gpt-4o-mini", stream=False)
    assert body["tools"] == [WEATHER_TOOL]
    assert body["tool_choice"] == "auto"
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert body["messages"][2] == {
        "role": "tool",
        "content": '{"temp_c": 18}',
        "tool_call_id": "call_1",
    }


def test_image_parts_are_sent_as_parts() -> None:
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": "data:image/png;base64,iVBORw0KGgo="},
    ]
    body = build_chat_body(
        conversation(ChatMessage(role="user", content=parts, name="ann")),
        model="gpt-4o",
        stream=False,
    )
    message = body["messages"][0]
    assert message["name"] == "ann"
    assert message["content"][:2] == parts[:2]
    # The bare-string shorthand is expanded to the object OpenAI requires.
    assert message["content"][2] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    assert parts[2]["image_url"] == "data:image/png;base64,iVBORw0KGgo=", "input left untouched"


def test_embeddings_body() -> None:
    assert build_embeddings_body(["a", "b"], model="text-embedding-3-small") == {
        "model": "text-embedding-3-small",
        "input": ["a", "b"],
        "encoding_format": "float",
    }


# --- whole answers ------------------------------------------------------------


def test_a_text_answer_is_read_with_its_usage() -> None:
    response = parse_chat_response(TEXT_COMPLETION, model="gpt-4o", provider="openai")
    assert response.content == "Hello! How can I assist you today?"
    assert response.model == "gpt-4o-2024-08-06"
    assert response.provider == "openai"
    assert response.usage == Usage(prompt_tokens=19, completion_tokens=10)
    assert response.finish_reason == "stop"
    assert response.tool_calls is None
    assert response.id == "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert response.created == 1741569952
    assert response.metadata["system_fingerprint"] == "fp_eb9dce56a8"


def test_a_tool_call_answer_is_read() -> None:
    response = parse_chat_response(TOOL_COMPLETION, model="gpt-4o-mini")
    assert response.content == ""
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == [
        ToolCall(id="call_abc123", name="get_weather", arguments='{\n"city": "Paris"\n}')
    ]


def test_a_refusal_is_the_answer_text() -> None:
    body = json.loads(json.dumps(TEXT_COMPLETION))
    body["choices"][0]["message"].update(content=None, refusal="I can't help with that.")
    assert parse_chat_response(body, model="gpt-4o").content == "I can't help with that."


def test_an_answer_without_model_or_usage_still_reads() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}
    response = parse_chat_response(body, model="local-llama")
    assert response.model == "local-llama"
    assert response.usage == Usage()
    assert response.finish_reason == "stop"


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"choices": []},
        {"choices": [{"index": 0}]},
        {"choices": [{"message": {"content": 42}}]},
        {"choices": [{"message": {"tool_calls": [{"id": "x", "function": {}}]}}]},
        {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}},
    ],
)
def test_an_answer_off_the_wire_format_is_refused(body) -> None:
    with pytest.raises(WireFormatError):
        parse_chat_response(body, model="gpt-4o")


# --- stream events ------------------------------------------------------------


def test_stream_events_are_read_one_by_one() -> None:
    role = parse_stream_event(chunk({"role": "assistant", "content": ""}))
    assert role.content == "" and role.finish_reason is None and not role.done
    text = parse_stream_event(chunk({"content": " world"}))
    assert text.content == " world"
    assert text.model == "gpt-4o-mini"
    finish = parse_stream_event(chunk({}, "stop", usage=None))
    assert finish.finish_reason == "stop" and finish.usage is None
    usage = parse_stream_event(
        json.dumps(
            {
                **HEAD,
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            }
        )
    )
    assert usage.usage == Usage(prompt_tokens=5, completion_tokens=7)
    assert usage.content == "" and usage.finish_reason is None
    assert parse_stream_event("[DONE]").done


def test_a_malformed_stream_event_is_refused() -> None:
    with pytest.raises(WireFormatError, match="malformed JSON"):
        parse_stream_event("{not json")
    with pytest.raises(WireFormatError):
        parse_stream_event('"a string"')


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ({"message": "The server had an error", "type": "server_error"}, 500),
        ({"message": "Slow down", "type": "requests", "code": "rate_limit_exceeded"}, 429),
        ({"message": "Bad tools", "type": "invalid_request_error"}, 400),
    ],
)
def test_an_error_sent_inside_a_stream_raises_with_the_status_of_its_kind(error, status) -> None:
    with pytest.raises(UpstreamErrorEvent) as caught:
        parse_stream_event(json.dumps({"error": error}))
    assert caught.value.status == status
    assert caught.value.body == {"error": error}


def test_streamed_tool_call_deltas_are_joined_by_index() -> None:
    assembler = ToolCallAssembler()
    finish_reason, usage, done = None, None, False
    for data in PARALLEL_TOOL_STREAM:
        event = parse_stream_event(data)
        done = done or event.done
        assembler.add(event.tool_call_deltas)
        finish_reason = event.finish_reason or finish_reason
        usage = event.usage or usage
    assert done and finish_reason == "tool_calls"
    assert usage == Usage(prompt_tokens=9, completion_tokens=12)
    assert assembler.calls() == [
        ToolCall(id="call_paris", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCall(id="call_tokyo", name="get_weather", arguments='{"city": "Tokyo"}'),
    ]


def test_a_name_repeated_in_every_delta_is_not_doubled() -> None:
    assembler = ToolCallAssembler()
    assembler.add([{"index": 0, "id": "c", "function": {"name": "lookup", "arguments": "{"}}])
    assembler.add([{"index": 0, "function": {"name": "lookup", "arguments": "}"}}])
    assert assembler.calls() == [ToolCall(id="c", name="lookup", arguments="{}")]


def test_a_streamed_tool_call_without_a_name_is_refused() -> None:
    assembler = ToolCallAssembler()
    assembler.add([{"index": 0, "function": {"arguments": "{}"}}])
    with pytest.raises(WireFormatError):
        assembler.calls()
    with pytest.raises(WireFormatError):
        ToolCallAssembler().add([{"index": "first"}])


# --- models and embeddings ----------------------------------------------------


def test_model_list() -> None:
    body = {
        "object": "list",
        "data": [
            {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
            {
                "id": "text-embedding-3-small",
                "object": "model",
                "created": 1705948997,
                "owned_by": "system",
            },
        ],
    }
    assert parse_model_list(body) == ["gpt-4o", "text-embedding-3-small"]
    with pytest.raises(WireFormatError):
        parse_model_list({"object": "list"})


def test_embeddings_come_back_in_input_order() -> None:
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert parse_embeddings(body, count=2) == [[0.1, 0.2], [0.3, 0.4]]
    with pytest.raises(WireFormatError, match="2 embeddings for 3 inputs"):
        parse_embeddings(body, count=3)
