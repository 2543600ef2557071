"""The options rule read for each plugin: what a request sets that its provider does not honour."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from providers.plugins.anthropic_provider import AnthropicProvider
from providers.plugins.echo_provider import EchoProvider
from providers.plugins.ollama_provider import OllamaProvider
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime.request_options import _asks_something, unsupported_options
from providers.types import OPTION_FIELDS, ChatMessage, ChatRequest

#: For each option, a value that asks for something and one that every provider does anyway.
ASKING: dict[str, Any] = {
    "temperature": 0.2,
    "max_tokens": 5,
    "top_p": 0.5,
    "stop": ["x"],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "tool_choice": "auto",
    "user": "u",
    "response_format": {"type": "json_object"},
    "seed": 1,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"1": 1.0},
    "parallel_tool_calls": False,
    "top_k": 3,
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "n": 2,
}
HARMLESS = {
    "response_format": {"type": "text"},
    "parallel_tool_calls": True,
    "logprobs": False,
    "thinking": {"type": "disabled"},
}
PLUGINS = [EchoProvider, OpenAIProvider, AnthropicProvider, OllamaProvider]


def requests() -> list[ChatRequest]:
    """Requests with no option, each option alone (asking or harmless), and pairs of options."""
    settable = [name for name in OPTION_FIELDS if name in ASKING]
    made = [{}]
    made += [{name: ASKING[name]} for name in settable]
    made += [{name: value} for name, value in HARMLESS.items()]
    made += [{a: ASKING[a], b: ASKING[b]} for a, b in itertools.combinations(settable, 2)]
    made.append({name: ASKING[name] for name in settable})
    return [ChatRequest(messages=[ChatMessage(role="user", content="hi")], **m) for m in made]


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.__name__)
def test_only_what_the_plugin_does_not_honour_is_named_in_option_order(plugin) -> None:
    provider = plugin.__new__(plugin)  # only its class-level declaration is read
    honoured = plugin.supported_options
    for request in requests():
        asked = [
            name
            for name in OPTION_FIELDS
            if (value := getattr(request, name)) is not None and _asks_something(name, value)
        ]
        assert unsupported_options(request, provider) == [n for n in asked if n not in honoured]


def test_every_option_has_a_value_here() -> None:
    assert set(OPTION_FIELDS) - {"documents"} <= set(ASKING)
