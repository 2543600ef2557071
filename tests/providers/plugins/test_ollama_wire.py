"""Ollama's wire format, on JSON recorded from Ollama's API reference (docs/api.md)."""

from __future__ import annotations

import json

import pytest

from providers.errors import BadRequestError, ProtocolError
from providers.plugins import ollama_wire as wire
from providers.types import ChatMessage, ChatRequest, ToolCall

# --- recorded answers (docs/api.md, docs/api/streaming.mdx, docs/api/errors.mdx) ---

CHAT_ANSWER = {
    "model": "llama3.2",
    "created_at": "2023-12-12T14:13:43.416799Z",
    "message": {"role": "assistant", "content": "Hello! How are you today?"},
    "done": True,
    "total_duration": 5191566416,
    "load_duration": 2154458,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 383809000,
    "eval_count": 298,
    "eval_duration": 4799921000,
}

TOOL_CALL_ANSWER = {
    "model": "llama3.2",
    "created_at": "2024-07-22T20:33:28.123648Z",
    "message": {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"format": "celsius", "location": "Paris, FR"},
                }
            }
        ],
    },
    "done_reason": "stop",
    "done": True,
    "total_duration": 885095291,
    "load_duration": 3753500,
    "prompt_eval_count": 122,
    "prompt_eval_duration": 328493000,
    "eval_count": 33,
    "eval_duration": 552222000,
}

STREAM_OBJECT = {
    "model": "llama3.2",
    "created_at": "2023-08-04T08:52:19.385406455-07:00",
    "message": {"role": "assistant", "content": "The", "images": None},
    "done": False,
}

STREAM_FINAL = {
    "model": "llama3.2",
    "created_at": "2023-08-04T19:22:45.499127Z",
    "done": True,
    "total_duration": 4883583458,
    "load_duration": 1334875,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 342546000,
    "eval_count": 282,
    "eval_duration": 4535599000,
}

TAGS = {
    "models": [
        {
            "name": "codellama:13b",
            "modified_at": "2023-11-04T14:56:49.277302595-07:00",
            "size": 7365960935,
            "digest": "9f438cb9cd581fc025612d27f7c1a6669ff83a8bb0ed86c94fcf4c5440555697",
            "details": {"format": "gguf", "family": "llama", "parameter_size": "13B"},
        },
        {
            "name": "llama3:latest",
            "modified_at": "2023-12-07T09:32:18.757212583-08:00",
            "size": 3825819519,
            "digest": "fe938a131f40e6f6d40083c9f0f430a515233eb2edaa6d72eb85c50d64f2300e",
            "details": {"format": "gguf", "family": "llama", "parameter_size": "7B"},
        },
    ]
}

EMBED_ANSWER = {
    "model": "all-minilm",
    "embeddings": [
        [0.010071029, -0.0017594862, 0.05007221, 0.04692972, 0.054916814],
        [-0.0098027075, 0.06042469, 0.025257962, -0.006364387, 0.07272725],
    ],
}

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def ask(*messages: ChatMessage, **fields) -> ChatRequest:
    return ChatRequest(messages=list(messages), **fields)


# --- requests ------------------------------------------------------------------


def test_chat_body_always_says_whether_to_stream() -> None:
    request = ask(ChatMessage(role="user", content="why is the sky blue?"))
    assert wire.chat_body(request, model="llama3", stream=False) == {
        "model": "llama3",
        "messages": [{"role": "user", "content": "why is the sky blue?"}],
        "stream": False,
    }
    assert wire.chat_body(request, model="llama3", stream=True)["stream"] is True


def test_sampling_settings_become_modelfile_options() -> None:
    request = ask(
        ChatMessage(role="user", content="hi"),
        temperature=0.2,
        top_p=0.9,
        max_tokens=100,
        stop=["\n", "user:"],
    )
    body = wire.chat_body(request, model="llama3", stream=False, keep_alive="10m")
    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "num_predict": 100,
        "stop": ["\n", "user:"],
    }
    assert body["keep_alive"] == "10m"


def test_data_url_images_become_bare_base64_images() -> None:
    message = ChatMessage(
        role="user",
        content=[
            {"type": "text", "text": "what is in this image?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ],
    )
    [wired] = wire.chat_messages([message])
    assert wired == {"role": "user", "content": "what is in this image?", "images": [PNG]}


def test_a_linked_image_is_refused_with_the_reason_and_the_field() -> None:
    message = ChatMessage(
        role="user",
        content=[{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
    )
    with pytest.raises(BadRequestError) as caught:
        wire.chat_messages([ChatMessage(role="system", content="be brief"), message])
    assert caught.value.field == "messages.1.content.0.image_url"
    assert "data:image" in caught.value.message


def test_broken_base64_and_unknown_parts_are_refused() -> None:
    broken = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
    with pytest.raises(BadRequestError):
        wire.chat_messages([ChatMessage(role="user", content=[broken])])
    audio = {"type": "input_audio", "input_audio": {"data": "..."}}
    with pytest.raises(BadRequestError) as caught:
        wire.chat_messages([ChatMessage(role="user", content=[audio])])
    assert caught.value.field == "messages.0.content.0.type"


def test_tools_pass_through_and_tool_choice_none_sends_none() -> None:
    user = ChatMessage(role="user", content="What is the weather today in Paris?")
    body = wire.chat_body(ask(user, tools=[WEATHER_TOOL]), model="llama3.1", stream=False)
    assert body["tools"] == [WEATHER_TOOL]
    quiet = ask(user, tools=[WEATHER_TOOL], tool_choice="none")
    assert "tools" not in wire.chat_body(quiet, model="llama3.1", stream=False)
    # Ollama has no tool_choice: a forced one is emulated (test_document_blocks.py checks the answer).
    forced = ask(user, tools=[WEATHER_TOOL], tool_choice="required")
    body = wire.chat_body(forced, model="llama3.1", stream=False)
    assert body["tools"] == [WEATHER_TOOL] and body["messages"][0]["role"] == "system"


def test_a_tool_round_trip_sends_object_arguments_and_the_tool_name() -> None:
    call = ToolCall(id="call_1", name="get_current_weather", arguments='{"location": "Paris"}')
    messages = [
        ChatMessage(role="user", content="weather in Paris?"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content="22 degrees", tool_call_id="call_1"),
    ]
    wired = wire.chat_messages(messages)
    assert wired[1]["tool_calls"] == [
        {"function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}}
    ]
    assert wired[2] == {"role": "tool", "content": "22 degrees", "tool_name": "get_current_weather"}


def test_tool_arguments_that_are_not_a_json_object_are_refused() -> None:
    call = ToolCall(id="call_1", name="f", arguments="not json")
    with pytest.raises(BadRequestError) as caught:
        wire.chat_messages([ChatMessage(role="assistant", tool_calls=[call])])
    assert caught.value.field == "messages.0.tool_calls.0"


def test_embed_body_sends_a_list_of_inputs() -> None:
    assert wire.embed_body(["a", "b"], model="nomic-embed-text", keep_alive="1m") == {
        "model": "nomic-embed-text",
        "input": ["a", "b"],
        "keep_alive": "1m",
    }


# --- responses -------------------------------------------------------------------


def test_a_whole_answer_has_its_text_and_eval_counts_as_usage() -> None:
    response = wire.parse_chat_response(CHAT_ANSWER, model="asked")
    assert response.content == "Hello! How are you today?"
    assert response.model == "llama3.2"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (26, 298)
    assert response.finish_reason == "stop"
    assert response.tool_calls is None
    assert response.metadata["timings"]["total_ms"] == pytest.approx(5191.566, abs=0.001)


def test_a_tool_call_answer_has_json_text_arguments_an_id_and_finish_tool_calls() -> None:
    response = wire.parse_chat_response(TOOL_CALL_ANSWER, model="llama3.2")
    [call] = response.tool_calls
    assert call.name == "get_current_weather"
    assert json.loads(call.arguments) == {"format": "celsius", "location": "Paris, FR"}
    assert call.id.startswith("call_")
    assert response.finish_reason == "tool_calls"


def test_done_reason_length_is_finish_reason_length() -> None:
    answer = {**CHAT_ANSWER, "done_reason": "length"}
    assert wire.parse_chat_response(answer, model="m").finish_reason == "length"
    assert wire.finish_reason("load", tool_calls=False) == "stop"
    assert wire.finish_reason(None, tool_calls=False) == "stop"


def test_stream_objects_become_chunks_and_the_last_carries_usage() -> None:
    chunk = wire.parse_stream_object(STREAM_OBJECT)
    assert (chunk.content, chunk.is_final, chunk.usage) == ("The", False, None)
    final = wire.parse_stream_object(STREAM_FINAL)
    assert final.is_final and final.content == ""
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (26, 282)
    assert final.finish_reason == "stop"


def test_the_final_stream_object_may_still_carry_text() -> None:
    # docs/api/streaming.mdx: the last object has text, done and done_reason together.
    last = {
        "model": "gemma3",
        "message": {"role": "assistant", "content": "!"},
        "done": True,
        "done_reason": "stop",
    }
    final = wire.parse_stream_object(last)
    assert final.is_final and final.content == "!"
    assert final.usage.total_tokens == 0  # Ollama left the counts out


def test_an_error_object_is_recognised() -> None:
    assert wire.error_message({"error": "an error was encountered while running the model"}) == (
        "an error was encountered while running the model"
    )
    assert wire.error_message(STREAM_OBJECT) is None


@pytest.mark.parametrize(
    "data",
    [
        [],
        "text",
        {"message": "not an object", "done": True},
        {"message": {"content": 12}, "done": True},
        {"message": {"content": "x"}, "done": "yes"},
        {"message": {"content": "x", "tool_calls": "f"}, "done": True},
        {"message": {"content": "x", "tool_calls": [{"function": {}}]}, "done": True},
        {"message": {"content": "x"}, "done": True, "eval_count": "many"},
    ],
)
def test_malformed_objects_are_protocol_errors(data) -> None:
    with pytest.raises(ProtocolError):
        wire.parse_stream_object(data)


def test_an_unfinished_whole_answer_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        wire.parse_chat_response({**CHAT_ANSWER, "done": False}, model="m")


def test_model_names_come_from_tags() -> None:
    assert wire.model_names(TAGS) == ["codellama:13b", "llama3:latest"]
    with pytest.raises(ProtocolError):
        wire.model_names({"error": "nope"})


def test_embeddings_come_back_in_input_order() -> None:
    vectors = wire.parse_embeddings(EMBED_ANSWER, count=2)
    assert vectors[0][0] == pytest.approx(0.010071029)
    assert len(vectors[1]) == 5
    with pytest.raises(ProtocolError):
        wire.parse_embeddings(EMBED_ANSWER, count=3)
    with pytest.raises(ProtocolError):
        wire.parse_embeddings({"embeddings": [["x"]]}, count=1)


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("llama3", "llama3"),
        ("llama3:8b", "llama3"),
        ("llama3.1:70b-instruct-q4_0", "llama3.1"),
        ("library/mistral:latest", "mistral"),
        ("registry.example.com:5000/team/codellama:13b", "codellama"),
    ],
)
def test_base_model_name_drops_registry_namespace_and_tag(name: str, base: str) -> None:
    assert wire.base_model_name(name) == base
