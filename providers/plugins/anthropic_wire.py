"""Anthropic's Messages API wire format, as pure functions over plain data.

Echo's common shape is OpenAI-like (``providers.types``); the Messages API
differs in ways that matter: the system prompt is a top-level ``system``
field, not a message; ``max_tokens`` is required; roles must alternate
between ``user`` and ``assistant``; tool calls are ``tool_use`` content
blocks and their results ``tool_result`` blocks inside a *user* message;
images are ``image`` blocks with a ``base64`` or ``url`` source; and a
stream is a sequence of typed Server-Sent Events (``message_start``,
``content_block_start``/``_delta``/``_stop``, ``message_delta``,
``message_stop``, ``ping``, ``error``).

Options (``ChatRequest``) translate as follows: ``top_k`` and ``thinking``
are Anthropic's own and pass as they are; ``user`` is ``metadata.user_id``;
``parallel_tool_calls: false`` is ``tool_choice.disable_parallel_tool_use``;
``response_format`` ``json_schema`` becomes a tool whose ``input_schema`` is
the schema, forced with ``tool_choice`` ``{"type": "tool", "name": ...}``,
and ``json_object`` the same with a free object schema (the tool is named
``json_object``). The forced tool's ``tool_use`` input is returned as the
answer's TEXT (JSON), whole or streamed, never as a tool call. Thinking
blocks (``thinking``, ``redacted_thinking`` and their deltas) are dropped:
the common shape has no place for them, so the answer is the text after
the thinking.

Nothing here does I/O, so every translation is tested on recorded JSON.
Untranslatable input raises ``BadRequestError``; an answer that breaks the
protocol raises ``WireFormatError``; an ``error`` event in a stream raises
``UpstreamErrorEvent`` with the HTTP status of its type. The provider calls
these through ``HTTPProvider.wire_call``, which types and names those errors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from providers.errors import BadRequestError
from providers.http_provider import UpstreamErrorEvent, WireFormatError
from providers.types import (
    DOCUMENT_PART,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    StreamingChunk,
    ToolCall,
    Usage,
)

MESSAGES_PATH = "/v1/messages"
MODELS_PATH = "/v1/models"

# The common finish reasons are OpenAI's; Anthropic's stop reasons map onto them.
STOP_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The HTTP status each documented error type stands for, so that an error
# that arrives inside a stream (with HTTP 200) is mapped like its HTTP twin.
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DATA_URL = re.compile(
    r"^data:(?P<media>[\w.+-]+/[\w.+-]+)(?P<params>(;[^,;]*)*),(?P<data>.*)$", re.S
)


def finish_reason(stop_reason: str | None) -> str:
    """Return the common finish reason for Anthropic's STOP_REASON."""
    return STOP_REASONS.get(stop_reason or "", "stop")


def status_for_error_type(error_type: str | None) -> int:
    """Return the HTTP status Anthropic documents for ERROR_TYPE (500 when unknown)."""
    return ERROR_TYPE_STATUS.get(error_type or "", 500)


# --- requests ----------------------------------------------------------------


def build_request(
    request: ChatRequest, *, model: str, default_max_tokens: int, stream: bool = False
) -> dict[str, Any]:
    """Return the Messages API body for REQUEST.

    ``max_tokens`` is required by the API: the request's own value wins,
    DEFAULT_MAX_TOKENS (the provider's setting) fills in when it has none.
    """
    system, messages = translate_messages(request.messages)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.top_k is not None:
        body["top_k"] = request.top_k
    if request.thinking is not None:
        body["thinking"] = dict(request.thinking)
    if request.tools:
        body["tools"] = [translate_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = translate_tool_choice(request.tool_choice)
    structured = structured_tool(request)
    if structured is not None:
        _force_structured_tool(body, request, structured)
    if request.parallel_tool_calls is False and body.get("tools"):
        choice = body.setdefault("tool_choice", {"type": "auto"})
        if choice.get("type") != "none":
            choice["disable_parallel_tool_use"] = True
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if stream:
        body["stream"] = True
    return body


#: The tool a ``json_object`` answer is forced through: any JSON object.
JSON_OBJECT_TOOL = "json_object"


def structured_tool(request: ChatRequest) -> dict[str, Any] | None:
    """Return the Anthropic tool that carries REQUEST's ``response_format``, or None for text."""
    response_format = request.response_format
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {
            "name": JSON_OBJECT_TOOL,
            "description": "Give your whole answer as this tool's input: one JSON object.",
            "input_schema": {"type": "object", "additionalProperties": True},
        }
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else {"type": "object"}
    tool: dict[str, Any] = {
        "name": str(spec.get("name") or "json_schema"),
        "description": str(
            spec.get("description") or "Give your whole answer as this tool's input."
        ),
        "input_schema": schema,
    }
    return tool


def structured_tool_name(request: ChatRequest) -> str | None:
    """Return the name of the tool carrying REQUEST's ``response_format``, or None."""
    tool = structured_tool(request)
    return tool["name"] if tool is not None else None


def _force_structured_tool(
    body: dict[str, Any], request: ChatRequest, tool: dict[str, Any]
) -> None:
    """Add TOOL to BODY and make the model answer through it.

    Without the client's own tools (or with ``tool_choice`` ``none``) the
    tool is forced; with them, the model must call a tool (``any``), this
    one for its answer, unless the client named one. Anthropic refuses a
    forced tool while thinking, so that combination is refused here.
    """
    tools = body.setdefault("tools", [])
    if any(existing.get("name") == tool["name"] for existing in tools):
        raise BadRequestError(
            f"response_format: its name {tool['name']!r} is also a tool's name; rename one.",
            field="response_format",
        )
    if isinstance(request.thinking, dict) and request.thinking.get("type") == "enabled":
        raise BadRequestError(
            "response_format: Anthropic gives a JSON answer through a forced tool call, "
            "which it refuses while thinking is enabled; drop one of the two.",
            field="response_format",
        )
    own_tools = bool(tools) and request.tool_choice != "none"
    if not own_tools:
        body["tools"] = [tool]
        body["tool_choice"] = {"type": "tool", "name": tool["name"]}
        return
    tools.append(tool)
    choice = body.get("tool_choice") or {"type": "auto"}
    if choice.get("type") in ("auto", "any"):
        body["tool_choice"] = {"type": "any"}


def translate_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """Return (system prompt, Anthropic messages) for a common conversation.

    System messages, wherever they stand, are joined into the top-level
    system prompt: the API has no system role. A ``tool`` message becomes a
    ``tool_result`` block in a user message, and consecutive messages of one
    role are merged, because the API requires user and assistant to alternate.
    """
    system_parts: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for index, message in enumerate(messages):
        if message.role == "system":
            text = message.text.strip()
            if text:
                system_parts.append(text)
            continue
        if message.role == "user":
            role, blocks = "user", _content_blocks(message.content, index)
        elif message.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(message, index)
        elif message.role == "tool":
            role, blocks = "user", [_tool_result_block(message, index)]
        else:
            raise BadRequestError(
                f"messages[{index}]: unknown role {message.role!r}.", field="messages"
            )
        if not blocks:
            continue  # the API rejects empty content; an empty turn says nothing anyway
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    return "\n\n".join(system_parts), [_message(role, blocks) for role, blocks in turns]


def _message(role: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    if role == "user":
        # The API wants the tool_result blocks first in a user turn, text after.
        blocks = sorted(blocks, key=lambda block: block["type"] != "tool_result")
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return {"role": role, "content": blocks[0]["text"]}
    return {"role": role, "content": blocks}


def _content_blocks(content: str | list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """Return the Anthropic blocks for common CONTENT (text or OpenAI-style parts)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), index))
        elif kind == DOCUMENT_PART:
            # Anthropic's own document block, as the client sent it.
            blocks.append({"type": "document", **(part.get("document") or {})})
        else:
            raise BadRequestError(
                f"messages[{index}]: content part type {kind!r} cannot be sent to Anthropic.",
                field="messages",
            )
    return blocks


def _image_block(image_url: Any, index: int) -> dict[str, Any]:
    """Return an image block for an OpenAI ``image_url`` (a data URL or an http(s) URL)."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise BadRequestError(f"messages[{index}]: an image_url part has no url.", field="messages")
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.match(url)
    if match is None or ";base64" not in match["params"]:
        raise BadRequestError(
            f"messages[{index}]: an image must be an http(s) URL or a base64 data URL.",
            field="messages",
        )
    media_type = match["media"].lower()
    if media_type not in IMAGE_MEDIA_TYPES:
        raise BadRequestError(
            f"messages[{index}]: Anthropic takes images of type "
            f"{', '.join(IMAGE_MEDIA_TYPES)}, not {media_type}.",
            field="messages",
        )
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": match["data"]},
    }


def _assistant_blocks(message: ChatMessage, index: int) -> list[dict[str, Any]]:
    blocks = _content_blocks(message.content, index)
    for call in message.tool_calls or []:
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": _tool_input(call, index),
            }
        )
    return blocks


def _tool_input(call: ToolCall, index: int) -> dict[str, Any]:
    """Return a tool call's JSON-text arguments as the object ``tool_use.input`` must be."""
    try:
        value = json.loads(call.arguments) if call.arguments and call.arguments.strip() else {}
    except ValueError:
        raise BadRequestError(
            f"messages[{index}]: the arguments of tool call {call.id!r} are not valid JSON.",
            field="messages",
        ) from None
    if not isinstance(value, dict):
        raise BadRequestError(
            f"messages[{index}]: the arguments of tool call {call.id!r} must be a JSON object.",
            field="messages",
        )
    return value


def _tool_result_block(message: ChatMessage, index: int) -> dict[str, Any]:
    if not message.tool_call_id:
        raise BadRequestError(
            f"messages[{index}]: a tool message needs the tool_call_id it answers.",
            field="messages",
        )
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    if isinstance(message.content, str):
        block["content"] = message.content
    else:
        block["content"] = _content_blocks(message.content, index)
    return block


def translate_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """Return the Anthropic tool for an OpenAI-style function tool."""
    if "input_schema" in tool and "name" in tool:
        return dict(tool)  # already in Anthropic's shape
    function = tool.get("function") if tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise BadRequestError(
            "tools: each tool must be {'type': 'function', 'function': {'name': ...}}.",
            field="tools",
        )
    translated: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def translate_tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    """Return Anthropic's ``tool_choice`` for an OpenAI-style one."""
    if isinstance(choice, str):
        mapped = {"auto": "auto", "required": "any", "any": "any", "none": "none"}.get(choice)
        if mapped is None:
            raise BadRequestError(f"tool_choice: unknown value {choice!r}.", field="tool_choice")
        return {"type": mapped}
    if choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if not name:
            raise BadRequestError(
                "tool_choice: a function choice needs a name.", field="tool_choice"
            )
        return {"type": "tool", "name": name}
    if choice.get("type") in ("auto", "any", "tool", "none"):
        return dict(choice)  # already in Anthropic's shape
    raise BadRequestError(f"tool_choice: unknown value {choice!r}.", field="tool_choice")


# --- responses ---------------------------------------------------------------


def usage_from(raw: dict[str, Any] | None) -> Usage:
    """Return the common usage for an Anthropic ``usage`` object.

    Anthropic counts prompt tokens read from or written to the prompt cache
    apart from ``input_tokens``; all of them are prompt tokens.
    """
    raw = raw or {}
    prompt = sum(
        int(raw.get(key) or 0)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return Usage(prompt_tokens=prompt, completion_tokens=int(raw.get("output_tokens") or 0))


def parse_response(
    body: Any, *, provider: str = "", structured_tool: str | None = None
) -> ChatResponse:
    """Return the common response for a Messages API ``message`` BODY.

    A call of STRUCTURED_TOOL (the tool carrying ``response_format``) is the
    answer: its input, as JSON text, is the response's content.
    """
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise WireFormatError("sent a message without a content list.")
    if body.get("type", "message") != "message":
        raise WireFormatError(f"sent a {body.get('type')!r} object, not a message.")
    texts: list[str] = []
    tool_calls: list[ToolCall] = []
    for block in body["content"]:
        if not isinstance(block, dict):
            raise WireFormatError("sent a content block that is not an object.")
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            tool_calls.append(
                ToolCall(
                    id=str(block.get("id") or ""),
                    name=str(block.get("name") or ""),
                    arguments=json.dumps(block.get("input") or {}),
                )
            )
        # Other blocks (thinking, server tool results) have no place in the common shape.
    stop = body.get("stop_reason")
    answer = next((c for c in tool_calls if c.name == structured_tool), None)
    if structured_tool is not None and answer is not None:
        texts, stop = [answer.arguments], "end_turn"
        tool_calls = [c for c in tool_calls if c is not answer]
    response = ChatResponse(
        content="".join(texts),
        model=str(body.get("model") or ""),
        provider=provider,
        usage=usage_from(body.get("usage")),
        finish_reason=finish_reason(stop),
        tool_calls=tool_calls or None,
        metadata={"stop_reason": stop},
    )
    if body.get("id"):
        response.id = str(body["id"])
    if body.get("stop_sequence"):
        response.metadata["stop_sequence"] = body["stop_sequence"]
    return response


def parse_model_list(body: Any) -> tuple[list[str], str | None]:
    """Return (model ids, the cursor for the next page or None) from a ``GET /v1/models`` BODY."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise WireFormatError("sent a model list without a data list.")
    ids = [str(m["id"]) for m in body["data"] if isinstance(m, dict) and m.get("id")]
    cursor = body.get("last_id") if body.get("has_more") else None
    return ids, (str(cursor) if cursor else None)


# --- streams -----------------------------------------------------------------


@dataclass
class _ToolBlock:
    id: str
    name: str
    partial_json: str = ""


@dataclass
class StreamFold:
    """Fold a Messages API event stream into common streaming chunks.

    ``feed`` takes each event's parsed data in order and returns the chunk it
    yields, if any: one per text delta, as it arrives (its metadata's
    ``input_tokens`` the prompt's tokens from ``message_start``), and one final chunk on
    ``message_stop`` with the finish reason, the usage (input tokens from
    ``message_start``, output tokens from the last ``message_delta``) and the
    complete tool calls, whose JSON arguments arrive in pieces per block.
    ``finish`` raises ``WireFormatError`` if the stream ended before ``message_stop``.
    A STRUCTURED_TOOL's input (see ``parse_response``) streams as text instead.
    """

    provider: str = ""
    model: str | None = None
    structured_tool: str | None = None
    message_id: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    started: bool = False
    stopped: bool = False
    _tools: dict[int, _ToolBlock] = field(default_factory=dict, init=False, repr=False)
    _answer_block: int | None = field(default=None, init=False, repr=False)

    def feed(self, event: dict[str, Any]) -> StreamingChunk | None:
        """Take one event's data; return the chunk it yields, if any."""
        if not isinstance(event, dict):
            raise self._broken("an event that is not a JSON object")
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else {}
            raise UpstreamErrorEvent(status_for_error_type(error.get("type")), event)
        if kind == "ping" or self.stopped:
            return None
        if kind == "message_start":
            return self._message_start(event)
        if not self.started:
            raise self._broken(f"{kind!r} before message_start")
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "message_delta":
            delta = event.get("delta") or {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            self.stop_sequence = delta.get("stop_sequence") or self.stop_sequence
            # message_delta's usage counts are cumulative: the latest one wins.
            for key, value in (event.get("usage") or {}).items():
                if isinstance(value, int):
                    self.usage[key] = value
            return None
        if kind == "message_stop":
            self.stopped = True
            return self._final_chunk()
        # content_block_stop needs nothing; events added to the API later are
        # skipped, as Anthropic's versioning policy asks of clients.
        return None

    def finish(self) -> None:
        """Raise ``WireFormatError`` unless the stream reached ``message_stop``."""
        if not self.stopped:
            raise self._broken("the end of the stream before message_stop")

    def _broken(self, what: str) -> WireFormatError:
        return WireFormatError(f"broke the event stream's protocol: got {what}.")

    def _message_start(self, event: dict[str, Any]) -> None:
        message = event.get("message")
        if not isinstance(message, dict):
            raise self._broken("message_start without a message")
        self.started = True
        self.model = message.get("model") or self.model
        self.message_id = message.get("id")
        for key, value in (message.get("usage") or {}).items():
            if isinstance(value, int):
                self.usage[key] = value
        return None

    def _block_start(self, event: dict[str, Any]) -> StreamingChunk | None:
        block = event.get("content_block") or {}
        index = event.get("index")
        if block.get("type") == "tool_use" and block.get("name") == self.structured_tool:
            self._answer_block = index
            if block.get("input"):
                return self._text_chunk(json.dumps(block["input"]))
            return None
        if block.get("type") == "tool_use":
            self._tools[index] = _ToolBlock(
                id=str(block.get("id") or ""), name=str(block.get("name") or "")
            )
            if block.get("input"):
                # The input normally streams as input_json_delta; keep one given whole.
                self._tools[index].partial_json = json.dumps(block["input"])
            return None
        if block.get("type") == "text" and block.get("text"):
            return self._text_chunk(block["text"])
        return None

    def _block_delta(self, event: dict[str, Any]) -> StreamingChunk | None:
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta":
            return self._text_chunk(str(delta.get("text") or "")) if delta.get("text") else None
        if delta.get("type") == "input_json_delta" and event.get("index") == self._answer_block:
            piece = str(delta.get("partial_json") or "")
            return self._text_chunk(piece) if piece else None
        if delta.get("type") == "input_json_delta":
            tool = self._tools.get(event.get("index"))
            if tool is None:
                raise self._broken("input_json_delta for a block that is not a tool_use")
            tool.partial_json += str(delta.get("partial_json") or "")
        # thinking and signature deltas have no place in the common shape.
        return None

    def _text_chunk(self, text: str) -> StreamingChunk:
        # The input tokens are known from message_start on: a compatible API
        # may report them before the end (Anthropic's own message_start does).
        metadata = {"input_tokens": usage_from(self.usage).prompt_tokens} if self.usage else {}
        return StreamingChunk(content=text, model=self.model, metadata=metadata)

    def _final_chunk(self) -> StreamingChunk:
        if self._answer_block is not None and self.stop_reason == "tool_use" and not self._tools:
            self.stop_reason = "end_turn"  # the forced tool's input was the answer
        return StreamingChunk(
            is_final=True,
            finish_reason=finish_reason(self.stop_reason),
            usage=usage_from(self.usage),
            tool_calls=self.tool_calls() or None,
            model=self.model,
            metadata={
                "provider": self.provider,
                "id": self.message_id,
                "stop_reason": self.stop_reason,
                **({"stop_sequence": self.stop_sequence} if self.stop_sequence else {}),
            },
        )

    def tool_calls(self) -> list[ToolCall]:
        """Return the tool calls streamed so far, their JSON arguments complete."""
        calls = []
        for index in sorted(self._tools, key=lambda i: (i is None, i)):
            tool = self._tools[index]
            text = tool.partial_json.strip() or "{}"
            try:
                arguments = json.loads(text)
            except ValueError:
                raise self._broken(f"tool_use input for {tool.name!r} that is not JSON") from None
            # Re-encode so that a streamed call reads exactly like a whole one.
            calls.append(ToolCall(id=tool.id, name=tool.name, arguments=json.dumps(arguments)))
        return calls
