"""The built-in ``openai`` provider: OpenAI's API, or any server that speaks it.

Chat Completions (whole or streamed as Server-Sent Events), tool calls,
image parts, model listing and embeddings; every Chat Completions option
(``response_format``, ``seed``, penalties, ``logprobs``, ``logit_bias``,
``parallel_tool_calls``) is passed on as the client sent it. ``base_url`` points it at any
OpenAI-compatible server (vLLM, llama.cpp, Ollama's ``/v1``, a gateway).
The HTTP layer (pooled client, timeouts, error mapping, SSE reading) is
``HTTPProvider``'s; the wire format is ``openai_wire``'s. This module only
joins the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from providers.base import DEFAULT_SUPPORTED_OPTIONS, PluginCapability, PluginMetadata
from providers.errors import ProtocolError, ProviderError
from providers.http_provider import (
    HTTPProvider,
    SSEEvent,
    default_model_setting,
    keyed_api_schema,
)
from providers.plugins import openai_wire
from providers.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamingChunk,
)
from providers.usage.model_info import known_model_info

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"

# Shown in the plugin's metadata (a live provider's default model first); the live
# list comes from ``list_models``.
WELL_KNOWN_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "gpt-3.5-turbo")

# How long to wait, after ``[DONE]``, for the end of the HTTP body: a body read
# to its end returns its connection to the pool instead of closing it.
DRAIN_SECONDS = 1.0


class OpenAIProvider(HTTPProvider):
    """Talk to OpenAI's API, or any server that speaks its wire format."""

    display_name = "OpenAI"

    metadata = PluginMetadata(
        name="OpenAI",
        version="1.0.0",
        description="OpenAI's Chat Completions, models and embeddings APIs, "
        "or any OpenAI-compatible server (set its base URL).",
        author="Echo",
        capabilities=[
            PluginCapability.STREAMING,
            PluginCapability.FUNCTION_CALLING,
            PluginCapability.VISION,
            PluginCapability.EMBEDDINGS,
        ],
        models=list(WELL_KNOWN_MODELS),
        homepage="https://platform.openai.com/docs/api-reference",
        requires_api_key=True,
    )

    #: Every option of Chat Completions is passed on under its own name;
    #: ``top_k`` and ``thinking`` are no OpenAI options, so they are refused.
    #: Documents go as text or ``file`` parts (``openai_wire.document_part``).
    supported_options = DEFAULT_SUPPORTED_OPTIONS | frozenset(
        (*openai_wire.PASSED_OPTIONS, "documents")
    )
    embedding_options = frozenset({"dimensions", "token_input"})

    config_json_schema = keyed_api_schema(
        "OpenAI settings",
        api_key_description="Secret key sent as 'Authorization: Bearer'. "
        "Any non-empty text for a local server that needs none.",
        properties={
            "organization": {
                "type": "string",
                "title": "Organization ID",
                "description": "Sent as 'OpenAI-Organization' to bill an organization "
                "other than the key's default (org-...). Leave empty otherwise.",
            },
            "base_url": {
                "type": "string",
                "format": "uri",
                "pattern": "^https?://",
                "maxLength": 2048,
                "title": "Base URL",
                "description": "Where the API lives; '/chat/completions', '/models' and "
                "'/embeddings' are added to it. Change it to reach an "
                "OpenAI-compatible server.",
                "default": DEFAULT_BASE_URL,
            },
            "default_model": default_model_setting(DEFAULT_MODEL),
            "embedding_model": {
                "type": "string",
                "title": "Embedding model",
                "description": "Model used for embeddings when a request names none.",
                "default": DEFAULT_EMBEDDING_MODEL,
                "minLength": 1,
            },
        },
    )

    # --- HTTPProvider hooks ------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        # A pasted key often ends in a newline, which is not allowed in a header.
        headers = {"Authorization": f"Bearer {str(self.config.get('api_key', '')).strip()}"}
        organization = str(self.config.get("organization") or "").strip()
        if organization:
            headers["OpenAI-Organization"] = organization
        return headers

    def upstream_error_message(self, body: Any) -> str | None:
        """Return OpenAI's error message, with its ``code`` when it has one."""
        message = super().upstream_error_message(body)
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if message and isinstance(code, str) and code:
            return f"{message} ({code})"
        return message

    # --- chat --------------------------------------------------------------

    def _model(self, request: ChatRequest) -> str:
        return request.model or self.config["default_model"]

    def _chat_body(self, request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
        info = known_model_info("openai", model) or {}
        return openai_wire.build_chat_body(
            request,
            model=model,
            stream=stream,
            max_tokens_field=info.get("max_tokens_field", "max_tokens"),
        )

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        model = self._model(request)
        body = await self.post_json(
            "/chat/completions", self._chat_body(request, model, stream=False)
        )
        return self.wire_call(
            openai_wire.parse_chat_response, body, model=model, provider=self.name
        )

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        """Stream the answer as OpenAI sends it: each text delta as it arrives.

        The final chunk comes after ``[DONE]`` (the usage chunk precedes it)
        and carries the finish reason, the usage and the whole tool calls.
        A stream that ends without ``[DONE]`` or a finish reason was cut.
        """
        model = self._model(request)
        events = self.stream_sse("/chat/completions", self._chat_body(request, model, stream=True))
        tool_calls = openai_wire.ToolCallAssembler()
        finish_reason = usage = None
        answered = model
        done = False
        try:
            async for sse in events:
                event = self.wire_call(openai_wire.parse_stream_event, sse.data)
                if event.done:
                    done = True
                    break
                answered = event.model or answered
                if event.tool_call_deltas:
                    self.wire_call(tool_calls.add, event.tool_call_deltas)
                finish_reason = event.finish_reason or finish_reason
                usage = event.usage or usage
                if event.content or event.logprobs:
                    yield StreamingChunk(
                        content=event.content,
                        model=answered,
                        metadata={"logprobs": event.logprobs} if event.logprobs else {},
                    )
            if done:
                await self._drain(events)
        finally:
            await events.aclose()
        if not done or finish_reason is None:
            missing = "[DONE]" if finish_reason else "a finish reason"
            raise self._error(
                ProtocolError, f"{self.display_name} ended the stream without {missing}."
            )
        yield StreamingChunk(
            is_final=True,
            finish_reason=finish_reason,
            usage=usage,
            tool_calls=self.wire_call(tool_calls.calls) or None,
            model=answered,
        )

    async def _drain(self, events: AsyncIterator[SSEEvent]) -> None:
        """Read what follows ``[DONE]`` (normally only the body's end), for a bounded time."""
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for _ in events:
                    pass
        except (TimeoutError, ProviderError):
            pass  # the answer is whole; only the connection's reuse is lost

    # --- embeddings, models, health -----------------------------------------

    async def embeddings(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        if not texts:
            return []
        answer = await self.create_embeddings(EmbeddingRequest(input=texts, model=model))
        return answer.vectors

    async def create_embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Return the upstream's vectors and its own usage; token arrays and dimensions pass as sent."""
        model = request.model or self.config["embedding_model"]
        if not request.input:
            return EmbeddingResponse(vectors=[], model=model)
        body = openai_wire.build_embeddings_body(
            request.input, model=model, dimensions=request.dimensions
        )
        answer = await self.post_json("/embeddings", body)
        vectors = self.wire_call(openai_wire.parse_embeddings, answer, count=len(request.input))
        usage = self.wire_call(openai_wire.parse_embeddings_usage, answer)
        return EmbeddingResponse(vectors=vectors, model=model, usage=usage)

    async def list_models(self) -> list[str]:
        answer = await self.request_json("GET", "/models")
        return self.wire_call(openai_wire.parse_model_list, answer)

    def get_model_info(self, model_name: str) -> dict[str, Any] | None:
        return known_model_info("openai", model_name)
