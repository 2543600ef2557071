"""The provider contract: schema normalization, per-field validation, the streaming fallback."""

from __future__ import annotations

from typing import Any

import pytest

from providers.base import (
    ROUTING_SETTINGS_SCHEMA,
    AbstractAIProvider,
    PluginCapability,
    PluginMetadata,
    config_errors,
    normalize_config_schema,
    secret_fields,
)
from providers.errors import ProviderConfigError
from providers.types import ChatMessage, ChatRequest, ChatResponse, HealthStatus, Usage

GUIDE_SCHEMA = {
    "type": "object",
    "properties": {
        "api_key": {"type": "string", "description": "API key", "required": True},
        "timeout": {"type": "integer", "default": 60, "minimum": 1},
    },
    "required": ["api_key"],
}
ROUTING_DEFAULTS = {name: prop["default"] for name, prop in ROUTING_SETTINGS_SCHEMA.items()}


class WholeAnswerProvider(AbstractAIProvider):
    """A provider with no native streaming, built the guide's way."""

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(name="Whole", version="1.0.0", capabilities=[])

    def get_config_schema(self) -> dict[str, Any]:
        return GUIDE_SCHEMA

    async def initialize(self) -> None:
        self.initialized = getattr(self, "initialized", 0) + 1

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(
            content="whole answer", model="m", usage=Usage(prompt_tokens=2, completion_tokens=2)
        )

    async def health_check(self) -> HealthStatus:
        return HealthStatus(available=True)

    async def list_models(self) -> list[str]:
        return ["m"]


def test_guide_style_required_flag_becomes_json_schema() -> None:
    schema = normalize_config_schema(GUIDE_SCHEMA)
    assert "required" not in schema["properties"]["api_key"]
    assert schema["required"] == ["api_key"]


def test_every_schema_gets_the_routing_settings_unless_it_defines_them() -> None:
    schema = normalize_config_schema(
        {
            "type": "object",
            "properties": {"max_retries": {"type": "integer", "default": 7}},
            "additionalProperties": False,
        }
    )
    properties = schema["properties"]
    assert set(ROUTING_SETTINGS_SCHEMA) <= set(properties)
    assert properties["max_retries"] == {"type": "integer", "default": 7}
    assert properties["deadline_seconds"]["default"] == 120
    assert all(
        properties[name]["title"] for name in ROUTING_SETTINGS_SCHEMA if name != "max_retries"
    )
    # A closed schema accepts them, and checks their bounds.
    assert config_errors(schema, {"breaker_cooldown_seconds": 10, "deadline_seconds": 5}) == {}
    assert config_errors(schema, {"breaker_failure_threshold": 0, "deadline_seconds": 0}) == {
        "breaker_failure_threshold": ["Must be at least 1."],
        "deadline_seconds": ["Must be at least 0.1."],
    }
    assert config_errors(GUIDE_SCHEMA, {"api_key": "k", "max_retries": 11}) == {
        "max_retries": ["Must be at most 10."]
    }


def test_errors_are_reported_per_field() -> None:
    errors = config_errors(GUIDE_SCHEMA, {"timeout": 0})
    assert errors == {"api_key": ["This field is required."], "timeout": ["Must be at least 1."]}


def test_type_errors_name_the_field_and_do_not_echo_the_value() -> None:
    errors = config_errors(GUIDE_SCHEMA, {"api_key": 12345678901234, "timeout": "soon"})
    assert set(errors) == {"api_key", "timeout"}
    assert "12345678901234" not in str(errors)


def test_unknown_settings_are_named_when_the_schema_is_closed() -> None:
    schema = {**GUIDE_SCHEMA, "additionalProperties": False}
    errors = config_errors(schema, {"api_key": "k", "temprature": 0.7})
    assert errors == {"temprature": ["Unknown setting."]}


def test_secret_fields_follow_markers_and_names() -> None:
    schema = {
        "properties": {
            "api_key": {"type": "string"},
            "password_hint": {"type": "string"},
            "client_secret": {"type": "string"},
            "org": {"type": "string", "writeOnly": True},
            "base_url": {"type": "string"},
        }
    }
    assert secret_fields(schema) == {"api_key", "client_secret", "org"}


def test_defaults_are_applied_to_the_instance_config() -> None:
    provider = WholeAnswerProvider({"api_key": "k"})
    assert provider.config == {"api_key": "k", "timeout": 60, **ROUTING_DEFAULTS}
    assert provider.validate_config({"api_key": "k"}) is True
    assert provider.validate_config({}) is False


async def test_streaming_fallback_yields_one_final_chunk() -> None:
    provider = WholeAnswerProvider({"api_key": "k"})
    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")], stream=True)
    chunks = [chunk async for chunk in provider.chat_completion_stream(request)]
    assert len(chunks) == 1
    assert chunks[0].is_final and chunks[0].content == "whole answer"
    assert chunks[0].usage.total_tokens == 4


async def test_reload_in_place_validates_first() -> None:
    provider = WholeAnswerProvider({"api_key": "k"})
    await provider.initialize()
    with pytest.raises(ProviderConfigError) as caught:
        await provider.reload({"timeout": 5})
    assert caught.value.errors == {"api_key": ["This field is required."]}
    assert provider.config["api_key"] == "k"
    await provider.reload({"api_key": "k2", "timeout": 5})
    assert provider.config == {"api_key": "k2", "timeout": 5, **ROUTING_DEFAULTS}
    assert provider.initialized == 2


def test_capabilities_are_declared() -> None:
    provider = WholeAnswerProvider({"api_key": "k"})
    assert not provider.supports(PluginCapability.STREAMING)
    assert PluginCapability.MULTIMODAL.value == "multimodal"
