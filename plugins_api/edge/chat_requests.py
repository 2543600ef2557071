"""Parse chat request bodies at the edge, naming the field of any mistake.

``POST /chat`` and ``POST /v1/chat/completions`` share OpenAI's message
shape, so one set of validators here serves both (``/v1/messages`` builds
on the small ones for its own block shapes, and the websocket may reuse any
of them). Every field a provider will read is checked, to its full dotted
path (``messages.0.content.0.text``): a plugin then gets only well-formed
requests. A wrong type that reached a plugin used to crash it, and the crash
counted against the provider's circuit breaker, so one client could pause a
provider for every other client.

Sizes a request could otherwise make unbounded are capped by the ``MAX_*``
constants below, far above what a real client sends: the body's byte limit
bounds the total, these bound the number of things a provider, a log line or
a metric label would have to handle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from plugins_api.edge.bounded_json import JsonInputError, loads_bounded
from providers.types import ROLES, ChatMessage, ChatRequest, ToolCall

#: Messages in one request (long agent conversations reach a few hundred).
MAX_MESSAGES = 10_000
#: Content parts (or blocks) in one message.
MAX_CONTENT_PARTS = 1_000
#: Tool calls in one assistant message.
MAX_TOOL_CALLS = 1_000
#: Tools offered in one request (OpenAI takes at most 128).
MAX_TOOLS = 512
#: Stop sequences in one request (OpenAI takes at most 4).
MAX_STOP_SEQUENCES = 64
#: Characters in a model or provider name: they become log fields and labels.
MAX_NAME_LENGTH = 200

#: The content part types each role may send, as OpenAI takes them.
PART_TYPES_BY_ROLE: dict[str, tuple[str, ...]] = {
    "system": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}

IMAGE_DETAILS = ("auto", "low", "high")

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
    """Return BODY as a JSON object, or raise ``RequestFieldError``.

    The body is parsed with bounds (``loads_bounded``): too deep, or holding
    a NUL or a lone surrogate, it is refused naming the field.
    """
    try:
        data = loads_bounded(body or b"null")
    except JsonInputError as exc:
        raise RequestFieldError(exc.field, exc.message) from None
    if not isinstance(data, dict):
        raise RequestFieldError(None, "The body must be a JSON object.")
    return data


# --- small checks, shared by every chat endpoint ---------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_type(value: Any) -> str:
    """Return the JSON name of VALUE's type, for messages ("a number", "an object")."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else "a string"


def required_string(container: Mapping[str, Any], key: str, path: str) -> str:
    """Return CONTAINER[KEY], which must be a string; PATH names the container."""
    value = container.get(key)
    if value is None:
        raise RequestFieldError(f"{path}.{key}", "Required: a string.")
    if not isinstance(value, str):
        raise RequestFieldError(f"{path}.{key}", f"Must be a string, not {json_type(value)}.")
    return value


def optional_string(container: Mapping[str, Any], key: str, path: str | None = None) -> str | None:
    """Return CONTAINER[KEY] (None when absent or null), which must be a string."""
    value = container.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestFieldError(f"{path}.{key}" if path else key, "Must be a string.")
    return value


def bounded_name(value: Any, field: str, what: str) -> str | None:
    """Return VALUE, a model or provider name (None when null or empty), or raise.

    Names are capped at ``MAX_NAME_LENGTH``: they end up in logs and metric
    labels, so a megabyte name is refused here, never echoed back.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestFieldError(field, f"Must be {what} (a string).")
    if len(value) > MAX_NAME_LENGTH:
        raise RequestFieldError(field, f"Must be at most {MAX_NAME_LENGTH} characters.")
    return value or None


def bounded_list(value: Any, field: str, limit: int, what: str) -> list[Any]:
    """Return VALUE, which must be a list of at most LIMIT WHAT."""
    if not isinstance(value, list):
        raise RequestFieldError(field, f"Must be a list of {what}.")
    if len(value) > limit:
        raise RequestFieldError(field, f"Must hold at most {limit} {what}.")
    return value


def parse_stop(value: Any, field: str = "stop", *, allow_string: bool = True) -> list[str] | None:
    """Return the stop sequences VALUE gives (a list of strings, or one string if ALLOW_STRING)."""
    if value is None:
        return None
    if allow_string and isinstance(value, str):
        return [value]
    what = "a string or a list of strings" if allow_string else "a list of strings"
    if not isinstance(value, list):
        raise RequestFieldError(field, f"Must be {what}.")
    bounded_list(value, field, MAX_STOP_SEQUENCES, "stop sequences")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestFieldError(f"{field}.{index}", "Must be a string.")
    return value or None


def reject_upstream_settings(data: Mapping[str, Any]) -> None:
    """Refuse a body that tries to set one of ``CLIENT_FORBIDDEN_FIELDS``."""
    for forbidden in CLIENT_FORBIDDEN_FIELDS:
        if forbidden in data:
            raise RequestFieldError(
                forbidden, "Clients cannot set upstream settings; an admin configures the provider."
            )


# --- OpenAI's message shape (``/chat`` and ``/v1/chat/completions``) ---------------


def _object(value: Any, path: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestFieldError(path, f"Required: {what}.")
    return value


def _image_url_part(part: dict[str, Any], path: str) -> None:
    image = part.get("image_url")
    if isinstance(image, str) and image:
        return  # the shorthand some clients send; the wire formats expand it
    image = _object(image, f"{path}.image_url", "an object with 'url'")
    url = image.get("url")
    if not isinstance(url, str) or not url:
        raise RequestFieldError(f"{path}.image_url.url", "Required: the image's URL (a string).")
    detail = image.get("detail")
    if detail is not None and detail not in IMAGE_DETAILS:
        raise RequestFieldError(
            f"{path}.image_url.detail", f"Must be one of: {', '.join(IMAGE_DETAILS)}."
        )


def _input_audio_part(part: dict[str, Any], path: str) -> None:
    audio = _object(part.get("input_audio"), f"{path}.input_audio", "an object with 'data'")
    required_string(audio, "data", f"{path}.input_audio")
    required_string(audio, "format", f"{path}.input_audio")


def _file_part(part: dict[str, Any], path: str) -> None:
    file = _object(part.get("file"), f"{path}.file", "an object with 'file_data' or 'file_id'")
    for key in ("file_data", "file_id", "filename"):
        optional_string(file, key, f"{path}.file")
    if file.get("file_data") is None and file.get("file_id") is None:
        raise RequestFieldError(f"{path}.file", "Required: 'file_data' or 'file_id'.")


def _text_part(part: dict[str, Any], path: str) -> None:
    required_string(part, "text", path)


def _refusal_part(part: dict[str, Any], path: str) -> None:
    required_string(part, "refusal", path)


_PART_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "text": _text_part,
    "refusal": _refusal_part,
    "image_url": _image_url_part,
    "input_audio": _input_audio_part,
    "file": _file_part,
}


def parse_content_part(raw: Any, path: str, role: str) -> dict[str, Any]:
    """Return one content part of a ROLE message, every field checked."""
    if not isinstance(raw, dict):
        raise RequestFieldError(path, "Each content part must be an object with a 'type'.")
    allowed = PART_TYPES_BY_ROLE[role]
    kind = raw.get("type")
    if kind not in allowed:
        raise RequestFieldError(
            f"{path}.type", f"A {role} message's parts must be one of: {', '.join(allowed)}."
        )
    _PART_CHECKS[kind](raw, path)
    return raw


def parse_content(raw: Any, path: str, role: str) -> str | list[dict[str, Any]]:
    """Return a message's content: text, or a list of content parts (null: empty text)."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise RequestFieldError(path, "Must be a string or a list of content parts.")
    bounded_list(raw, path, MAX_CONTENT_PARTS, "content parts")
    return [parse_content_part(part, f"{path}.{index}", role) for index, part in enumerate(raw)]


def parse_tool_call(raw: Any, path: str) -> ToolCall:
    """Return one of an assistant message's ``tool_calls``."""
    call = _object(raw, path, "{'id', 'type': 'function', 'function': {'name', 'arguments'}}")
    if call.get("type", "function") != "function":
        raise RequestFieldError(f"{path}.type", "Must be 'function'.")
    call_id = required_string(call, "id", path)
    function = _object(call.get("function"), f"{path}.function", "{'name', 'arguments'}")
    name = required_string(function, "name", f"{path}.function")
    if not name:
        raise RequestFieldError(f"{path}.function.name", "Must not be empty.")
    arguments = optional_string(function, "arguments", f"{path}.function")
    return ToolCall(id=call_id, name=name, arguments="{}" if arguments is None else arguments)


def parse_message(
    raw: Any, path: str, *, role_aliases: Mapping[str, str] | None = None
) -> ChatMessage:
    """Return one message of a ``messages`` list, every field checked.

    ROLE_ALIASES maps other names of a role onto Echo's (``developer``:
    ``system`` for OpenAI's API).
    """
    if not isinstance(raw, dict):
        raise RequestFieldError(path, "Each message must be an object with 'role' and 'content'.")
    aliases = role_aliases or {}
    role = raw.get("role")
    if isinstance(role, str):
        role = aliases.get(role, role)
    if role not in ROLES:
        raise RequestFieldError(f"{path}.role", f"Must be one of: {', '.join((*ROLES, *aliases))}.")
    content = parse_content(raw.get("content"), f"{path}.content", role)
    name = optional_string(raw, "name", path)
    tool_call_id = optional_string(raw, "tool_call_id", path)
    if role == "tool" and not tool_call_id:
        raise RequestFieldError(f"{path}.tool_call_id", "Required: the tool call it answers.")
    tool_calls = None
    if raw.get("tool_calls") is not None:
        raw_calls = bounded_list(raw["tool_calls"], f"{path}.tool_calls", MAX_TOOL_CALLS, "calls")
        if raw_calls and role != "assistant":
            raise RequestFieldError(f"{path}.tool_calls", "Only assistant messages call tools.")
        tool_calls = [
            parse_tool_call(call, f"{path}.tool_calls.{index}")
            for index, call in enumerate(raw_calls)
        ] or None
    return ChatMessage(
        role=role,
        content=content,
        name=name,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
    )


def parse_messages(
    raw: Any, field: str = "messages", *, role_aliases: Mapping[str, str] | None = None
) -> list[ChatMessage]:
    """Return a non-empty ``messages`` list of at most ``MAX_MESSAGES``, every message checked."""
    if not isinstance(raw, list) or not raw:
        raise RequestFieldError(field, "Must be a non-empty list of messages.")
    bounded_list(raw, field, MAX_MESSAGES, "messages")
    return [
        parse_message(message, f"{field}.{index}", role_aliases=role_aliases)
        for index, message in enumerate(raw)
    ]


# --- ``POST /chat`` ----------------------------------------------------------------


def _optional_number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise RequestFieldError(key, "Must be a number.")
    if not low <= value <= high:
        raise RequestFieldError(key, f"Must be between {low:g} and {high:g}.")
    return value


def parse_chat_call(data: dict[str, Any]) -> ChatCall:
    """Return the ChatCall a ``/chat`` body describes.

    The body has ``prompt`` (a string, optionally with ``system``) or
    ``messages`` (a list), plus optional ``provider``, ``model``, ``stream``,
    ``temperature``, ``max_tokens``, ``top_p`` and ``stop``.
    """
    reject_upstream_settings(data)
    prompt = data.get("prompt")
    raw_messages = data.get("messages")
    if prompt is not None and raw_messages is not None:
        raise RequestFieldError("messages", "Send either 'prompt' or 'messages', not both.")
    if raw_messages is not None:
        messages = parse_messages(raw_messages)
    elif prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestFieldError("prompt", "Must be a non-empty string.")
        messages = []
        system = optional_string(data, "system")
        if system:
            messages.append(ChatMessage(role="system", content=system))
        messages.append(ChatMessage(role="user", content=prompt))
    else:
        raise RequestFieldError("prompt", "Send 'prompt' (a string) or 'messages' (a list).")

    provider = bounded_name(data.get("provider"), "provider", "a provider name")
    model = bounded_name(data.get("model"), "model", "a model name")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestFieldError("stream", "Must be true or false.")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise RequestFieldError("max_tokens", "Must be a whole number of at least 1.")
    request = ChatRequest(
        messages=messages,
        model=model,
        temperature=_optional_number(data, "temperature", 0, 2),
        max_tokens=max_tokens,
        top_p=_optional_number(data, "top_p", 0, 1),
        stop=parse_stop(data.get("stop")),
        stream=stream,
    )
    return ChatCall(request=request, provider=provider, stream=stream)
