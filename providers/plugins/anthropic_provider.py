"""The built-in ``anthropic`` provider: Claude through Anthropic's Messages API.

It is ``HTTPProvider`` (pooled client, timeouts, typed errors, SSE reader)
plus Anthropic's wire format from ``anthropic_wire``: ``POST /v1/messages``
authenticated with ``x-api-key`` and ``anthropic-version``, streamed as
Server-Sent Events, and ``GET /v1/models`` for the model list and a health
check that spends no tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any
from urllib.parse import urlencode

from providers.base import DEFAULT_SUPPORTED_OPTIONS, PluginCapability, PluginMetadata
from providers.http_provider import HTTPProvider, default_model_setting, keyed_api_schema
from providers.plugins.anthropic_wire import (
    MESSAGES_PATH,
    MODELS_PATH,
    StreamFold,
    build_request,
    parse_model_list,
    parse_response,
    structured_tool_name,
)
from providers.types import ChatRequest, ChatResponse, StreamingChunk
from providers.usage.model_info import known_model_info

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_API_VERSION = "2023-06-01"
DEFAULT_MODEL = "claude-3-5-haiku-latest"

# Shown in the plugin's metadata (a live provider's default model first); the live
# list comes from GET /v1/models.
WELL_KNOWN_MODELS = (
    "claude-opus-4-1",
    "claude-opus-4-0",
    "claude-sonnet-4-5",
    "claude-sonnet-4-0",
    "claude-3-7-sonnet-latest",
    "claude-haiku-4-5",
    "claude-3-5-haiku-latest",
    "claude-3-haiku-20240307",
)

# A model list longer than this many pages means the upstream's cursor is broken.
MAX_MODEL_PAGES = 20


class AnthropicProvider(HTTPProvider):
    """Talk to Anthropic's Messages API (or anything that speaks it at ``base_url``)."""

    display_name = "Anthropic"

    metadata = PluginMetadata(
        name="Anthropic",
        version="1.0.0",
        description="Claude models through Anthropic's Messages API.",
        author="Echo",
        capabilities=[
            PluginCapability.STREAMING,
            PluginCapability.FUNCTION_CALLING,
            PluginCapability.VISION,
            PluginCapability.MULTIMODAL,
        ],
        models=list(WELL_KNOWN_MODELS),
        homepage="https://docs.anthropic.com/en/api/messages",
        requires_api_key=True,
    )

    #: Translated by ``anthropic_wire`` (see its docstring); ``seed``, the
    #: penalties, ``logprobs`` and ``logit_bias`` have no Anthropic form.
    supported_options = DEFAULT_SUPPORTED_OPTIONS | {
        "response_format",
        "parallel_tool_calls",
        "top_k",
        "thinking",
        "documents",
    }

    config_json_schema = keyed_api_schema(
        "Anthropic settings",
        api_key_description="Anthropic API key (sent as x-api-key); never shown again.",
        properties={
            "base_url": {
                "type": "string",
                "title": "Base URL",
                "description": "Where the Messages API lives; change it for a proxy or gateway.",
                "default": DEFAULT_BASE_URL,
                "pattern": "^https?://",
                "maxLength": 2048,
            },
            "anthropic_version": {
                "type": "string",
                "title": "API version",
                "description": "The anthropic-version header: the API behaviour Echo is written for.",
                "default": DEFAULT_API_VERSION,
                "minLength": 1,
            },
            "max_tokens": {
                "type": "integer",
                "title": "Default max tokens",
                "description": (
                    "Most tokens an answer may use when a request sets none; "
                    "Anthropic requires a limit on every request."
                ),
                "default": 1024,
                "minimum": 1,
                # Far above any model's output limit, and a bound on what is sent.
                "maximum": 1_000_000,
            },
            "default_model": default_model_setting(DEFAULT_MODEL),
        },
    )

    # --- HTTPProvider hooks ----------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": str(self.config["anthropic_version"])}
        if self.config.get("api_key"):
            headers["x-api-key"] = str(self.config["api_key"])
        return headers

    def upstream_error_message(self, body: Any) -> str | None:
        """Read Anthropic's ``{"type": "error", "error": {"type", "message"}}`` body."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kind = error.get("type")
            return f"{kind}: {error['message']}" if isinstance(kind, str) else error["message"]
        return super().upstream_error_message(body)

    # --- chat --------------------------------------------------------------

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """Return the Messages API body for REQUEST with this provider's defaults."""
        return self.wire_call(
            build_request,
            request,
            model=request.model or str(self.config["default_model"]),
            default_max_tokens=int(self.config["max_tokens"]),
            stream=stream,
        )

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        body = await self.post_json(MESSAGES_PATH, self.build_body(request, stream=False))
        return self.wire_call(
            parse_response,
            body,
            provider=self.name,
            structured_tool=structured_tool_name(request),
        )

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        body = self.build_body(request, stream=True)
        fold = StreamFold(
            provider=self.name, model=body["model"], structured_tool=structured_tool_name(request)
        )
        async with aclosing(self.stream_sse(MESSAGES_PATH, body)) as events:
            async for event in events:
                data = self.parse_json_text(event.data)
                if isinstance(data, dict) and "type" not in data:
                    data["type"] = event.event  # the SSE event name says the same
                chunk = self.wire_call(fold.feed, data)
                if chunk is not None:
                    yield chunk
        self.wire_call(fold.finish)

    # --- models and health -------------------------------------------------

    async def list_models(self) -> list[str]:
        models: list[str] = []
        cursor: str | None = None
        for _ in range(MAX_MODEL_PAGES):
            query = {"limit": 1000, **({"after_id": cursor} if cursor else {})}
            body = await self.request_json("GET", f"{MODELS_PATH}?{urlencode(query)}")
            page, cursor = self.wire_call(parse_model_list, body)
            models.extend(page)
            if cursor is None:
                break
        return models

    def get_model_info(self, model_name: str) -> dict[str, Any] | None:
        return known_model_info("anthropic", model_name)
