"""Anthropic's Messages API, served by Echo: ``POST /v1/messages`` in front of any provider.

Code written against the Anthropic SDK points its ``base_url`` at Echo and
uses an Echo client key as its API key (the SDK sends it as ``x-api-key``).
The ``model`` routes as on ``/v1/chat/completions`` (``anthropic/claude-...``,
``openai/gpt-4o-mini``, or a bare name for the routing default), through the
ModelManager's retries, failover and circuit breakers. This module is
Anthropic's wire format; the serving (key check, routing, usage) is
``compat.dispatch``'s.

This is the reverse of ``providers.plugins.anthropic_wire``, which speaks
the Messages API to Anthropic: here a Messages body becomes Echo's common
request (system prompt first, ``tool_use`` blocks as tool calls,
``tool_result`` blocks as ``tool`` messages, images as ``image_url`` parts,
``document`` blocks (a base64 PDF, a plain text, a PDF's URL) as document
parts that only a provider declaring ``documents`` is given: anthropic as
they are, openai as text and ``file`` parts; any other refuses the call
with a 400 naming them)
and the common answer becomes a ``message`` (content blocks, ``stop_reason``
mapped back: stop -> end_turn, length -> max_tokens, tool_calls ->
tool_use). The wire module's tables (stop reasons, error types, image
types) are the single source for both directions.

A stream is Anthropic's event sequence: ``message_start``, then per content
block ``content_block_start`` (the first followed by a ``ping``),
``content_block_delta`` (``text_delta`` or one whole ``input_json_delta``
per tool call) and ``content_block_stop``, then ``message_delta`` with the
``stop_reason`` and usage, and ``message_stop``. ``message_start``
reports the input tokens as soon as they are known: the anthropic upstream's
own count (its first chunk's ``input_tokens`` metadata), else Echo's
estimate (``count_tokens.estimate_tokens``, as ``/v1/messages/count_tokens``
gives it); ``message_delta`` carries the provider's final counts, which the
SDK takes over the earlier ones (the estimate stays when a provider reports
none). A failure after the
stream started is an ``error`` event, after which the stream ends.

Errors have Anthropic's shape, ``{"type": "error", "error": {"type",
"message"}}``, with Echo's honest status. A key whose budget is spent gets
429 ``rate_limit_error`` saying so, with ``x-should-retry: false`` so that
the SDK raises ``RateLimitError`` at once, without retrying.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from plugins_api.access.key_budgets import BudgetRefusal
from plugins_api.access.key_limit_headers import anthropic_headers, retry_headers
from plugins_api.access.key_limits import LimitRefusal
from plugins_api.access.request_auth import Denial
from plugins_api.compat.dispatch import (
    ChatCall,
    ChatWire,
    CompatErrors,
    model_label,
    provider_failure,
    serve_chat,
)
from plugins_api.edge.chat_requests import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_NAME_LENGTH,
    MAX_TOOLS,
    MAX_TOP_K,
    RequestFieldError,
    bounded_list,
    bounded_name,
    optional_bool,
    optional_integer,
    optional_string,
    parse_stop,
    parse_thinking,
    reject_upstream_settings,
    required_string,
)
from plugins_api.edge.sse import json_text, sse_event
from providers.errors import ProviderError
from providers.plugins.anthropic_wire import ERROR_TYPE_STATUS, IMAGE_MEDIA_TYPES, STOP_REASONS
from providers.types import (
    DOCUMENT_PART,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    StreamingChunk,
    ToolCall,
    answer_id,
)

#: The longest ``title`` or ``context`` of a document block.
MAX_DOCUMENT_LABEL = 10_000

# The common finish reasons back to Anthropic's stop reasons (the first one
# of STOP_REASONS that maps to each wins: end_turn, max_tokens, tool_use, refusal).
FINISH_TO_STOP_REASON: dict[str, str] = {}
for _stop, _finish in STOP_REASONS.items():
    FINISH_TO_STOP_REASON.setdefault(_finish, _stop)

_STATUS_ERROR_TYPE = {status: kind for kind, status in ERROR_TYPE_STATUS.items()}


# --- errors -------------------------------------------------------------------


def error_type_for(status: int) -> str:
    """Return the Anthropic error type for an HTTP STATUS."""
    if status in _STATUS_ERROR_TYPE:
        return _STATUS_ERROR_TYPE[status]
    if status == 503:
        return "overloaded_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Return Anthropic's error body for STATUS."""
    return {"type": "error", "error": {"type": error_type_for(status), "message": message}}


def anthropic_error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JsonResponse:
    """Return an error response in Anthropic's shape."""
    response = JsonResponse(error_body(status, message), status=status)
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def anthropic_provider_error(exc: ProviderError, *, model: str | None = None) -> JsonResponse:
    """Render provider error EXC in Anthropic's shape, secrets stripped, honest status."""
    status, message, headers = provider_failure(exc, model=model)
    return anthropic_error(status, message, headers)


def anthropic_denial(denial: Denial) -> JsonResponse:
    """Render an authentication failure in Anthropic's shape."""
    message = denial.message
    if denial.is_authentication:
        message += " Anthropic SDK clients send the Echo key as x-api-key."
    return anthropic_error(denial.status, message)


def _field_error(exc: RequestFieldError) -> JsonResponse:
    # Anthropic's own messages read "<field>: <problem>".
    message = f"{exc.field}: {exc.message}" if exc.field else exc.message
    return anthropic_error(400, message)


def anthropic_rate_limited(refusal: LimitRefusal) -> JsonResponse:
    """Render a key's rate-limit refusal as Anthropic does: ``rate_limit_error``, ``retry-after``."""
    headers = {**retry_headers(refusal), **anthropic_headers(refusal.state)}
    return anthropic_error(refusal.status, refusal.message, headers)


def anthropic_budget_exceeded(refusal: BudgetRefusal) -> JsonResponse:
    """Render a key's spent budget in Anthropic's shape: 429 ``rate_limit_error``, no SDK retry."""
    return anthropic_error(refusal.status, refusal.message, refusal.headers())


ANTHROPIC_ERRORS = CompatErrors(
    denial=anthropic_denial,
    field_error=_field_error,
    provider_error=anthropic_provider_error,
    rate_limited=anthropic_rate_limited,
    limit_headers=anthropic_headers,
    budget_exceeded=anthropic_budget_exceeded,
)


# --- requests -----------------------------------------------------------------


def _image_part(block: dict[str, Any], at: str) -> dict[str, Any]:
    """Return an image block as an OpenAI-style ``image_url`` part (a data URL for base64)."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise RequestFieldError(f"{at}.source", "Required: {'type': 'base64' | 'url', ...}.")
    if source.get("type") == "url":
        url = required_string(source, "url", f"{at}.source")
        if not url:
            raise RequestFieldError(f"{at}.source.url", "Must not be empty.")
        return {"type": "image_url", "image_url": {"url": url}}
    if source.get("type") == "base64":
        media_type = source.get("media_type")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise RequestFieldError(
                f"{at}.source.media_type", f"Must be one of: {', '.join(IMAGE_MEDIA_TYPES)}."
            )
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise RequestFieldError(f"{at}.source.data", "Required: the base64 image data.")
        url = f"data:{media_type};base64,{source['data']}"
        return {"type": "image_url", "image_url": {"url": url}}
    raise RequestFieldError(f"{at}.source.type", "Must be 'base64' or 'url'.")


#: Anthropic's document sources Echo takes: their type and the media type each must name.
DOCUMENT_SOURCES = {"base64": "application/pdf", "text": "text/plain", "url": None}
BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _document_part(block: dict[str, Any], at: str) -> dict[str, Any]:
    """Return a ``document`` block (a PDF, or a plain text) as a common document part.

    Checked as Anthropic's reference describes it: ``source`` is base64 PDF
    data, plain text, or a PDF's URL; ``title`` and ``context`` are text.
    ``citations`` cannot be honoured (Echo's answers carry no citations):
    asking for them is refused. ``cache_control`` is Anthropic's caching
    hint, left out as on every block.
    """
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") not in DOCUMENT_SOURCES:
        raise RequestFieldError(
            f"{at}.source",
            "Required: {'type': 'base64', 'media_type': 'application/pdf', 'data'}, "
            "{'type': 'text', 'media_type': 'text/plain', 'data'} or {'type': 'url', 'url'}.",
        )
    kind = source["type"]
    if kind == "url":
        url = required_string(source, "url", f"{at}.source")
        if not url.startswith(("https://", "http://")):
            raise RequestFieldError(f"{at}.source.url", "Must be an http(s) URL of a PDF.")
        checked: dict[str, Any] = {"type": "url", "url": url}
    else:
        media_type = DOCUMENT_SOURCES[kind]
        if source.get("media_type") != media_type:
            raise RequestFieldError(f"{at}.source.media_type", f"Must be {media_type!r}.")
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise RequestFieldError(f"{at}.source.data", "Required: the document's data.")
        if "\x00" in data or (kind == "base64" and not BASE64_TEXT.fullmatch(data)):
            raise RequestFieldError(
                f"{at}.source.data",
                "Must be base64 data." if kind == "base64" else "Must be text without NUL.",
            )
        checked = {"type": kind, "media_type": media_type, "data": data}
    document: dict[str, Any] = {"source": checked}
    for key in ("title", "context"):
        value = optional_string(block, key, at)
        if value is not None:
            if len(value) > MAX_DOCUMENT_LABEL:
                raise RequestFieldError(f"{at}.{key}", f"At most {MAX_DOCUMENT_LABEL} characters.")
            document[key] = value
    citations = block.get("citations")
    if citations is not None:
        enabled = citations.get("enabled") if isinstance(citations, dict) else None
        if not isinstance(enabled, bool | None):
            raise RequestFieldError(f"{at}.citations.enabled", "Must be true or false.")
        if enabled:
            raise RequestFieldError(
                f"{at}.citations",
                "Echo's answers carry no citations: leave citations off for this document.",
            )
    return {"type": DOCUMENT_PART, "document": document}


def _blocks(content: Any, at: str) -> list[dict[str, Any]]:
    """Return CONTENT (a string or at most ``MAX_CONTENT_PARTS`` blocks) as a list of blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RequestFieldError(at, "Must be a string or a list of content blocks with a 'type'.")
    bounded_list(content, at, MAX_CONTENT_PARTS, "content blocks")
    for index, block in enumerate(content):
        if not isinstance(block, dict):
            raise RequestFieldError(f"{at}.{index}", "Must be a content block with a 'type'.")
        if not isinstance(block.get("type"), str):
            raise RequestFieldError(f"{at}.{index}.type", "Required: the block's type.")
    return content


def _text_of(blocks: list[dict[str, Any]], at: str) -> str:
    """Return the text of a list of text blocks (a system prompt, a tool result)."""
    texts = []
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            texts.append(required_string(block, "text", f"{at}.{index}"))
        elif block["type"] == "image":
            # A tool result's image cannot travel as tool text; it is checked, then left out.
            _image_part(block, f"{at}.{index}")
        else:
            raise RequestFieldError(f"{at}.{index}.type", "Only text blocks are accepted here.")
    return "\n\n".join(t for t in texts if t)


def _user_turn(blocks: list[dict[str, Any]], at: str) -> list[ChatMessage]:
    """Return a user turn as common messages: its tool results first, then what the user said."""
    results: list[ChatMessage] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        where = f"{at}.{index}"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": required_string(block, "text", where)})
        elif kind == "image":
            parts.append(_image_part(block, where))
        elif kind == "document":
            parts.append(_document_part(block, where))
        elif kind == "tool_result":
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str) or not tool_use_id:
                raise RequestFieldError(
                    f"{where}.tool_use_id", "Required: the tool_use it answers."
                )
            is_error = block.get("is_error")
            if is_error is not None and not isinstance(is_error, bool):
                raise RequestFieldError(f"{where}.is_error", "Must be true or false.")
            content = _blocks(block.get("content", ""), f"{where}.content")
            text = _text_of(content, f"{where}.content")
            if is_error:
                text = f"Error: {text}"
            results.append(ChatMessage(role="tool", content=text, tool_call_id=tool_use_id))
        else:
            raise RequestFieldError(
                f"{where}.type",
                f"Block type {kind!r} is not supported through Echo "
                "(text, image, document and tool_result are).",
            )
    messages = results
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        content: str | list[dict[str, Any]] = (
            "".join(p["text"] for p in parts) if only_text else parts
        )
        messages.append(ChatMessage(role="user", content=content))
    return messages


def _assistant_turn(blocks: list[dict[str, Any]], at: str) -> ChatMessage:
    """Return an assistant turn as one common message: its text and its tool calls."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(blocks):
        where = f"{at}.{index}"
        kind = block["type"]
        if kind == "text":
            texts.append(required_string(block, "text", where))
        elif kind == "tool_use":
            if not required_string(block, "id", where):
                raise RequestFieldError(f"{where}.id", "Must not be empty.")
            if not required_string(block, "name", where):
                raise RequestFieldError(f"{where}.name", "Must not be empty.")
            tool_input = block.get("input", {})
            if not isinstance(tool_input, dict):
                raise RequestFieldError(f"{where}.input", "Must be an object.")
            calls.append(
                ToolCall(id=block["id"], name=block["name"], arguments=json.dumps(tool_input))
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # another model's reasoning means nothing to the next one
        else:
            raise RequestFieldError(
                f"{where}.type", f"Block type {kind!r} is not supported in assistant turns."
            )
    return ChatMessage(role="assistant", content="".join(texts), tool_calls=calls or None)


def parse_anthropic_messages(raw: Any, system: Any) -> list[ChatMessage]:
    """Return a Messages API ``system`` and ``messages`` as a common conversation.

    At most ``MAX_MESSAGES`` messages of ``MAX_CONTENT_PARTS`` blocks each;
    every field of every block is checked, naming its dotted path.
    """
    messages: list[ChatMessage] = []
    if system is not None:
        text = _text_of(_blocks(system, "system"), "system")
        if text:
            messages.append(ChatMessage(role="system", content=text))
    if not isinstance(raw, list) or not raw:
        raise RequestFieldError("messages", "Must be a non-empty list of messages.")
    bounded_list(raw, "messages", MAX_MESSAGES, "messages")
    for index, message in enumerate(raw):
        at = f"messages.{index}"
        if not isinstance(message, dict):
            raise RequestFieldError(at, "Must be an object with 'role' and 'content'.")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise RequestFieldError(
                f"{at}.role", "Must be 'user' or 'assistant' (the system prompt is 'system')."
            )
        blocks = _blocks(message.get("content"), f"{at}.content")
        if role == "user":
            messages.extend(_user_turn(blocks, f"{at}.content"))
        else:
            messages.append(_assistant_turn(blocks, f"{at}.content"))
    return messages


def parse_anthropic_tools(raw: Any) -> list[dict[str, Any]] | None:
    """Return Anthropic tools (``name``, ``description``, ``input_schema``) as function tools."""
    if raw is None:
        return None
    bounded_list(raw, "tools", MAX_TOOLS, "tools")
    tools = []
    for index, tool in enumerate(raw):
        at = f"tools.{index}"
        if not isinstance(tool, dict):
            raise RequestFieldError(at, "Must be a tool: {'name', 'input_schema', ...}.")
        if not required_string(tool, "name", at):
            raise RequestFieldError(f"{at}.name", "Must not be empty.")
        if tool.get("type") not in (None, "custom") or not isinstance(
            tool.get("input_schema"), dict
        ):
            raise RequestFieldError(
                f"{at}.input_schema",
                "Required: Echo passes on client tools with a JSON schema; "
                "Anthropic's server tools are not available through it.",
            )
        description = optional_string(tool, "description", at)
        function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
        if description:
            function["description"] = description
        tools.append({"type": "function", "function": function})
    return tools or None


def parse_parallel_tool_use(raw: Any) -> bool | None:
    """Return ``parallel_tool_calls`` for Anthropic's ``tool_choice.disable_parallel_tool_use``.

    True disables parallel calls (``False``); false or absent is the default (None).
    """
    if not isinstance(raw, dict):
        return None
    disable = optional_bool(
        raw, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use"
    )
    if disable and raw.get("type") == "none":
        raise RequestFieldError(
            "tool_choice.disable_parallel_tool_use", "Not allowed with tool_choice 'none'."
        )
    return False if disable else None


def parse_anthropic_metadata(raw: Any) -> str | None:
    """Return ``metadata.user_id`` (the common ``user``); any other metadata key is refused."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RequestFieldError("metadata", "Must be an object.")
    unknown = sorted(key for key in raw if key != "user_id")
    if unknown:
        raise RequestFieldError(
            f"metadata.{unknown[0][:MAX_NAME_LENGTH]}",
            "Unknown metadata field: the Messages API takes only 'user_id'.",
        )
    return optional_string(raw, "user_id", "metadata")


def parse_anthropic_tool_choice(raw: Any) -> str | dict[str, Any] | None:
    """Return Anthropic's ``tool_choice`` as the common (OpenAI-style) one."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(raw.get("name"), str) and raw["name"]:
        return {"type": "function", "function": {"name": raw["name"]}}
    raise RequestFieldError(
        "tool_choice", "Must be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', 'name'}."
    )


def _bounded(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise RequestFieldError(key, "Must be a number between 0 and 1.")
    return value


def parse_messages_call(data: dict[str, Any]) -> ChatCall:
    """Return the call a ``/v1/messages`` body describes.

    Read: ``model``, ``max_tokens`` (required, as by Anthropic), ``system``,
    ``messages``, ``stop_sequences``, ``temperature``, ``top_p``, ``top_k``,
    ``tools``, ``tool_choice`` (its ``disable_parallel_tool_use`` becomes
    ``parallel_tool_calls=False``), ``metadata`` (only ``user_id``, the
    common ``user``), ``thinking``, ``stream``. A provider that cannot honour
    one of them refuses the call (400 ``unsupported_option``).
    """
    reject_upstream_settings(data)
    model = bounded_name(data.get("model"), "model", "a model name")
    if model is None or not model.strip():
        raise RequestFieldError("model", "Field required.")
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise RequestFieldError("max_tokens", "Field required.")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestFieldError("max_tokens", "Must be a whole number of at least 1.")
    stop = parse_stop(data.get("stop_sequences"), "stop_sequences", allow_string=False)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestFieldError("stream", "Must be true or false.")
    user = parse_anthropic_metadata(data.get("metadata"))
    request = ChatRequest(
        messages=parse_anthropic_messages(data.get("messages"), data.get("system")),
        model=model.strip(),
        temperature=_bounded(data, "temperature"),
        max_tokens=max_tokens,
        top_p=_bounded(data, "top_p"),
        stop=stop,
        stream=stream,
        tools=parse_anthropic_tools(data.get("tools")),
        tool_choice=parse_anthropic_tool_choice(data.get("tool_choice")),
        parallel_tool_calls=parse_parallel_tool_use(data.get("tool_choice")),
        user=user,
        top_k=optional_integer(data, "top_k", 1, MAX_TOP_K),
        thinking=parse_thinking(data.get("thinking")),
    )
    return ChatCall(request=request, stream=stream)


# --- responses ----------------------------------------------------------------


def message_id() -> str:
    """Return a new id for a message."""
    return f"msg_{answer_id()}"


def stop_reason(finish_reason: str | None, metadata: dict[str, Any]) -> str:
    """Return Anthropic's stop reason for a common FINISH_REASON.

    An answer that came from Anthropic keeps its own (``stop_sequence``,
    ``pause_turn``): the mapping to the common reasons loses them.
    """
    original = metadata.get("stop_reason")
    if original in STOP_REASONS and STOP_REASONS[original] == (finish_reason or "stop"):
        return original
    return FINISH_TO_STOP_REASON.get(finish_reason or "stop", "end_turn")


def tool_input(call: ToolCall) -> dict[str, Any]:
    """Return a tool call's JSON-text arguments as the object ``tool_use.input`` must be."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        value = None
    # A model that wrote broken JSON still made the call; the client sees what it wrote.
    return value if isinstance(value, dict) else {"arguments": call.arguments}


def _tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call)}


def message_body(response: ChatResponse) -> dict[str, Any]:
    """Return RESPONSE as a Messages API ``message``."""
    content: list[dict[str, Any]] = []
    if response.content:
        content.append({"type": "text", "text": response.content})
    content.extend(_tool_use_block(call) for call in response.tool_calls or [])
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model_label(response.provider, response.model),
        "content": content,
        "stop_reason": stop_reason(response.finish_reason, response.metadata),
        "stop_sequence": response.metadata.get("stop_sequence"),
        "usage": {
            "input_tokens": response.usage.prompt_tokens,
            "output_tokens": response.usage.completion_tokens,
        },
    }


_TEXT_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":'
)


class MessageEvents:
    """The Messages API events of one stream (see the module docstring)."""

    def __init__(self, request: ChatRequest | None = None) -> None:
        self.index = 0
        self.text_open = False
        self.pinged = False
        self.request = request
        self.input_tokens = 0

    def _known_input_tokens(self, first: StreamingChunk) -> int:
        """Return the input tokens to report before the end: the provider's, else the estimate."""
        if first.is_final and first.usage is not None:
            return first.usage.prompt_tokens
        told = first.metadata.get("input_tokens")
        if isinstance(told, int) and not isinstance(told, bool) and told >= 0:
            return told
        if self.request is None:
            return 0
        # Imported here: count_tokens is built on this module's parsing.
        from plugins_api.compat.count_tokens import estimate_tokens

        return estimate_tokens(self.request)

    def opening(self, first: StreamingChunk) -> Iterator[bytes]:
        meta = first.metadata
        self.input_tokens = self._known_input_tokens(first)
        message = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model_label(meta.get("provider"), meta.get("model")),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        yield sse_event("message_start", {"message": message})

    def chunk(self, chunk: StreamingChunk) -> Iterable[bytes]:
        if chunk.content and self.text_open and not chunk.tool_calls and not chunk.is_final:
            # Most events of a stream: text for the open block. The bytes
            # ``sse_event`` gives, the event's head written once per block.
            text = json_text(chunk.content)
            if text is None:
                return self._events(chunk)
            return (_TEXT_DELTA % self.index + text + b"}}\n\n",)
        return self._events(chunk)

    def _events(self, chunk: StreamingChunk) -> Iterator[bytes]:
        if chunk.content:
            if not self.text_open:
                yield from self._start({"type": "text", "text": ""})
                self.text_open = True
            delta = {"type": "text_delta", "text": chunk.content}
            yield sse_event("content_block_delta", {"index": self.index, "delta": delta})
        for call in chunk.tool_calls or []:
            if self.text_open:
                yield sse_event("content_block_stop", {"index": self.index})
                self.index, self.text_open = self.index + 1, False
            yield from self._start(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            )
            delta = {"type": "input_json_delta", "partial_json": json.dumps(tool_input(call))}
            yield sse_event("content_block_delta", {"index": self.index, "delta": delta})
            yield sse_event("content_block_stop", {"index": self.index})
            self.index += 1
        if chunk.is_final:
            if self.text_open:
                yield sse_event("content_block_stop", {"index": self.index})
            if not self.pinged:
                yield sse_event("ping", {})
            usage = chunk.usage
            yield sse_event(
                "message_delta",
                {
                    "delta": {
                        "stop_reason": stop_reason(chunk.finish_reason, chunk.metadata),
                        "stop_sequence": chunk.metadata.get("stop_sequence"),
                    },
                    "usage": {
                        "input_tokens": usage.prompt_tokens if usage else self.input_tokens,
                        "output_tokens": usage.completion_tokens if usage else 0,
                    },
                },
            )
            yield sse_event("message_stop", {})

    def failure(self, exc: ProviderError) -> bytes:
        status, message, _ = provider_failure(exc)
        body = error_body(status, message)
        if exc.kind == "shutting_down":
            # Not one of Anthropic's types, said as every Echo stream says it: the
            # SDKs raise on any error event, and the type tells a client to ask again.
            body["error"]["type"] = exc.kind
        return sse_event("error", body)

    def _start(self, block: dict[str, Any]) -> Iterator[bytes]:
        """Open content block BLOCK at the current index (the first one followed by a ``ping``)."""
        yield sse_event("content_block_start", {"index": self.index, "content_block": block})
        if not self.pinged:
            self.pinged = True
            yield sse_event("ping", {})


MESSAGES = ChatWire(
    endpoint="/v1/messages",
    errors=ANTHROPIC_ERRORS,
    parse=parse_messages_call,
    body=message_body,
    stream_format=lambda call: MessageEvents(call.request),
)


# --- view ---------------------------------------------------------------------


@csrf_exempt  # key clients carry no CSRF token; session callers are checked in check_chat_client
@require_POST
async def messages(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Answer ``POST /v1/messages`` as Anthropic does, whole or as its event stream."""
    return await serve_chat(request, MESSAGES)
