"""OpenAI's Responses API, served by Echo: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``.

Code written against the OpenAI SDK's ``client.responses`` points its
``base_url`` at Echo's ``/v1`` and uses an Echo client key. The call is
served like ``/v1/chat/completions`` (``compat.dispatch``'s order: key check,
body, model access, budget and rate limits, the ModelManager's routing,
retries and failover, usage recorded, OpenAI's error shape), in front of any
provider: this module translates the Responses wire format to Echo's common
request and back, and keeps answers for ``previous_response_id``
(``compat.responses_store``).

Read: ``model``, ``input`` (a string, or a list of items: messages whose
content is text or ``input_text`` / ``input_image`` / ``output_text`` parts,
``function_call`` and ``function_call_output`` items; ``reasoning`` items are
skipped, as another model's reasoning means nothing to the next one),
``instructions`` (the system prompt of this call only: as at OpenAI, a
previous response's instructions are not carried over), ``tools`` (function
tools in the Responses shape), ``tool_choice``, ``temperature``, ``top_p``,
``max_output_tokens``, ``stream``, ``store`` (default true),
``previous_response_id``, ``metadata``, ``user``, and ``text.format`` of type
``text``. Everything else (structured ``text.format``, ``reasoning``,
``include``, hosted tools, ``parallel_tool_calls: false``, ``background``,
...) is refused with a 400 naming it, never dropped.

The answer is a ``response`` object: a ``message`` output item with one
``output_text`` part for the text, one ``function_call`` item per tool call,
``usage`` in input/output tokens, ``status`` ``completed`` (or
``incomplete`` with ``incomplete_details.reason: max_output_tokens`` when the
answer was cut by the token limit). ``model`` is ``provider/model`` and the
``x-echo-provider`` / ``x-echo-model`` headers say who answered, as on every
``/v1`` route. A stream is the documented event sequence, each event with
its ``sequence_number``: ``response.created``, ``response.in_progress``, per
item ``response.output_item.added``, then ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done`` for text or
``response.function_call_arguments.delta`` / ``.done`` for a call, and
``response.output_item.done``; last ``response.completed`` (or
``response.incomplete``) with the whole response. A failure after the
stream started is an ``error`` event followed by ``response.failed``.

A stored response (``store`` true, the default) belongs to the key (or the
logged-in user) that created it: ``previous_response_id`` continues it with
the whole conversation sent to the model, ``GET`` returns it, ``DELETE``
removes it; another key's id is a 404. It is stored before the client sees
``response.completed`` (or the JSON answer), so a follow-up never misses it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from plugins_api.access.request_auth import (
    Denial,
    check_chat_client,
    check_model_access,
    route_filter,
)
from plugins_api.compat.dispatch import (
    ChatCall,
    admit,
    answered_by,
    limit,
    model_label,
    provider_failure,
    with_limit_headers,
)
from plugins_api.compat.openai_api import (
    OPENAI_ERRORS,
    openai_denial,
    openai_error,
    openai_field_error,
)
from plugins_api.compat.responses_store import (
    ResponseOwner,
    json_size,
    max_stored_bytes,
    stored_response_delete,
    stored_response_find,
    stored_response_save,
)
from plugins_api.edge.chat_requests import (
    IMAGE_DETAILS,
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_TOOLS,
    RequestFieldError,
    bounded_list,
    bounded_name,
    json_type,
    optional_string,
    reject_upstream_settings,
    required_string,
)
from plugins_api.edge.json_answer import JsonAnswer
from plugins_api.edge.request_usage import RequestUsage, client_label
from plugins_api.edge.sse import (
    StreamRecorder,
    encode_stream,
    event_stream_response,
    first_chunk,
    json_text,
    sse_event,
)
from providers.errors import ProviderError
from providers.runtime import process as runtime
from providers.types import ChatMessage, ChatRequest, ChatResponse, StreamingChunk, ToolCall, Usage

ENDPOINT = "/v1/responses"
#: The longest response id Echo issues or looks up (``resp_`` and 48 hex digits).
MAX_ID_LENGTH = 64
#: OpenAI's bounds on ``metadata``: 16 pairs, keys of 64 and values of 512 characters.
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

#: The fields Echo reads (see the module docstring).
READ_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "max_output_tokens",
        "stream",
        "store",
        "previous_response_id",
        "text",
        "metadata",
        "user",
    }
)
#: Fields accepted only at the value that means what Echo does anyway.
DEFAULT_ONLY_FIELDS: dict[str, tuple[Any, ...]] = {
    "parallel_tool_calls": (True,),  # providers may call several tools at once
    "truncation": ("disabled",),  # a conversation too long for the model is an error
    "background": (False,),
    "include": ([],),
}

#: Content part types per role, as the Responses API names them.
PART_TYPES_BY_ROLE: dict[str, tuple[str, ...]] = {
    "user": ("input_text", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text", "refusal", "input_text"),
}
ROLE_ALIASES = {"developer": "system"}


# --- requests -----------------------------------------------------------------


@dataclass(slots=True)
class ResponsesCall(ChatCall):
    """What a ``/v1/responses`` body asks for, beyond the chat call: what to echo back and store."""

    input_items: list[dict[str, Any]] = field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    metadata: dict[str, str] = field(default_factory=dict)
    max_output_tokens: int | None = None


def _unsupported(data: dict[str, Any]) -> None:
    """Refuse any field Echo does not read, naming it (a null counts as absent)."""
    for key, value in data.items():
        if key in READ_FIELDS or value is None:
            continue
        if key in DEFAULT_ONLY_FIELDS:
            if value in DEFAULT_ONLY_FIELDS[key] and type(value) is type(
                DEFAULT_ONLY_FIELDS[key][0]
            ):
                continue
            allowed = " or ".join(repr(v) for v in DEFAULT_ONLY_FIELDS[key])
            raise RequestFieldError(
                key, f"Echo's /v1/responses supports only {allowed} here; leave it out."
            )
        raise RequestFieldError(
            key, f"Echo's /v1/responses does not support {key!r}; leave it out."
        )


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestFieldError(key, f"Must be a number between {low:g} and {high:g}.")
    return value


def _flag(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestFieldError(key, "Must be true or false.")
    return value


def _text_part(part: dict[str, Any], at: str, key: str = "text") -> dict[str, Any]:
    return {"type": "text", "text": required_string(part, key, at)}


def _image_part(part: dict[str, Any], at: str) -> dict[str, Any]:
    """Return an ``input_image`` part as the common ``image_url`` part, checked."""
    if part.get("file_id") is not None:
        raise RequestFieldError(
            f"{at}.file_id", "Echo keeps no files: send the image as image_url (a URL or data URL)."
        )
    url = required_string(part, "image_url", at)
    if not url:
        raise RequestFieldError(f"{at}.image_url", "Required: the image's URL or data URL.")
    image: dict[str, Any] = {"url": url}
    detail = part.get("detail")
    if detail is not None:
        if detail not in IMAGE_DETAILS:
            raise RequestFieldError(f"{at}.detail", f"Must be one of: {', '.join(IMAGE_DETAILS)}.")
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _content(raw: Any, at: str, role: str) -> str | list[dict[str, Any]]:
    """Return a message item's content (text, or Responses parts) as common content."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise RequestFieldError(
            at, f"Must be a string or a list of content parts, not {json_type(raw)}."
        )
    bounded_list(raw, at, MAX_CONTENT_PARTS, "content parts")
    allowed = PART_TYPES_BY_ROLE[role]
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(raw):
        where = f"{at}.{index}"
        if not isinstance(part, dict):
            raise RequestFieldError(where, "Each content part must be an object with a 'type'.")
        kind = part.get("type")
        if kind not in allowed:
            raise RequestFieldError(
                f"{where}.type", f"A {role} message's parts must be one of: {', '.join(allowed)}."
            )
        if kind == "input_image":
            parts.append(_image_part(part, where))
        elif kind == "refusal":
            parts.append(_text_part(part, where, "refusal"))
        else:
            parts.append(_text_part(part, where))
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _call_id(item: dict[str, Any], at: str) -> str:
    call_id = required_string(item, "call_id", at)
    if not call_id:
        raise RequestFieldError(f"{at}.call_id", "Must not be empty.")
    return call_id


def _function_call(item: dict[str, Any], at: str) -> ToolCall:
    name = required_string(item, "name", at)
    if not name:
        raise RequestFieldError(f"{at}.name", "Must not be empty.")
    arguments = required_string(item, "arguments", at)
    return ToolCall(id=_call_id(item, at), name=name, arguments=arguments or "{}")


def _function_output(item: dict[str, Any], at: str) -> ChatMessage:
    output = item.get("output")
    if isinstance(output, list):
        bounded_list(output, f"{at}.output", MAX_CONTENT_PARTS, "content parts")
        texts = []
        for index, part in enumerate(output):
            where = f"{at}.output.{index}"
            if not isinstance(part, dict) or part.get("type") != "input_text":
                raise RequestFieldError(
                    where, "Echo passes on tool output as text: input_text parts."
                )
            texts.append(required_string(part, "text", where))
        output = "".join(texts)
    elif not isinstance(output, str):
        raise RequestFieldError(f"{at}.output", "Required: the tool's output (a string).")
    return ChatMessage(role="tool", content=output, tool_call_id=_call_id(item, at))


def input_messages(items: list[Any], field_name: str) -> list[ChatMessage]:
    """Return Responses input ITEMS (already a bounded list) as common messages.

    Consecutive ``function_call`` items, and those right after an assistant
    message, become that assistant turn's tool calls. FIELD_NAME is the
    dotted path errors name (``input``).
    """
    messages: list[ChatMessage] = []
    for index, item in enumerate(items):
        at = f"{field_name}.{index}"
        if not isinstance(item, dict):
            raise RequestFieldError(
                at, "Each input item must be an object with a 'type' or 'role'."
            )
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
            if not isinstance(role, str) or role not in PART_TYPES_BY_ROLE:
                raise RequestFieldError(
                    f"{at}.role", "Must be one of: user, assistant, system, developer."
                )
            content = _content(item.get("content"), f"{at}.content", role)
            messages.append(ChatMessage(role=role, content=content))
        elif kind == "function_call":
            call = _function_call(item, at)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
        elif kind == "function_call_output":
            messages.append(_function_output(item, at))
        elif kind == "reasoning":
            continue  # another model's reasoning means nothing to the next one
        else:
            raise RequestFieldError(
                f"{at}.type",
                "Echo reads message, function_call, function_call_output and reasoning items "
                f"(not {kind!r}).",
            )
    return messages


def _input_items(raw: Any) -> list[dict[str, Any]]:
    """Return ``input`` as a list of items (a string is one user message)."""
    if isinstance(raw, str):
        if not raw:
            raise RequestFieldError("input", "Must not be empty.")
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise RequestFieldError("input", "Required: a string or a non-empty list of input items.")
    return bounded_list(raw, "input", MAX_MESSAGES, "input items")


def _tools(raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Return (the tools as sent, the same as common function tools)."""
    if raw is None:
        return [], None
    bounded_list(raw, "tools", MAX_TOOLS, "tools")
    common = []
    for index, tool in enumerate(raw):
        at = f"tools.{index}"
        if not isinstance(tool, dict):
            raise RequestFieldError(at, "Must be a tool: {'type': 'function', 'name', ...}.")
        if tool.get("type") != "function":
            raise RequestFieldError(
                f"{at}.type",
                "Echo passes on function tools only; OpenAI's hosted tools are not available "
                "through it.",
            )
        name = required_string(tool, "name", at)
        if not name:
            raise RequestFieldError(f"{at}.name", "Must not be empty.")
        function: dict[str, Any] = {"name": name}
        description = optional_string(tool, "description", at)
        if description:
            function["description"] = description
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise RequestFieldError(f"{at}.parameters", "Must be a JSON schema object.")
            function["parameters"] = parameters
        strict = tool.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise RequestFieldError(f"{at}.strict", "Must be true or false.")
            function["strict"] = strict
        common.append({"type": "function", "function": function})
    return raw, common or None


def _tool_choice(raw: Any) -> str | dict[str, Any] | None:
    """Return the Responses ``tool_choice`` as the common (chat) one."""
    if raw is None or raw in ("none", "auto", "required"):
        return raw
    if (
        isinstance(raw, dict)
        and raw.get("type") == "function"
        and isinstance(raw.get("name"), str)
        and raw["name"]
    ):
        return {"type": "function", "function": {"name": raw["name"]}}
    raise RequestFieldError(
        "tool_choice", "Must be 'none', 'auto', 'required' or {'type': 'function', 'name'}."
    )


def _text_config(raw: Any) -> None:
    """Accept ``text`` when it asks for plain text, the only format Echo's requests carry."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise RequestFieldError("text", "Must be an object: {'format': {'type': 'text'}}.")
    for key, value in raw.items():
        if key == "format":
            if value is None:
                continue
            if not isinstance(value, dict):
                raise RequestFieldError("text.format", "Must be an object with a 'type'.")
            if value.get("type") != "text":
                raise RequestFieldError(
                    "text.format",
                    "Echo's /v1/responses answers in plain text only ('type': 'text'); "
                    "structured formats are not supported here yet.",
                )
        elif value is not None:
            raise RequestFieldError(f"text.{key}", "Not supported by Echo's /v1/responses.")


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RequestFieldError("metadata", "Must be an object of strings.")
    if len(raw) > MAX_METADATA_KEYS:
        raise RequestFieldError("metadata", f"Must hold at most {MAX_METADATA_KEYS} pairs.")
    for key, value in raw.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise RequestFieldError(
                "metadata", f"Keys must be at most {MAX_METADATA_KEY_CHARS} characters."
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
            raise RequestFieldError(
                f"metadata.{key}",
                f"Must be a string of at most {MAX_METADATA_VALUE_CHARS} characters.",
            )
    return raw


def _response_id_field(data: dict[str, Any]) -> str | None:
    value = data.get("previous_response_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RequestFieldError("previous_response_id", "Must be a response id (a string).")
    if len(value) > MAX_ID_LENGTH:
        raise RequestFieldError(
            "previous_response_id", f"Must be at most {MAX_ID_LENGTH} characters."
        )
    return value


def parse_responses_call(data: dict[str, Any]) -> ResponsesCall:
    """Return the ResponsesCall a ``/v1/responses`` body describes (see the module docstring).

    The request's messages are this call's only (instructions, then input);
    the stored conversation of ``previous_response_id`` is put before them
    once it is loaded (``with_history``).
    """
    reject_upstream_settings(data)
    _unsupported(data)
    model = bounded_name(data.get("model"), "model", "a model name")
    if model is None or not model.strip():
        raise RequestFieldError(
            "model", "Required: a model, as 'provider/model' or a name the default provider knows."
        )
    instructions = optional_string(data, "instructions")
    items = _input_items(data.get("input"))
    messages = input_messages(items, "input")
    if instructions:
        messages.insert(0, ChatMessage(role="system", content=instructions))
    stream = _flag(data, "stream", False)
    max_output_tokens = data.get("max_output_tokens")
    if max_output_tokens is not None and (
        isinstance(max_output_tokens, bool)
        or not isinstance(max_output_tokens, int)
        or max_output_tokens < 1
    ):
        raise RequestFieldError("max_output_tokens", "Must be a whole number of at least 1.")
    tools, common_tools = _tools(data.get("tools"))
    raw_choice = data.get("tool_choice")
    _text_config(data.get("text"))
    request = ChatRequest(
        messages=messages,
        model=model.strip(),
        temperature=_number(data, "temperature", 0, 2),
        max_tokens=max_output_tokens,
        top_p=_number(data, "top_p", 0, 1),
        stream=stream,
        tools=common_tools,
        tool_choice=_tool_choice(raw_choice),
        user=optional_string(data, "user"),
    )
    return ResponsesCall(
        request=request,
        stream=stream,
        input_items=items,
        instructions=instructions,
        previous_response_id=_response_id_field(data),
        store=_flag(data, "store", True),
        tools=tools,
        tool_choice=raw_choice if raw_choice is not None else "auto",
        metadata=_metadata(data.get("metadata")),
        max_output_tokens=max_output_tokens,
    )


def with_history(call: ResponsesCall, history: list[dict[str, Any]]) -> None:
    """Put the stored conversation HISTORY (items) before CALL's own messages.

    Raise ``RequestFieldError`` naming ``previous_response_id`` when the
    whole conversation would be longer than Echo takes.
    """
    if not history:
        return
    if len(history) + len(call.input_items) > MAX_MESSAGES:
        raise RequestFieldError(
            "previous_response_id",
            f"The conversation would exceed {MAX_MESSAGES} items; start a new one.",
        )
    earlier = input_messages(history, "previous_response_id")
    own = call.request.messages
    system = own[:1] if own and call.instructions else []
    call.request.messages = [*system, *earlier, *own[len(system) :]]


# --- responses ----------------------------------------------------------------


def response_id() -> str:
    """Return a new response id, as OpenAI's look (``resp_`` and 48 hex digits)."""
    return f"resp_{secrets.token_hex(24)}"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def usage_body(usage: Usage | None) -> dict[str, Any]:
    """Return common USAGE as the Responses API's ``usage``."""
    usage = usage or Usage()
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def text_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """Return an assistant ``message`` output item holding TEXT."""
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def call_item(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    """Return a ``function_call`` output item for tool call CALL."""
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def _status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def response_body(
    call: ResponsesCall,
    rid: str,
    created_at: int,
    *,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the ``response`` object for CALL, answered (or not yet) by MODEL."""
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete" else None),
        "instructions": call.instructions,
        "max_output_tokens": call.max_output_tokens,
        "metadata": call.metadata,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": call.previous_response_id,
        "store": call.store,
        "temperature": call.request.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": call.tool_choice,
        "tools": call.tools,
        "top_p": call.request.top_p,
        "truncation": "disabled",
        "usage": usage_body(usage) if usage is not None or status != "in_progress" else None,
        "user": call.request.user,
    }


def answer_output(answer: ChatResponse) -> list[dict[str, Any]]:
    """Return a whole answer's output items: its text (if any), then its tool calls."""
    status = _status(answer.finish_reason)
    output = []
    if answer.content or not answer.tool_calls:
        output.append(text_item(_item_id("msg"), answer.content, status))
    output.extend(call_item(_item_id("fc"), call, "completed") for call in answer.tool_calls or [])
    return output


_TEXT_DELTA_HEAD = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
_TEXT_DELTA_TAIL = b',"logprobs":[],"sequence_number":%d}\n\n'


class ResponseEvents:
    """The Responses API events of one stream (see the module docstring).

    The closing ``response.completed`` is not written here: ``response_events``
    writes it once the response is stored, so FINISHED holds the final
    response object when the final chunk went by.
    """

    def __init__(self, call: ResponsesCall, rid: str, created_at: int) -> None:
        self.call = call
        self.rid = rid
        self.created_at = created_at
        self.sequence = 0
        self.model = ""
        self.output: list[dict[str, Any]] = []
        self.text_id: str | None = None
        #: The open text item's pieces, joined when it closes (a long answer is many).
        self.text_parts: list[str] = []
        #: A text delta's bytes before its text, for ``_delta_head_of`` (item id, output index).
        self._delta_head_of: tuple[str, int] | None = None
        self._delta_head = b""
        self.finished: dict[str, Any] | None = None

    def _event(self, name: str, data: dict[str, Any]) -> bytes:
        event = sse_event(name, {**data, "sequence_number": self.sequence})
        self.sequence += 1
        return event

    def _body(self, status: str, usage: Usage | None = None, **extra: Any) -> dict[str, Any]:
        return response_body(
            self.call,
            self.rid,
            self.created_at,
            model=self.model,
            status=status,
            output=list(self.output),
            usage=usage,
            **extra,
        )

    def opening(self, first: StreamingChunk) -> Iterator[bytes]:
        meta = first.metadata
        self.model = model_label(meta.get("provider"), meta.get("model"))
        body = self._body("in_progress")
        yield self._event("response.created", {"response": body})
        yield self._event("response.in_progress", {"response": body})

    def _close_text(self, status: str) -> Iterator[bytes]:
        if self.text_id is None:
            return
        text = "".join(self.text_parts)
        where = {"item_id": self.text_id, "output_index": len(self.output), "content_index": 0}
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        yield self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
        yield self._event("response.content_part.done", {**where, "part": part})
        item = text_item(self.text_id, text, status)
        yield self._event(
            "response.output_item.done", {"output_index": len(self.output), "item": item}
        )
        self.output.append(item)
        self.text_id, self.text_parts = None, []

    def chunk(self, chunk: StreamingChunk) -> Iterable[bytes]:
        if (
            chunk.content
            and self.text_id is not None
            and not chunk.tool_calls
            and not chunk.is_final
        ):
            # Most events of a stream: a text delta of the open item. The bytes
            # ``_event`` gives, the event's head written once per item.
            text = json_text(chunk.content)
            if text is None:
                return self._events(chunk)
            where = (self.text_id, len(self.output))
            if where != self._delta_head_of:
                self._delta_head_of = where
                self._delta_head = (
                    _TEXT_DELTA_HEAD
                    + orjson.dumps(
                        {"item_id": where[0], "output_index": where[1], "content_index": 0}
                    )[1:-1]
                    + b',"delta":'
                )
            self.text_parts.append(chunk.content)
            event = self._delta_head + text + _TEXT_DELTA_TAIL % self.sequence
            self.sequence += 1
            return (event,)
        return self._events(chunk)

    def _events(self, chunk: StreamingChunk) -> Iterator[bytes]:
        if chunk.content:
            if self.text_id is None:
                self.text_id = _item_id("msg")
                item = {**text_item(self.text_id, "", "in_progress"), "content": []}
                index = len(self.output)
                yield self._event(
                    "response.output_item.added", {"output_index": index, "item": item}
                )
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                yield self._event(
                    "response.content_part.added",
                    {
                        "item_id": self.text_id,
                        "output_index": index,
                        "content_index": 0,
                        "part": part,
                    },
                )
            self.text_parts.append(chunk.content)
            yield self._event(
                "response.output_text.delta",
                {
                    "item_id": self.text_id,
                    "output_index": len(self.output),
                    "content_index": 0,
                    "delta": chunk.content,
                    "logprobs": [],
                },
            )
        for call in chunk.tool_calls or []:
            yield from self._close_text("completed")
            yield from self._call(call)
        if chunk.is_final:
            status = _status(chunk.finish_reason)
            yield from self._close_text(status)
            if not self.output:  # an empty answer is still one (empty) message, as whole
                self.output.append(text_item(_item_id("msg"), "", status))
            self.finished = self._body(status, chunk.usage or Usage())

    def _call(self, call: ToolCall) -> Iterator[bytes]:
        item_id, index = _item_id("fc"), len(self.output)
        added = {**call_item(item_id, call, "in_progress"), "arguments": ""}
        yield self._event("response.output_item.added", {"output_index": index, "item": added})
        where = {"item_id": item_id, "output_index": index}
        yield self._event(
            "response.function_call_arguments.delta", {**where, "delta": call.arguments}
        )
        yield self._event(
            "response.function_call_arguments.done", {**where, "arguments": call.arguments}
        )
        item = call_item(item_id, call, "completed")
        yield self._event("response.output_item.done", {"output_index": index, "item": item})
        self.output.append(item)

    def failure(self, exc: ProviderError) -> bytes:
        status, message, _ = provider_failure(exc)
        code = "rate_limit_exceeded" if status == 429 else exc.kind
        error = self._event("error", {"code": code, "message": message, "param": None})
        body = self._body("failed", error={"code": code, "message": message})
        return error + self._event("response.failed", {"response": body})

    def closing(self, stored: bool) -> bytes:
        """Return the last event: the whole response, completed (or incomplete)."""
        assert self.finished is not None
        body = {**self.finished, "store": stored}
        name = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        return self._event(name, {"response": body})


# --- serving ------------------------------------------------------------------


@dataclass(slots=True)
class Turn:
    """One Responses call being served: its id, owner and the conversation stored before it."""

    call: ResponsesCall
    rid: str
    created_at: int
    owner: ResponseOwner
    history: list[dict[str, Any]]

    async def save(self, response: dict[str, Any]) -> bool:
        """Store RESPONSE with the whole conversation, if the call asked to; return whether stored."""
        if not self.call.store:
            return False
        items = [*self.history, *self.call.input_items, *response["output"]]
        return await stored_response_save(
            owner=self.owner,
            response_id=self.rid,
            model=response["model"],
            previous_response_id=self.call.previous_response_id,
            items=items,
            response={**response, "store": True},
        )


async def response_owner(request: HttpRequest) -> ResponseOwner:
    """Return who owns the responses REQUEST stores: its key, else its logged-in user."""
    identity = getattr(request, "client", None)
    if identity is not None:
        return ResponseOwner(key_id=identity.key_id)
    user = await request.auser()
    return ResponseOwner(user_id=user.pk)


def not_found(rid: str, param: str | None = None) -> JsonResponse:
    """Return OpenAI's 404 for a response id this caller has no response under."""
    what = "Previous response" if param else "Response"
    return openai_error(
        404,
        f"{what} with id {rid!r} not found.",
        param=param,
        code="previous_response_not_found" if param else "response_not_found",
    )


async def _history(turn_call: ResponsesCall, owner: ResponseOwner) -> list[dict[str, Any]] | None:
    """Return the stored conversation the call continues ([] for none), or None when not found."""
    if turn_call.previous_response_id is None:
        return []
    found = await stored_response_find(owner=owner, response_id=turn_call.previous_response_id)
    return None if found is None else list(found.items)


async def response_events(
    first: StreamingChunk,
    chunks: AsyncIterator[StreamingChunk],
    form: ResponseEvents,
    turn: Turn,
    recorder: StreamRecorder | None = None,
) -> AsyncIterator[bytes]:
    """Yield the stream's events; store the response, then close it with ``response.completed``."""
    async for event in encode_stream(first, chunks, form, recorder):
        yield event
    if form.finished is not None:
        stored = await turn.save(form.finished)
        yield form.closing(stored)


async def serve_responses(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Answer a ``/v1/responses`` call as ``dispatch.serve_chat`` answers a chat, and store it.

    The same steps in the same order (key, body, model access, budget and
    limits, routing, usage); between the limits and the provider, the
    conversation of ``previous_response_id`` is loaded (a 404 gives the
    call's slot back).
    """
    call = await admit(request, OPENAI_ERRORS, parse_responses_call)
    if isinstance(call, HttpResponse):
        return call
    identity = getattr(request, "client", None)
    checked = check_model_access(identity, call.request)
    if isinstance(checked, Denial):
        return openai_denial(checked)
    call.request = checked
    allow = route_filter(identity)
    admission = await limit(request, OPENAI_ERRORS)
    if isinstance(admission, HttpResponse):
        return admission
    try:
        owner = await response_owner(request)
        history = await _history(call, owner)
        if history is None:
            if admission is not None:
                admission.finish()
            return not_found(call.previous_response_id or "", "previous_response_id")
        with_history(call, history)
        if call.store and json_size([*history, *call.input_items]) > max_stored_bytes():
            raise RequestFieldError(
                "previous_response_id" if history else "input",
                f"The conversation would exceed the {max_stored_bytes()} bytes Echo stores per "
                "response; start a new one, or send store: false.",
            )
    except RequestFieldError as exc:
        if admission is not None:
            admission.finish()
        return openai_field_error(exc)
    except BaseException:
        if admission is not None:
            admission.finish()
        raise
    turn = Turn(
        call=call, rid=response_id(), created_at=int(time.time()), owner=owner, history=history
    )
    usage = RequestUsage(
        client=await client_label(request),
        endpoint=ENDPOINT,
        stream=call.stream,
        admission=admission,
        identity=identity,
    )
    try:
        if not call.stream:
            answer = await runtime.manager.chat_completion(call.request, allow=allow)
            overhead = usage.answered(answer)
        else:
            chunks = runtime.manager.chat_completion_stream(call.request, allow=allow)
            first = await first_chunk(chunks)
            usage.first_chunk()
    except ProviderError as exc:
        usage.failed(exc, model=call.request.model or "")
        return OPENAI_ERRORS.provider_error(exc, model=call.request.model)
    except BaseException:  # cancelled (the client left) or a bug: the slot is given back
        usage.release()
        raise
    if not call.stream:
        body = response_body(
            call,
            turn.rid,
            turn.created_at,
            model=model_label(answer.provider, answer.model),
            status=_status(answer.finish_reason),
            output=answer_output(answer),
            usage=answer.usage,
        )
        body["store"] = await turn.save(body)
        response = JsonAnswer(body)
        answered_by(response, answer.provider, answer.model, overhead)
        with_limit_headers(response, admission, OPENAI_ERRORS)
        return response
    form = ResponseEvents(call, turn.rid, turn.created_at)
    events = response_events(first, chunks, form, turn, usage)
    streamed = event_stream_response(events)
    answered_by(streamed, first.metadata.get("provider"), first.metadata.get("model"))
    with_limit_headers(streamed, admission, OPENAI_ERRORS)
    return streamed


# --- views --------------------------------------------------------------------


@csrf_exempt  # key clients carry no CSRF token; session callers are checked in check_chat_client
@require_POST
async def responses(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Answer ``POST /v1/responses`` as OpenAI does, whole or as its event stream."""
    return await serve_responses(request)


@csrf_exempt  # as above; a session caller's DELETE is CSRF-checked in check_chat_client
@require_http_methods(["GET", "DELETE"])
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponse:
    """Answer ``GET /v1/responses/{id}`` (the stored response) and ``DELETE`` (forget it).

    Only the caller's own responses exist for it; anything else is a 404.
    Resuming a stream (``?stream=true``) is not supported: 400 naming it.
    """
    denial = await check_chat_client(request)
    if denial is not None:
        return openai_denial(denial)
    if request.method == "GET" and request.GET.get("stream") not in (None, "false"):
        return openai_error(400, "Echo cannot replay a response's stream.", param="stream")
    admission = await limit(request, OPENAI_ERRORS, spends=False)
    if isinstance(admission, HttpResponse):
        return admission
    try:
        if len(response_id) > MAX_ID_LENGTH:
            return not_found(response_id[:MAX_ID_LENGTH] + "...")
        owner = await response_owner(request)
        if request.method == "DELETE":
            if not await stored_response_delete(owner=owner, response_id=response_id):
                return not_found(response_id)
            return JsonResponse({"id": response_id, "object": "response", "deleted": True})
        found = await stored_response_find(owner=owner, response_id=response_id)
        if found is None:
            return not_found(response_id)
        return JsonResponse(found.response)
    finally:
        if admission is not None:
            admission.finish()  # a database read: it counts as a request, holds no slot
