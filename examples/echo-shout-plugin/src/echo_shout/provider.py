"""``ShoutProvider``: answers with the last user message in capitals, offline.

A complete plugin written by hand on ``AbstractAIProvider`` (the guide's
"manual implementation"), importing only ``providers.base``, ``.errors`` and
``.types``, as every plugin should: no Django, no database. Its metadata and
config schema are class attributes, which Echo reads without an instance.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from providers.base import AbstractAIProvider, PluginCapability, PluginMetadata
from providers.errors import ModelNotFoundError
from providers.types import ChatRequest, ChatResponse, HealthStatus, StreamingChunk, Usage

MODELS = ("shout-1",)


def count_tokens(text: str) -> int:
    """Count one token per whitespace-separated word."""
    return len(text.split())


class ShoutProvider(AbstractAIProvider):
    """Reply with the last user message, shouted."""

    metadata = PluginMetadata(
        name="Shout",
        version="0.1.0",
        description="Example plugin package: answers in capitals, offline.",
        author="Echo examples",
        capabilities=[PluginCapability.STREAMING],
        models=list(MODELS),
    )

    config_json_schema = {
        "type": "object",
        "title": "Shout settings",
        "properties": {
            "exclamations": {
                "type": "integer",
                "title": "Exclamation marks",
                "description": "How many '!' end each answer.",
                "default": 1,
                "minimum": 0,
                "maximum": 10,
            },
        },
        "additionalProperties": False,
    }

    async def initialize(self) -> None:
        # Nothing to open: the provider has no upstream.
        self._started = time.monotonic()

    def _answer(self, request: ChatRequest) -> tuple[str, str, Usage]:
        model = request.model or MODELS[0]
        if model not in MODELS:
            raise ModelNotFoundError(f"Unknown model {model!r}.", provider=self.name)
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        reply = (last_user.text if last_user else "").upper() + "!" * self.config["exclamations"]
        prompt_tokens = sum(count_tokens(m.text) for m in request.messages)
        # At least one token each way, so that an empty prompt still has usage.
        usage = Usage(max(prompt_tokens, 1), max(count_tokens(reply), 1))
        return model, reply, usage

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        model, reply, usage = self._answer(request)
        return ChatResponse(content=reply, model=model, provider=self.name, usage=usage)

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        model, reply, usage = self._answer(request)
        for index, word in enumerate(reply.split(" ")):
            yield StreamingChunk(content=word if index == 0 else " " + word, model=model)
        yield StreamingChunk(is_final=True, finish_reason="stop", usage=usage, model=model)

    async def health_check(self) -> HealthStatus:
        return HealthStatus(available=True, models=list(MODELS), response_time_ms=0.0)

    async def list_models(self) -> list[str]:
        return list(MODELS)
