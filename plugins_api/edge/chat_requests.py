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
from providers.types import DOCUMENT_PART, ROLES, ChatMessage, ChatRequest, ToolCall

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
    if kind == "file":
        return file_document(raw) or raw
    return raw


#: How OpenAI's ``file`` part carries a PDF: a data URL.
PDF_DATA_URL = "data:application/pdf;base64,"


def file_document(part: dict[str, Any]) -> dict[str, Any] | None:
    """Return an OpenAI ``file`` part holding a PDF's data as a common document part, else None.

    As a document (``providers.types.DOCUMENT_PART``) the PDF reaches
    anthropic as a ``document`` block and openai as the ``file`` part it was,
    and a provider that cannot read documents refuses it. A ``file_id``
    (a file in OpenAI's storage) stays a ``file`` part, for openai alone.
    """
    file = part["file"]
    data = file.get("file_data")
    if not isinstance(data, str) or not data.startswith(PDF_DATA_URL):
        return None
    document: dict[str, Any] = {
        "source": {
            "type": "base64",
            "media_type": "application/pdf",
            "data": data[len(PDF_DATA_URL) :],
        }
    }
    if file.get("filename"):
        document["title"] = file["filename"]
    return {"type": DOCUMENT_PART, "document": document}


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


# --- request options (``/chat`` and ``/v1/chat/completions``) ----------------------

#: Entries of ``logit_bias`` (OpenAI takes at most 300).
MAX_LOGIT_BIAS = 300
#: ``top_logprobs`` OpenAI returns at most.
MAX_TOP_LOGPROBS = 20
#: How deep a ``response_format`` JSON schema may nest, and how many values it may hold.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_NODES = 10_000
#: ``seed`` is a 64-bit signed integer upstream.
SEED_RANGE = (-(2**63), 2**63 - 1)
#: ``top_k``: far above any vocabulary a sampler would cut to.
MAX_TOP_K = 1_000_000
#: A ``json_schema`` name, as OpenAI requires it.
SCHEMA_NAME_LENGTH = 64
#: Thinking budgets (Anthropic requires at least 1,024 tokens).
MIN_THINKING_BUDGET = 1_024
MAX_THINKING_BUDGET = 1_000_000


def optional_bool(data: Mapping[str, Any], key: str, field: str | None = None) -> bool | None:
    """Return DATA[KEY] (None when absent or null), which must be true or false."""
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise RequestFieldError(field or key, "Must be true or false.")
    return value


def optional_integer(
    data: Mapping[str, Any], key: str, low: int, high: int, field: str | None = None
) -> int | None:
    """Return DATA[KEY] (None when absent or null), a whole number from LOW to HIGH."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestFieldError(field or key, "Must be a whole number.")
    if not low <= value <= high:
        raise RequestFieldError(field or key, f"Must be between {low} and {high}.")
    return value


def _schema_bounds(schema: Any, field: str) -> None:
    """Refuse a JSON schema deeper than ``MAX_SCHEMA_DEPTH`` or larger than ``MAX_SCHEMA_NODES``."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise RequestFieldError(field, f"Must hold at most {MAX_SCHEMA_NODES} values.")
        if depth > MAX_SCHEMA_DEPTH:
            raise RequestFieldError(field, f"Must nest at most {MAX_SCHEMA_DEPTH} levels deep.")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def parse_response_format(raw: Any, field: str = "response_format") -> dict[str, Any] | None:
    """Return a ``response_format`` in OpenAI's shape, every field checked.

    ``{"type": "text"}``, ``{"type": "json_object"}`` or ``{"type":
    "json_schema", "json_schema": {"name", "schema"?, "strict"?,
    "description"?}}``, the schema an object bounded in depth and size.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RequestFieldError(field, "Must be an object with a 'type'.")
    kind = raw.get("type")
    if kind in ("text", "json_object"):
        if set(raw) - {"type"}:
            extra = sorted(set(raw) - {"type"})[0]
            raise RequestFieldError(f"{field}.{extra}", f"Unknown field for type {kind!r}.")
        return raw
    if kind != "json_schema":
        raise RequestFieldError(f"{field}.type", "Must be 'text', 'json_object' or 'json_schema'.")
    spec = raw.get("json_schema")
    at = f"{field}.json_schema"
    if not isinstance(spec, dict):
        raise RequestFieldError(at, "Required: an object with 'name' and 'schema'.")
    name = spec.get("name")
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= SCHEMA_NAME_LENGTH
        or not all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    ):
        raise RequestFieldError(
            f"{at}.name",
            f"Required: 1 to {SCHEMA_NAME_LENGTH} letters, digits, '_' or '-'.",
        )
    optional_string(spec, "description", at)
    optional_bool(spec, "strict", f"{at}.strict")
    schema = spec.get("schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise RequestFieldError(f"{at}.schema", "Must be a JSON schema object.")
        _schema_bounds(schema, f"{at}.schema")
    unknown = sorted(set(spec) - {"name", "description", "schema", "strict"})
    if unknown:
        raise RequestFieldError(f"{at}.{unknown[0]}", "Unknown field.")
    return raw


def parse_logit_bias(raw: Any, field: str = "logit_bias") -> dict[str, float] | None:
    """Return a ``logit_bias``: at most 300 token ids (as strings) to numbers from -100 to 100."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RequestFieldError(field, "Must be an object of token ids to biases.")
    if len(raw) > MAX_LOGIT_BIAS:
        raise RequestFieldError(field, f"Must hold at most {MAX_LOGIT_BIAS} entries.")
    for token, bias in raw.items():
        if not (token.isascii() and token.isdigit() and len(token) <= 10):
            raise RequestFieldError(field, "Each key must be a token id (digits, as a string).")
        if not _is_number(bias) or not -100 <= bias <= 100:
            raise RequestFieldError(f"{field}.{token}", "Must be a number between -100 and 100.")
    return raw or None


def parse_thinking(raw: Any, field: str = "thinking") -> dict[str, Any] | None:
    """Return Anthropic's ``thinking``: ``{"type": "enabled", "budget_tokens"}`` or ``{"type": "disabled"}``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RequestFieldError(field, "Must be an object with a 'type'.")
    kind = raw.get("type")
    if kind == "disabled":
        allowed = {"type"}
    elif kind == "enabled":
        allowed = {"type", "budget_tokens"}
        budget = raw.get("budget_tokens")
        if budget is None:
            raise RequestFieldError(f"{field}.budget_tokens", "Required: a whole number.")
        optional_integer(
            raw,
            "budget_tokens",
            MIN_THINKING_BUDGET,
            MAX_THINKING_BUDGET,
            f"{field}.budget_tokens",
        )
    else:
        raise RequestFieldError(f"{field}.type", "Must be 'enabled' or 'disabled'.")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise RequestFieldError(f"{field}.{unknown[0]}", "Unknown field.")
    return raw


def parse_openai_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ``ChatRequest`` options of an OpenAI-shaped body, every value checked.

    Read: ``response_format``, ``seed``, ``presence_penalty``,
    ``frequency_penalty``, ``logprobs``, ``top_logprobs`` (needs
    ``logprobs``), ``logit_bias``, ``parallel_tool_calls``, ``user``, and
    the common ones OpenAI lacks, ``top_k`` and ``thinking``. Whether the
    provider honours them is the router's question, not the parser's.
    """
    logprobs = optional_bool(data, "logprobs")
    top_logprobs = optional_integer(data, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top_logprobs is not None and logprobs is not True:
        raise RequestFieldError("top_logprobs", "Requires 'logprobs': true.")
    return {
        "response_format": parse_response_format(data.get("response_format")),
        "seed": optional_integer(data, "seed", *SEED_RANGE),
        "presence_penalty": _optional_number(data, "presence_penalty", -2, 2),
        "frequency_penalty": _optional_number(data, "frequency_penalty", -2, 2),
        "logprobs": logprobs,
        "top_logprobs": top_logprobs,
        "logit_bias": parse_logit_bias(data.get("logit_bias")),
        "parallel_tool_calls": optional_bool(data, "parallel_tool_calls"),
        "user": optional_string(data, "user"),
        "top_k": optional_integer(data, "top_k", 1, MAX_TOP_K),
        "thinking": parse_thinking(data.get("thinking")),
    }


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
    ``temperature``, ``max_tokens``, ``top_p``, ``stop`` and the options
    ``parse_openai_options`` reads (``response_format``, ``seed``, ...).
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
        **parse_openai_options(data),
    )
    return ChatCall(request=request, provider=provider, stream=stream)
