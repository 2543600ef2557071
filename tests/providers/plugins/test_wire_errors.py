"""One mapping of wire-format errors: the same upstream situation is the same kind in every built-in.

Each wire format raises ``WireFormatError`` and ``UpstreamErrorEvent``;
``HTTPProvider.wire_call`` types them. Fed its own upstream's spelling of the
same situation, each built-in must raise the same ``ProviderError`` kind,
with the status that kind stands for, its own name and its display name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from providers.errors import (
    BadRequestError,
    ProtocolError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
)
from providers.http_provider import HTTPProvider
from providers.plugins import anthropic_wire, ollama_wire, openai_wire
from providers.plugins.anthropic_provider import AnthropicProvider
from providers.plugins.ollama_provider import OllamaProvider
from providers.plugins.openai_provider import OpenAIProvider


def openai_event(error: dict[str, Any]) -> Callable[[], Any]:
    return lambda: openai_wire.parse_stream_event(json.dumps({"error": error}))


def anthropic_event(kind: str, message: str) -> Callable[[], Any]:
    event = {"type": "error", "error": {"type": kind, "message": message}}
    return lambda: anthropic_wire.StreamFold().feed(event)


def ollama_object(message: str) -> Callable[[], Any]:
    return lambda: ollama_wire.parse_stream_object({"error": message})


PROVIDERS: dict[str, HTTPProvider] = {
    "openai": OpenAIProvider({"api_key": "sk-wire-errors-0000"}, name="o"),
    "anthropic": AnthropicProvider({"api_key": "sk-wire-errors-0000"}, name="a"),
    "ollama": OllamaProvider({}, name="l"),
}

# (situation, provider, what its upstream sends, the kind, the status it stands for)
REPORTED = [
    ("server", "openai", openai_event({"message": "Boom", "type": "server_error"}), 500),
    ("server", "anthropic", anthropic_event("api_error", "Boom"), 500),
    ("server", "ollama", ollama_object("Boom: the runner crashed"), 500),
    ("overloaded", "anthropic", anthropic_event("overloaded_error", "Boom"), 529),
    ("invalid", "openai", openai_event({"message": "Boom", "type": "invalid_request_error"}), 400),
    ("invalid", "anthropic", anthropic_event("invalid_request_error", "Boom"), 400),
    ("invalid", "ollama", ollama_object('Boom: "embed" does not support chat'), 400),
    ("rate", "openai", openai_event({"message": "Boom", "code": "rate_limit_exceeded"}), 429),
    ("rate", "anthropic", anthropic_event("rate_limit_error", "Boom"), 429),
]
KIND = {
    "server": ProviderUnavailableError,
    "overloaded": ProviderUnavailableError,
    "invalid": BadRequestError,
    "rate": RateLimitError,
}


@pytest.mark.parametrize(
    ("situation", "provider", "read", "status"),
    REPORTED,
    ids=[f"{situation}-{provider}" for situation, provider, _, _ in REPORTED],
)
def test_an_error_reported_mid_stream_gets_the_kind_of_its_status(
    situation: str, provider: str, read: Callable[[], Any], status: int
) -> None:
    plugin = PROVIDERS[provider]
    with pytest.raises(ProviderError) as caught:
        plugin.wire_call(read)
    error = caught.value
    assert type(error) is KIND[situation]
    assert error.status_code == status and error.provider == plugin.name
    assert error.message.startswith(f"{plugin.display_name} failed mid-stream: ")
    assert "Boom" in error.message


# What each wire format raises for data that breaks it, and for a request it cannot express.
RAISED = [
    ("openai", lambda: openai_wire.parse_chat_response([], model="m"), ProtocolError),
    ("anthropic", lambda: anthropic_wire.parse_response([]), ProtocolError),
    ("ollama", lambda: ollama_wire.parse_chat_response([], model="m"), ProtocolError),
    ("anthropic", lambda: anthropic_wire.translate_tool_choice("sometimes"), BadRequestError),
    ("ollama", lambda: ollama_wire.image_base64({}, "messages[0].content[1]"), BadRequestError),
]


@pytest.mark.parametrize(
    ("provider", "read", "kind"),
    RAISED,
    ids=[f"{kind.__name__}-{provider}" for provider, _, kind in RAISED],
)
def test_what_a_wire_format_raises_keeps_its_kind_and_names_the_provider(
    provider: str, read: Callable[[], Any], kind: type[ProviderError]
) -> None:
    plugin = PROVIDERS[provider]
    with pytest.raises(kind) as caught:
        plugin.wire_call(read)
    assert caught.value.provider == plugin.name
    if kind is ProtocolError:  # the upstream's fault: named, and worth a retry
        assert caught.value.message.startswith(f"{plugin.display_name} sent ")
        assert caught.value.retryable
    else:  # the request's fault: the field it concerns
        assert caught.value.field
