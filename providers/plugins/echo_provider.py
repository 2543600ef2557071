"""The built-in ``echo`` provider: answers from the conversation, offline.

It needs no key and no network, so a fresh ``make run`` answers at once, and
the test suite has a provider whose every answer is known in advance. The
answer is the configured prefix followed by the last user message; streaming
sends it word by word with a configurable delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from providers.base import AbstractAIProvider, PluginCapability, PluginMetadata
from providers.errors import ModelNotFoundError
from providers.types import ChatRequest, ChatResponse, HealthStatus, StreamingChunk, Usage


def count_tokens(text: str) -> int:
    """Count tokens the echo way: one per whitespace-separated word."""
    return len(text.split())


class EchoProvider(AbstractAIProvider):
    """Reply with the last user message, deterministically."""

    metadata = PluginMetadata(
        name="Echo",
        version="1.0.0",
        description="Offline provider that answers with the last user message.",
        author="Echo",
        capabilities=[PluginCapability.STREAMING],
        # A live instance lists its ``models`` setting instead.
        models=["echo-1"],
    )

    config_json_schema = {
        "type": "object",
        "title": "Echo settings",
        "properties": {
            "prefix": {
                "type": "string",
                "title": "Reply prefix",
                "description": "Text put before the echoed message.",
                "default": "Echo: ",
            },
            "delay_ms": {
                "type": "integer",
                "title": "Delay per streamed word (ms)",
                "description": "Pause between streamed words, to watch streaming work.",
                "default": 0,
                "minimum": 0,
                "maximum": 10000,
            },
            "default_model": {
                "type": "string",
                "title": "Default model",
                "description": "Model used when a request names none.",
                "default": "echo-1",
            },
            "models": {
                "type": "array",
                "title": "Models",
                "description": "Model names this provider answers to.",
                "items": {"type": "string"},
                "default": ["echo-1"],
                "minItems": 1,
            },
        },
        "additionalProperties": False,
    }

    async def initialize(self) -> None:
        self._started = time.monotonic()

    def _model(self, request: ChatRequest) -> str:
        model = request.model or self.config["default_model"]
        if model not in self.config["models"] and model != self.config["default_model"]:
            raise ModelNotFoundError(f"Unknown model {model!r}.", provider=self.name)
        return model

    def _answer(self, request: ChatRequest) -> tuple[str, Usage]:
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        reply = self.config["prefix"] + (last_user.text if last_user else "")
        prompt_tokens = sum(count_tokens(m.text) for m in request.messages)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=count_tokens(reply))
        return reply, usage

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        model = self._model(request)
        reply, usage = self._answer(request)
        return ChatResponse(content=reply, model=model, provider=self.name, usage=usage)

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        model = self._model(request)
        reply, usage = self._answer(request)
        delay = self.config["delay_ms"] / 1000
        words = reply.split(" ")
        for index, word in enumerate(words):
            if delay and index:
                await asyncio.sleep(delay)
            yield StreamingChunk(content=word if index == 0 else " " + word, model=model)
        yield StreamingChunk(is_final=True, finish_reason="stop", usage=usage, model=model)

    async def health_check(self) -> HealthStatus:
        started = time.perf_counter()
        models = await self.list_models()
        return HealthStatus(
            available=True,
            models=models,
            response_time_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    async def list_models(self) -> list[str]:
        return list(self.config["models"])

    def get_model_info(self, model_name: str) -> dict[str, Any] | None:
        if model_name not in self.config["models"]:
            return None
        return {
            "context_length": 1_000_000,
            "capabilities": ["text"],
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 0.0,
        }
