"""Parse the body of ``POST /chat`` into a ChatRequest, naming the field of any mistake."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from providers.types import ROLES, ChatMessage, ChatRequest, ToolCall


class RequestFieldError(ValueError):
    """A request body is wrong; FIELD is the dotted path of the culprit."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(slots=True)
class ChatCall:
    """What a chat call asks for: the request, the provider (None: routing) and streaming."""

    request: ChatRequest
    provider: str | None
    stream: bool


def parse_json(body: bytes) -> dict[str, Any]:
    """Return BODY as a JSON object, or raise ``RequestFieldError``."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestFieldError(None, f"The body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise RequestFieldError(None, "The body must be a JSON object.")
    return data


def _optional(data: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise RequestFieldError(key, f"Must be {what}.")
    if not isinstance(value, kinds):
        raise RequestFieldError(key, f"Must be {what}.")
    return value


def parse_message(raw: Any, path: str) -> ChatMessage:
    """Return one message of a ``messages`` list."""
    if not isinstance(raw, dict):
        raise RequestFieldError(path, "Each message must be an object with 'role' and 'content'.")
    role = raw.get("role")
    if role not in ROLES:
        raise RequestFieldError(f"{path}.role", f"Must be one of: {', '.join(ROLES)}.")
    content = raw.get("content", "")
    if content is None:
        content = ""
    if not isinstance(content, str | list):
        raise RequestFieldError(f"{path}.content", "Must be a string or a list of content parts.")
    if isinstance(content, list) and not all(isinstance(p, dict) and "type" in p for p in content):
        raise RequestFieldError(
            f"{path}.content", "Each content part must be an object with a 'type'."
        )
    tool_calls = None
    if raw.get("tool_calls") is not None:
        if not isinstance(raw["tool_calls"], list):
            raise RequestFieldError(f"{path}.tool_calls", "Must be a list.")
        tool_calls = []
        for index, call in enumerate(raw["tool_calls"]):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise RequestFieldError(
                    f"{path}.tool_calls.{index}",
                    "Must be {'id', 'function': {'name', 'arguments'}}.",
                )
            tool_calls.append(
                ToolCall(
                    id=str(call.get("id", "")),
                    name=function["name"],
                    arguments=str(function.get("arguments", "{}")),
                )
            )
    return ChatMessage(
        role=role,
        content=content,
        name=raw.get("name") if isinstance(raw.get("name"), str) else None,
        tool_calls=tool_calls,
        tool_call_id=raw.get("tool_call_id") if isinstance(raw.get("tool_call_id"), str) else None,
    )


# Upstream settings belong to the provider's configuration, set by admins:
# a client that could pass them could aim Echo's keys at any host.
CLIENT_FORBIDDEN_FIELDS = (
    "base_url",
    "api_base",
    "api_key",
    "headers",
    "extra_headers",
    "organization",
    "api_version",
)


def parse_chat_call(data: dict[str, Any]) -> ChatCall:
    """Return the ChatCall a ``/chat`` body describes.

    The body has ``prompt`` (a string, optionally with ``system``) or
    ``messages`` (a list), plus optional ``provider``, ``model``, ``stream``,
    ``temperature``, ``max_tokens``, ``top_p`` and ``stop``.
    """
    for forbidden in CLIENT_FORBIDDEN_FIELDS:
        if forbidden in data:
            raise RequestFieldError(
                forbidden, "Clients cannot set upstream settings; an admin configures the provider."
            )
    prompt = data.get("prompt")
    raw_messages = data.get("messages")
    if prompt is not None and raw_messages is not None:
        raise RequestFieldError("messages", "Send either 'prompt' or 'messages', not both.")
    if raw_messages is not None:
        if not isinstance(raw_messages, list) or not raw_messages:
            raise RequestFieldError("messages", "Must be a non-empty list of messages.")
        messages = [parse_message(m, f"messages.{i}") for i, m in enumerate(raw_messages)]
    elif prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestFieldError("prompt", "Must be a non-empty string.")
        messages = []
        system = _optional(data, "system", (str,), "a string")
        if system:
            messages.append(ChatMessage(role="system", content=system))
        messages.append(ChatMessage(role="user", content=prompt))
    else:
        raise RequestFieldError("prompt", "Send 'prompt' (a string) or 'messages' (a list).")

    provider = _optional(data, "provider", (str,), "a provider name")
    model = _optional(data, "model", (str,), "a model name")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestFieldError("stream", "Must be true or false.")
    temperature = _optional(data, "temperature", (int, float), "a number")
    if temperature is not None and not 0 <= temperature <= 2:
        raise RequestFieldError("temperature", "Must be between 0 and 2.")
    top_p = _optional(data, "top_p", (int, float), "a number")
    if top_p is not None and not 0 <= top_p <= 1:
        raise RequestFieldError("top_p", "Must be between 0 and 1.")
    max_tokens = _optional(data, "max_tokens", (int,), "a whole number")
    if max_tokens is not None and max_tokens < 1:
        raise RequestFieldError("max_tokens", "Must be at least 1.")
    stop = data.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise RequestFieldError("stop", "Must be a string or a list of strings.")
    request = ChatRequest(
        messages=messages,
        model=model or None,
        temperature=temperature,
        max_tokens=max_tokens,
        top_p=top_p,
        stop=stop,
        stream=stream,
    )
    return ChatCall(request=request, provider=provider or None, stream=stream)
