"""The built-in ``ollama`` provider: local models served by an Ollama server.

It speaks Ollama's native API (``/api/chat`` with NDJSON streaming,
``/api/tags``, ``/api/embed``) through the shared ``HTTPProvider`` layer,
which owns the pooled client, the timeouts and the mapping of HTTP failures
to typed errors; the request and response shapes live in ``ollama_wire``.
Ollama needs no key. Token counts come from the final ``done`` object
(``prompt_eval_count``, ``eval_count``); local models cost nothing, and
their context lengths are data in ``model_info.yaml``.

Capabilities: streaming and embeddings, as the plugin guide lists, plus
function calling and vision, which Ollama's API carries for the models that
have them (``llama3.1``, ``qwen2.5`` call tools; ``llava``, ``gemma3`` see).
A model without the capability is refused by Ollama with a 400, which
arrives as ``BadRequestError``. Ollama has no ``tool_choice``: a forced one
is emulated (the named tool sent alone, an instruction to call it) and the
answer checked: one that does not make the call is a 422
``tool_choice_not_followed``, never passed off as an answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from providers.base import DEFAULT_SUPPORTED_OPTIONS, PluginCapability, PluginMetadata
from providers.errors import ProtocolError
from providers.http_provider import HTTP_SETTINGS_SCHEMA, HTTPProvider, default_model_setting
from providers.plugins import ollama_wire as wire
from providers.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamingChunk,
    Usage,
)
from providers.usage.model_info import known_model_info

DEFAULT_BASE_URL = "http://localhost:11434"

# A Go duration as Ollama's keep_alive parses it: "5m", "1h30m", "0", "-1m".
KEEP_ALIVE_PATTERN = r"^(0|-?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"


class OllamaProvider(HTTPProvider):
    """Chat, stream and embed with the models of one Ollama server."""

    display_name = "Ollama"

    metadata = PluginMetadata(
        name="Ollama",
        version="1.0.0",
        description="Local models (Llama, Mistral, Gemma, ...) served by Ollama; no API key.",
        author="Echo",
        capabilities=[
            PluginCapability.STREAMING,
            PluginCapability.EMBEDDINGS,
            PluginCapability.FUNCTION_CALLING,
            PluginCapability.VISION,
        ],
        # The guide's model families; the server's own list is list_models().
        models=["llama3", "llama2", "codellama", "mistral", "gemma"],
        homepage="https://ollama.com",
        requires_api_key=False,
    )

    #: ``response_format`` is Ollama's ``format``; ``seed``, ``top_k`` and the
    #: penalties are Modelfile ``options``. ``logprobs``, ``logit_bias``,
    #: ``parallel_tool_calls`` and ``thinking`` have no Ollama form.
    supported_options = DEFAULT_SUPPORTED_OPTIONS | {
        "response_format",
        "seed",
        "top_k",
        "presence_penalty",
        "frequency_penalty",
    }

    config_json_schema = {
        "type": "object",
        "title": "Ollama settings",
        "description": "Where the Ollama server runs and which of its models to use.",
        "properties": {
            "base_url": {
                "type": "string",
                "title": "Server URL",
                "description": "Address of the Ollama server, without /api.",
                "default": DEFAULT_BASE_URL,
                "format": "uri",
                "pattern": "^https?://",
                "maxLength": 2048,
            },
            "default_model": default_model_setting(
                "llama3",
                "Model used when a request names none, e.g. llama3 or "
                "mistral:7b; it must be pulled on the server (ollama pull).",
            ),
            "embedding_model": {
                "type": "string",
                "title": "Embedding model",
                "description": "Model used for embeddings when a request names none.",
                "default": "nomic-embed-text",
                "minLength": 1,
            },
            "keep_alive": {
                "type": "string",
                "title": "Keep model loaded for",
                "description": "How long Ollama keeps a model in memory after a request, "
                'as a duration such as "5m" or "1h"; "0" unloads it at once and a '
                'negative duration ("-1m") keeps it loaded. Empty: the server\'s '
                "default (5m).",
                "pattern": KEEP_ALIVE_PATTERN,
            },
            **HTTP_SETTINGS_SCHEMA,
            # A local model is loaded from disk on its first request, which
            # can take longer than a hosted API's first byte.
            "timeout": {**HTTP_SETTINGS_SCHEMA["timeout"], "default": 120},
        },
        "additionalProperties": False,
    }

    # --- chat ------------------------------------------------------------

    def _model(self, request: ChatRequest) -> str:
        return request.model or str(self.config["default_model"])

    def _keep_alive(self) -> str | None:
        return self.config.get("keep_alive") or None

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        model = self._model(request)
        body = self.wire_call(
            wire.chat_body, request, model=model, stream=False, keep_alive=self._keep_alive()
        )
        data = await self.post_json(wire.CHAT_PATH, body)
        response = self.wire_call(wire.parse_chat_response, data, model=model)
        response.provider = self.name
        self.wire_call(wire.check_forced_call, request, response.tool_calls)
        return response

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        """Stream the answer; one with a forced ``tool_choice`` comes whole, once checked.

        The forced call is emulated (``ollama_wire.chat_tools``) and the answer
        must be checked before any of it is sent, so it is one final chunk.
        """
        if self.wire_call(wire.forced_tool, request) is not None:
            response = await self.chat_completion(request)
            yield StreamingChunk(
                content=response.content,
                is_final=True,
                finish_reason=response.finish_reason,
                usage=response.usage,
                tool_calls=response.tool_calls,
                model=response.model,
                metadata={"provider": self.name, "streaming": "checked"},
            )
            return
        model = self._model(request)
        made_tool_calls = False
        body = self.wire_call(
            wire.chat_body, request, model=model, stream=True, keep_alive=self._keep_alive()
        )
        async for data in self.stream_ndjson(wire.CHAT_PATH, body):
            chunk = self.wire_call(wire.parse_stream_object, data)
            chunk.model = chunk.model or model
            made_tool_calls = made_tool_calls or bool(chunk.tool_calls)
            if chunk.is_final:
                if made_tool_calls:
                    chunk.finish_reason = "tool_calls"
                yield chunk
                return
            if chunk.content or chunk.tool_calls:
                yield chunk
        # The connection closed cleanly, but without the final object: the
        # answer may be cut short and its usage is unknown.
        raise self._error(
            ProtocolError, f"{self.display_name} ended the stream without its final 'done' object."
        )

    # --- embeddings ------------------------------------------------------

    async def embeddings(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        if not texts:
            return []
        answer = await self.create_embeddings(EmbeddingRequest(input=texts, model=model))
        return answer.vectors

    async def create_embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Return Ollama's vectors and its ``prompt_eval_count`` (one token a word when it sends none).

        Ollama takes text only, at its model's own dimensions (it declares no
        ``embedding_options``).
        """
        model = request.model or str(self.config["embedding_model"])
        texts = [str(text) for text in request.input]
        if not texts:
            return EmbeddingResponse(vectors=[], model=model)
        body = self.wire_call(wire.embed_body, texts, model=model, keep_alive=self._keep_alive())
        data = await self.post_json(wire.EMBED_PATH, body)
        vectors = self.wire_call(wire.parse_embeddings, data, count=len(texts))
        usage = self.wire_call(wire.parse_embed_usage, data) or Usage(
            prompt_tokens=sum(len(text.split()) for text in texts)
        )
        return EmbeddingResponse(vectors=vectors, model=model, usage=usage)

    # --- models and health ---------------------------------------------------

    async def list_models(self) -> list[str]:
        return self.wire_call(wire.model_names, await self.request_json("GET", wire.TAGS_PATH))

    def get_model_info(self, model_name: str) -> dict[str, Any] | None:
        """Return the facts of MODEL_NAME's family (``llama3:8b`` is ``llama3``), or None."""
        return known_model_info("ollama", wire.base_model_name(model_name))
