"""The built-in ``echo`` provider: answers from the conversation, offline.

It needs no key and no network, so a fresh ``make run`` answers at once, and
the test suite has a provider whose every answer is known in advance. The
answer is the configured prefix followed by the last user message; streaming
sends it word by word with a configurable delay.

It honours what a demo of a client library exercises, deterministically:

- ``max_tokens``: a token is a word; a longer answer is cut to that many
  words and ends with ``finish_reason`` ``length``.
- ``stop``: the answer ends before the first stop sequence it holds.
- tools: offered tools are called (``finish_reason`` ``tool_calls``) when
  ``tool_choice`` names one (that one), is ``required`` (the first), or is
  ``auto``/unset and the last user message names tools (each named, in the
  order offered: parallel calls). Arguments fill the required properties
  of the tool's JSON schema: strings with the user's message, numbers with
  0, booleans with false, arrays and objects empty. After a tool's result,
  the answer echoes the result. ``tool_choice`` ``none`` answers in text.
  ``parallel_tool_calls`` false keeps only the first call.
- ``response_format``: ``json_object`` answers ``{"echo": "<the user's
  message>"}``; ``json_schema`` answers an instance of the schema
  (``schema_instance``: strings are the user's message, numbers 0,
  booleans false, arrays empty, objects filled property by property, enums
  their first value), so that a client's structured-output parser accepts it.
- ``seed`` is accepted: every answer is deterministic anyway.

Any other option (penalties, ``logprobs``, ``logit_bias``, ``top_k``,
``thinking``) is refused by the router: echo declares no support for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from providers.base import (
    DEFAULT_SUPPORTED_OPTIONS,
    AbstractAIProvider,
    PluginCapability,
    PluginMetadata,
)
from providers.errors import ModelNotFoundError
from providers.types import (
    ChatRequest,
    ChatResponse,
    HealthStatus,
    StreamingChunk,
    ToolCall,
    Usage,
)

#: The empty value of each JSON Schema type, for a tool's required arguments.
_EMPTY_ARGUMENTS: dict[str, Any] = {
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
    "null": None,
}


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
        capabilities=[PluginCapability.STREAMING, PluginCapability.FUNCTION_CALLING],
        # A live instance lists its ``models`` setting instead.
        models=["echo-1"],
    )

    supported_options = DEFAULT_SUPPORTED_OPTIONS | {
        "response_format",
        "seed",
        "parallel_tool_calls",
    }

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

    def _answer(self, request: ChatRequest) -> tuple[str, Usage, str, list[ToolCall] | None]:
        """Return the reply, its usage, its finish reason and any tool calls."""
        prompt_tokens = sum(count_tokens(m.text) for m in request.messages)
        last = request.messages[-1] if request.messages else None
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        asked = last_user.text if last_user else ""
        calls = None if last is not None and last.role == "tool" else _tool_calls(request, asked)
        if calls:
            arguments = sum(count_tokens(call.arguments) for call in calls)
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=arguments)
            return "", usage, "tool_calls", calls
        echoed = last.text if last is not None and last.role == "tool" else asked
        structured = _structured_reply(request, echoed)
        reply, finish_reason = _bounded(
            self.config["prefix"] + echoed if structured is None else structured, request
        )
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=count_tokens(reply))
        return reply, usage, finish_reason, None

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        model = self._model(request)
        reply, usage, finish_reason, calls = self._answer(request)
        return ChatResponse(
            content=reply,
            model=model,
            provider=self.name,
            usage=usage,
            finish_reason=finish_reason,
            tool_calls=calls,
        )

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        model = self._model(request)
        reply, usage, finish_reason, calls = self._answer(request)
        delay = self.config["delay_ms"] / 1000
        words = reply.split(" ") if reply else []
        for index, word in enumerate(words):
            if delay and index:
                await asyncio.sleep(delay)
            yield StreamingChunk(content=word if index == 0 else " " + word, model=model)
        yield StreamingChunk(
            is_final=True, finish_reason=finish_reason, usage=usage, tool_calls=calls, model=model
        )

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


def _bounded(reply: str, request: ChatRequest) -> tuple[str, str]:
    """Return REPLY ended at the request's first stop sequence and cut to ``max_tokens`` words."""
    for stop in request.stop or ():
        if stop and stop in reply:
            reply = reply[: reply.index(stop)]
    if request.max_tokens is not None and count_tokens(reply) > request.max_tokens:
        kept = reply.split()[: max(0, request.max_tokens)]
        return " ".join(kept), "length"
    return reply, "stop"


def _tool_name(tool: dict[str, Any]) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


def _tool_calls(request: ChatRequest, asked: str) -> list[ToolCall] | None:
    """Return the tool calls the echo way (see the module's docstring), or None to answer in text."""
    offered = {name: tool for tool in request.tools or () if (name := _tool_name(tool))}
    choice = request.tool_choice
    if not offered or choice == "none":
        return None
    if isinstance(choice, dict):
        named = choice.get("function") if isinstance(choice.get("function"), dict) else {}
        chosen = [named.get("name")] if named.get("name") in offered else []
    elif choice == "required":
        chosen = [next(iter(offered))]
    else:
        words = set(re.findall(r"[A-Za-z0-9_.-]+", asked))
        chosen = [name for name in offered if name in words]
    if not chosen:
        return None
    if request.parallel_tool_calls is False:
        chosen = chosen[:1]
    return [
        ToolCall(
            id="call_" + hashlib.sha256(f"{index}:{name}:{asked}".encode()).hexdigest()[:24],
            name=name,
            arguments=json.dumps(_arguments(offered[name], asked), ensure_ascii=False),
        )
        for index, name in enumerate(chosen)
    ]


def _arguments(tool: dict[str, Any], asked: str) -> dict[str, Any]:
    """Fill the required properties of TOOL's parameters: strings with ASKED, others empty."""
    parameters = tool["function"].get("parameters")
    if not isinstance(parameters, dict):
        return {}
    properties = parameters.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = parameters.get("required")
    names = required if isinstance(required, list) else list(properties)
    arguments: dict[str, Any] = {}
    for name in names:
        if not isinstance(name, str):
            continue
        schema = properties.get(name)
        kind = schema.get("type") if isinstance(schema, dict) else None
        kind = kind if isinstance(kind, str) else "string"
        arguments[name] = asked if kind == "string" else _EMPTY_ARGUMENTS.get(kind, asked)
    return arguments


#: How deep ``schema_instance`` follows a schema (``$ref`` cycles included).
MAX_INSTANCE_DEPTH = 32
#: Example values of the string formats a structured-output parser checks.
_FORMAT_EXAMPLES: dict[str, str] = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00",
    "duration": "P0D",
    "email": "echo@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}


def _structured_reply(request: ChatRequest, text: str) -> str | None:
    """Return the JSON answer REQUEST's ``response_format`` asks for, or None for plain text."""
    response_format = request.response_format
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return json.dumps({"echo": text}, ensure_ascii=False)
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            return json.dumps({"echo": text}, ensure_ascii=False)
        return json.dumps(schema_instance(schema, text), ensure_ascii=False)
    return None


def schema_instance(schema: dict[str, Any], text: str) -> Any:
    """Return a JSON value that SCHEMA accepts, built the echo way from TEXT.

    Strings are TEXT (or an example of their ``format``), numbers 0 (or
    their minimum), booleans false, arrays their ``minItems`` of items,
    objects every property, an ``enum`` or ``const`` its (first) value.
    ``$ref`` to ``#/$defs/...`` (what Pydantic writes) is followed; in a
    union (``anyOf``/``oneOf``) the first choice wins, or ``null`` once the
    schema nests too deep (a recursive model ends there).
    """
    return _instance(schema, schema, text, 0)


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#").strip("/").split("/"):
        if not part:
            continue
        node = (
            node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        )
    return node if isinstance(node, dict) else {}


def _instance(schema: Any, root: dict[str, Any], text: str, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > MAX_INSTANCE_DEPTH:
        return None
    if isinstance(schema.get("$ref"), str):
        return _instance(_resolve(root, schema["$ref"]), root, text, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for union in ("anyOf", "oneOf"):
        choices = schema.get(union)
        if isinstance(choices, list) and choices:
            nullable = [c for c in choices if isinstance(c, dict) and c.get("type") == "null"]
            if nullable and depth >= MAX_INSTANCE_DEPTH // 2:
                return None
            return _instance(choices[0], root, text, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged.update(_resolve(root, part["$ref"]) if "$ref" in part else part)
        return _instance(merged, root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "string":
        return _FORMAT_EXAMPLES.get(str(schema.get("format")), text)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        if isinstance(low, int | float) and not isinstance(low, bool) and low > 0:
            value = low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
            return int(value) if kind == "integer" else value
        return 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    if kind == "array":
        count = schema.get("minItems")
        count = min(count, 16) if isinstance(count, int) and count > 0 else 0
        return [_instance(schema.get("items"), root, text, depth + 1) for _ in range(count)]
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {str(name): _instance(prop, root, text, depth + 1) for name, prop in properties.items()}
