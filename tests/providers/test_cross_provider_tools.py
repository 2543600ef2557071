"""Tool calls cross providers: OpenAI shape -> Anthropic -> OpenAI shape, over real HTTP."""

from __future__ import annotations

import json

import pytest

from providers.plugins.anthropic_provider import AnthropicProvider
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime.manager import ModelManager
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Look up the {name.split('_')[1]}.",
            "parameters": {"type": "object", "properties": {key: {"type": "string"}}},
        },
    }
    for name, key in (("get_weather", "city"), ("get_time", "tz"))
]


@pytest.fixture
async def manager():
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        registry = ProviderRegistry()
        registry.register(OpenAIProvider, "openai", source="builtin")
        registry.register(AnthropicProvider, "anthropic", source="builtin")
        key = "sk-tools-test-0000000000"
        await registry.apply(
            ProviderSpec("openai", "openai", {"base_url": openai.base_url, "api_key": key})
        )
        await registry.apply(
            ProviderSpec("anthropic", "anthropic", {"base_url": anthropic.base_url, "api_key": key})
        )
        manager = ModelManager(registry)
        manager.fakes = {"openai": openai, "anthropic": anthropic}
        yield manager
        await registry.shutdown_all()


async def test_tool_calls_survive_openai_to_anthropic_and_back(manager) -> None:
    history = [ChatMessage(role="user", content='call get_weather {"city": "Paris"}')]
    first = await manager.chat_completion(
        ChatRequest(messages=list(history), tools=TOOLS), "openai"
    )
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}

    # The same conversation moves to Anthropic, with the tool's answer.
    history += [
        ChatMessage(role="assistant", content=first.content, tool_calls=first.tool_calls),
        ChatMessage(role="tool", content="18C and sunny", tool_call_id=call.id),
        ChatMessage(role="user", content='call get_time {"tz": "CET"}'),
    ]
    second = await manager.chat_completion(
        ChatRequest(messages=list(history), tools=TOOLS), "anthropic"
    )

    sent = manager.fakes["anthropic"].requests_to("/v1/messages")[-1].body
    assistant_blocks = sent["messages"][1]["content"]
    tool_use = next(b for b in assistant_blocks if b["type"] == "tool_use")
    assert tool_use == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    user_blocks = sent["messages"][2]["content"]
    assert user_blocks[0]["type"] == "tool_result" and user_blocks[0]["tool_use_id"] == call.id
    assert {t["name"] for t in sent["tools"]} == {"get_weather", "get_time"}
    assert sent["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]

    # Anthropic's tool_use comes back in the common (OpenAI) shape...
    assert second.finish_reason == "tool_calls"
    (back,) = second.tool_calls
    assert back.name == "get_time" and json.loads(back.arguments) == {"tz": "CET"}

    # ...and goes on to OpenAI as a proper assistant tool call.
    history += [
        ChatMessage(role="assistant", content=second.content, tool_calls=second.tool_calls),
        ChatMessage(role="tool", content="14:00", tool_call_id=back.id),
    ]
    third = await manager.chat_completion(ChatRequest(messages=history, tools=TOOLS), "openai")
    sent = manager.fakes["openai"].requests_to("/v1/chat/completions")[-1].body
    assistant = sent["messages"][-2]
    assert assistant["tool_calls"][0]["id"] == back.id
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"tz": "CET"}
    assert sent["messages"][-1] == {"role": "tool", "content": "14:00", "tool_call_id": back.id}
    assert third.content


async def test_a_streamed_anthropic_tool_call_arrives_whole(manager) -> None:
    request = ChatRequest(
        messages=[ChatMessage(role="user", content='call get_weather {"city": "Reykjavik"}')],
        tools=TOOLS,
        stream=True,
    )
    chunks = [c async for c in manager.chat_completion_stream(request, "anthropic")]
    final = chunks[-1]
    assert final.is_final and final.finish_reason == "tool_calls"
    (call,) = final.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Reykjavik"}
    assert all(not c.tool_calls for c in chunks[:-1]), "tool calls arrive once, complete"
