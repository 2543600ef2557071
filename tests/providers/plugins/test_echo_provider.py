"""The echo provider honours ``max_tokens``, ``stop`` and tools, deterministically, so a demo shows them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.plugins.echo_provider import EchoProvider
from providers.types import ChatMessage, ChatRequest, ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "when": {"type": ["string", "null"]},
            },
            "required": ["city", "days", "metric", "when"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture
async def echo() -> Any:
    provider = EchoProvider({"prefix": "Echo: "}, name="echo")
    await provider.initialize()
    return provider


def ask(text: str, **options: Any) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **options)


async def both(provider: EchoProvider, request: ChatRequest) -> tuple[Any, str, Any]:
    """Return the whole answer, the streamed text and the stream's final chunk."""
    whole = await provider.chat_completion(request)
    chunks = [chunk async for chunk in provider.chat_completion_stream(request)]
    return whole, "".join(c.content for c in chunks), chunks[-1]


async def test_max_tokens_cuts_the_answer_to_that_many_words(echo) -> None:
    whole, streamed, final = await both(echo, ask("one two three four", max_tokens=3))
    assert whole.content == streamed == "Echo: one two"
    assert whole.finish_reason == final.finish_reason == "length"
    assert whole.usage.completion_tokens == 3
    whole, _, _ = await both(echo, ask("one two", max_tokens=3))
    assert (whole.content, whole.finish_reason) == ("Echo: one two", "stop")


async def test_stop_ends_before_the_first_stop_sequence(echo) -> None:
    whole, streamed, final = await both(echo, ask("count 1, 2, 3. done", stop=[".", "2"]))
    assert whole.content == streamed == "Echo: count 1, "
    assert whole.finish_reason == final.finish_reason == "stop"


async def test_a_tool_named_in_the_question_is_called_with_filled_arguments(echo) -> None:
    request = ask("please get_weather for Oslo", tools=[WEATHER, TIME])
    whole, streamed, final = await both(echo, request)
    assert whole.content == streamed == ""
    assert whole.finish_reason == final.finish_reason == "tool_calls"
    assert [c.name for c in whole.tool_calls] == ["get_weather"]
    assert json.loads(whole.tool_calls[0].arguments) == {
        "city": "please get_weather for Oslo",
        "days": 0,
        "metric": False,
        "when": "please get_weather for Oslo",
    }
    assert final.tool_calls == whole.tool_calls  # the same ids: deterministic
    assert whole.tool_calls[0].id.startswith("call_")


async def test_tools_named_together_are_called_in_parallel(echo) -> None:
    whole = await echo.chat_completion(ask("get_time and get_weather", tools=[WEATHER, TIME]))
    assert [c.name for c in whole.tool_calls] == ["get_weather", "get_time"]
    assert len({c.id for c in whole.tool_calls}) == 2


@pytest.mark.parametrize(
    ("choice", "called"),
    [
        ("none", None),
        ("auto", None),
        (None, None),
        ("required", ["get_weather"]),
        ({"type": "function", "function": {"name": "get_time"}}, ["get_time"]),
        ({"type": "function", "function": {"name": "nope"}}, None),
    ],
)
async def test_tool_choice_decides(echo, choice: Any, called: list[str] | None) -> None:
    whole = await echo.chat_completion(ask("hello", tools=[WEATHER, TIME], tool_choice=choice))
    names = [c.name for c in whole.tool_calls] if whole.tool_calls else None
    assert names == called
    assert whole.finish_reason == ("tool_calls" if called else "stop")


async def test_a_tool_result_is_echoed_back(echo) -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments="{}")
    request = ChatRequest(
        messages=[
            ChatMessage(role="user", content="get_weather please"),
            ChatMessage(role="assistant", content="", tool_calls=[call]),
            ChatMessage(role="tool", content="sunny, 21 C", tool_call_id="call_1"),
        ],
        tools=[WEATHER],
    )
    whole = await echo.chat_completion(request)
    assert (whole.content, whole.finish_reason, whole.tool_calls) == (
        "Echo: sunny, 21 C",
        "stop",
        None,
    )


async def test_malformed_tools_answer_in_text(echo) -> None:
    tools = [{"type": "function"}, {"function": {"name": 5}}, "x"]
    whole = await echo.chat_completion(ask("x", tools=tools, tool_choice="required"))
    assert (whole.content, whole.tool_calls) == ("Echo: x", None)


# --- through the compatible APIs, as an SDK sees it ------------------------------------


@pytest.fixture
def api(chat_key: tuple[Any, str], echo_config: Any) -> Any:
    from django.test import Client

    from providers.runtime import process as runtime

    error = runtime.run_in_serving_loop(
        runtime.apply_config_state, echo_config.name, echo_config.to_spec(), ""
    )
    assert error is None, error
    return Client(headers={"Authorization": f"Bearer {chat_key[1]}"})


def post(api: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.content
    return json.loads(response.content)


def test_openai_clients_get_tool_calls_stop_and_length(api) -> None:
    asked = [{"role": "user", "content": "get_weather in Oslo"}]
    body = post(
        api, "/v1/chat/completions", {"model": "echo/echo-1", "messages": asked, "tools": [WEATHER]}
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    said = [{"role": "user", "content": "a b c d e"}]
    body = post(
        api, "/v1/chat/completions", {"model": "echo/echo-1", "messages": said, "max_tokens": 2}
    )
    assert (body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"]) == (
        "Echo: a",
        "length",
    )
    body = post(
        api, "/v1/chat/completions", {"model": "echo/echo-1", "messages": said, "stop": ["d"]}
    )
    assert body["choices"][0]["message"]["content"] == "Echo: a b c "


def test_anthropic_clients_get_tool_use_and_max_tokens(api) -> None:
    tool = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
    body = post(
        api,
        "/v1/messages",
        {
            "model": "echo/echo-1",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "what is it"}],
            "tools": [tool],
            "tool_choice": {"type": "any"},
        },
    )
    assert body["stop_reason"] == "tool_use"
    assert [block["type"] for block in body["content"]] == ["tool_use"]
    assert body["content"][0]["name"] == "get_time"
    body = post(
        api,
        "/v1/messages",
        {
            "model": "echo/echo-1",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "a b c"}],
        },
    )
    assert body["stop_reason"] == "max_tokens"
    assert body["content"][0]["text"] == "Echo: a"
