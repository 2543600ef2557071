"""Ollama's wire format: Echo's chat types to and from ``/api/chat``, ``/api/embed``, ``/api/tags``.

Pure functions with no I/O, so each one can be tested on recorded JSON.
They follow Ollama's API reference (``docs/api.md`` in ollama/ollama):

- ``POST /api/chat`` takes ``{model, messages, stream, options, tools,
  keep_alive}``; a message is ``{role, content, images, tool_calls,
  tool_name}`` with ``images`` a list of bare base64 strings and tool call
  ``arguments`` a JSON *object*, not text.
- Streaming is the server's default, so a body always says ``stream``.
- A streamed answer is NDJSON: ``{message: {role, content}, done: false}``
  objects, then one ``done: true`` object with ``done_reason`` and the
  counts (``prompt_eval_count``, ``eval_count``); that last object may still
  carry text. A failure after the stream started arrives as ``{"error": ...}``.

Malformed upstream data raises ``WireFormatError``; an ``{"error": ...}``
object in place of an answer raises ``UpstreamErrorEvent``; a request Ollama
cannot express raises ``BadRequestError`` naming the field. The provider calls these through
``HTTPProvider.wire_call``, which types them and adds its name.
"""

from __future__ import annotations

import binascii
import json
import re
import uuid
from base64 import b64decode
from typing import Any

from providers.errors import BadRequestError
from providers.http_provider import UpstreamErrorEvent, WireFormatError, status_named_in
from providers.types import ChatMessage, ChatRequest, ChatResponse, StreamingChunk, ToolCall, Usage

CHAT_PATH = "/api/chat"
EMBED_PATH = "/api/embed"
TAGS_PATH = "/api/tags"

# Ollama's done_reason values that have an OpenAI-style finish_reason of their own;
# anything else ("load", "unload", a future value) ended normally.
FINISH_REASONS = {"stop": "stop", "length": "length"}

# data:[<media type>][;<parameter>...];base64,<data> (RFC 2397)
_DATA_URL = re.compile(r"^data:(?P<meta>[^,]*?);base64,(?P<data>.*)$", re.S)


# --- model names -------------------------------------------------------------


def base_model_name(model: str) -> str:
    """Return MODEL without registry, namespace or tag: ``ns/llama3:8b`` -> ``llama3``.

    Ollama names are ``[host[:port]/][namespace/]model[:tag]``; the facts kept
    in ``model_info.yaml`` are per model family, whatever the tag.
    """
    name = model.rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


# --- requests ----------------------------------------------------------------


def chat_body(
    request: ChatRequest,
    *,
    model: str,
    stream: bool,
    keep_alive: str | None = None,
) -> dict[str, Any]:
    """Return the ``/api/chat`` body for REQUEST sent to MODEL.

    ``stream`` is always present: Ollama streams when it is left out.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(request.messages),
        "stream": stream,
    }
    options = chat_options(request)
    if options:
        body["options"] = options
    response_format = chat_format(request)
    if response_format is not None:
        body["format"] = response_format
    tools = chat_tools(request)
    if tools:
        body["tools"] = tools
        instruction = forcing_instruction(request)
        if instruction is not None:
            body["messages"].insert(0, instruction)
    if keep_alive:
        body["keep_alive"] = keep_alive
    return body


def chat_options(request: ChatRequest) -> dict[str, Any]:
    """Return the Modelfile ``options`` that REQUEST's sampling settings map to."""
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    for name in ("seed", "top_k", "presence_penalty", "frequency_penalty"):
        if getattr(request, name) is not None:
            options[name] = getattr(request, name)
    return options


def chat_format(request: ChatRequest) -> str | dict[str, Any] | None:
    """Return Ollama's ``format`` for REQUEST's ``response_format``: ``"json"`` or the JSON schema."""
    response_format = request.response_format
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    return None


class ToolChoiceError(BadRequestError):
    """A ``tool_choice`` that names no tool the request offers."""

    http_status = 400


class ToolChoiceNotFollowedError(BadRequestError):
    """The model answered without the tool call a forced ``tool_choice`` asked for.

    422, and never counted toward the breaker: the upstream is healthy, the
    model did not do what this request asked.
    """

    kind = "tool_choice_not_followed"
    http_status = 422


def forced_tool(request: ChatRequest) -> str | None:
    """Return what REQUEST's ``tool_choice`` forces: a tool's name, ``"required"``, or None."""
    choice = request.tool_choice
    if not request.tools or choice in (None, "auto", "none"):
        return None
    if choice == "required":
        return "required"
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise ToolChoiceError(
            "tool_choice must be 'none', 'auto', 'required' or a function by name.",
            field="tool_choice",
        )
    return name


def _tool_name(tool: dict[str, Any]) -> Any:
    function = tool.get("function")
    return function.get("name") if isinstance(function, dict) else None


def chat_tools(request: ChatRequest) -> list[dict[str, Any]] | None:
    """Return REQUEST's tools for Ollama, which takes OpenAI's ``tools`` shape as it is.

    Ollama has no ``tool_choice``: ``"none"`` is honoured by sending no
    tools, ``"auto"`` is its only behaviour, and a forced choice is emulated
    (``forced_tool``): a named function is sent alone, ``"required"`` sends
    them all, with an instruction (``forcing_instruction``); the answer is
    then checked (``check_forced_call``).
    """
    if not request.tools or request.tool_choice == "none":
        return None
    forced = forced_tool(request)
    if forced is None or forced == "required":
        return list(request.tools)
    named = [tool for tool in request.tools if _tool_name(tool) == forced]
    if not named:
        raise ToolChoiceError(
            f"tool_choice names the function {forced!r}, which is not among the tools.",
            field="tool_choice",
        )
    return named


def forcing_instruction(request: ChatRequest) -> dict[str, Any] | None:
    """Return the system message that asks the model for the forced call, or None when none is."""
    forced = forced_tool(request)
    if forced is None:
        return None
    if forced == "required":
        text = "Answer only by calling one of the functions offered, not with text."
    else:
        text = f"Answer only by calling the function {forced!r}, not with text."
    return {"role": "system", "content": text}


def check_forced_call(request: ChatRequest, calls: list[ToolCall] | None) -> None:
    """Raise ``ToolChoiceNotFollowedError`` unless CALLS are what REQUEST's forced choice asked for."""
    forced = forced_tool(request)
    if forced is None:
        return
    if not calls:
        raise ToolChoiceNotFollowedError(
            "The model answered with text although tool_choice forces a tool call "
            "(Ollama has no tool_choice; Echo asked for the call and checked the answer).",
            field="tool_choice",
        )
    if forced != "required" and any(call.name != forced for call in calls):
        raise ToolChoiceNotFollowedError(
            f"The model called another function than {forced!r}, which tool_choice forces.",
            field="tool_choice",
        )


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Return MESSAGES in Ollama's shape.

    A tool result names its tool (``tool_name``) rather than the call id, so
    the name is looked up among the calls the assistant made earlier.
    """
    call_names: dict[str, str] = {}
    wire: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        path = f"messages.{index}"
        text, images = _content(message.content, path)
        item: dict[str, Any] = {"role": message.role, "content": text}
        if images:
            item["images"] = images
        if message.tool_calls:
            item["tool_calls"] = [
                _tool_call(call, f"{path}.tool_calls.{n}")
                for n, call in enumerate(message.tool_calls)
            ]
            call_names.update({call.id: call.name for call in message.tool_calls if call.id})
        if message.role == "tool":
            tool_name = message.name or call_names.get(message.tool_call_id or "")
            if tool_name:
                item["tool_name"] = tool_name
        wire.append(item)
    return wire


def _content(content: str | list[dict[str, Any]], path: str) -> tuple[str, list[str]]:
    """Return the text and the base64 images of a message's CONTENT."""
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            images.append(image_base64(part.get("image_url"), f"{path}.content.{index}.image_url"))
        else:
            raise BadRequestError(
                f"Ollama accepts text and image_url content parts, not {kind!r}.",
                field=f"{path}.content.{index}.type",
            )
    return "".join(texts), images


def image_base64(image_url: Any, field: str) -> str:
    """Return the bare base64 data of an OpenAI-style ``image_url`` (a ``data:`` URL).

    Ollama takes image bytes only, never a link, so an http(s) URL is refused
    with the reason rather than fetched by the gateway.
    """
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise BadRequestError("An image_url part needs a 'url'.", field=field)
    match = _DATA_URL.match(url)
    if match is None:
        raise BadRequestError(
            "Ollama accepts only inline images: send the image as a "
            "'data:image/...;base64,...' URL, not a link.",
            field=field,
        )
    data = re.sub(r"\s+", "", match["data"])
    try:
        b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("The image's base64 data is not valid.", field=field) from None
    return data


def _tool_call(call: ToolCall, field: str) -> dict[str, Any]:
    """Return an assistant's earlier tool call; Ollama wants its arguments as an object."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        raise BadRequestError("Tool call arguments must be JSON text.", field=field) from None
    if not isinstance(arguments, dict):
        raise BadRequestError("Tool call arguments must be a JSON object.", field=field)
    return {"function": {"name": call.name, "arguments": arguments}}


def embed_body(texts: list[str], *, model: str, keep_alive: str | None = None) -> dict[str, Any]:
    """Return the ``/api/embed`` body for TEXTS."""
    body: dict[str, Any] = {"model": model, "input": list(texts)}
    if keep_alive:
        body["keep_alive"] = keep_alive
    return body


# --- responses ---------------------------------------------------------------


def error_message(data: Any) -> str | None:
    """Return the message of an ``{"error": ...}`` object (sent mid-stream), if DATA is one."""
    if isinstance(data, dict) and "error" in data:
        error = data["error"]
        return error if isinstance(error, str) else json.dumps(error)
    return None


# The HTTP status of an error sent in place of an answer, by the words of its
# message: the status line went out before the failure, so the text is all
# there is to go on. A missing model is the caller's mistake, a model without
# the ability asked for too; anything else (the runner crashed, ran out of
# memory) is the server's (500).
ERROR_WORD_STATUS = {"not found": 404, "does not support": 400}


def error_status(message: str) -> int:
    """Return the HTTP status an error MESSAGE sent in place of an answer stands for."""
    return status_named_in(message.lower(), ERROR_WORD_STATUS)


def _raise_reported_error(data: Any) -> None:
    """Raise ``UpstreamErrorEvent`` when DATA is an ``{"error": ...}`` object."""
    message = error_message(data)
    if message is not None:
        raise UpstreamErrorEvent(error_status(message), data)


def usage_of(data: dict[str, Any]) -> Usage:
    """Return the token counts of a final (``done: true``) object."""
    return Usage(
        prompt_tokens=_count(data, "prompt_eval_count"),
        completion_tokens=_count(data, "eval_count"),
    )


def _count(data: dict[str, Any], key: str) -> int:
    # Ollama omits a count that is zero (Go's omitempty), e.g. a fully cached prompt.
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WireFormatError(f"sent an invalid {key!r}.")
    return value


def finish_reason(done_reason: Any, *, tool_calls: bool) -> str:
    """Return Echo's finish reason for Ollama's DONE_REASON.

    Ollama says ``stop`` after a tool call too; a caller must know to run the tools.
    """
    if tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(done_reason, "stop") if isinstance(done_reason, str) else "stop"


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall] | None:
    """Return the tool calls of an Ollama MESSAGE, arguments as JSON text, each with an id."""
    raw = message.get("tool_calls")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise WireFormatError("sent 'tool_calls' that is not a list.")
    calls = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise WireFormatError("sent a tool call without a function name.")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            text = arguments  # already JSON text (not what the reference shows, but harmless)
        else:
            text = json.dumps(arguments if arguments is not None else {})
        # The reference's calls carry no id, but Echo's callers answer a call by its id.
        call_id = item.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{uuid.uuid4().hex[:24]}"
        calls.append(ToolCall(id=call_id, name=function["name"], arguments=text))
    return calls or None


def _message(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise WireFormatError("sent something other than a JSON object.")
    message = data.get("message", {})
    if message is None:
        message = {}
    if not isinstance(message, dict):
        raise WireFormatError("sent a 'message' that is not an object.")
    content = message.get("content", "")
    if content is not None and not isinstance(content, str):
        raise WireFormatError("sent message content that is not text.")
    return message


def parse_chat_response(data: Any, *, model: str) -> ChatResponse:
    """Return the ChatResponse of a non-streamed ``/api/chat`` answer (MODEL if it names none)."""
    _raise_reported_error(data)
    message = _message(data)
    if data.get("done") is not True:
        raise WireFormatError("sent an unfinished answer to a request that did not stream.")
    calls = tool_calls_of(message)
    return ChatResponse(
        content=message.get("content") or "",
        model=data.get("model") if isinstance(data.get("model"), str) else model,
        usage=usage_of(data),
        finish_reason=finish_reason(data.get("done_reason"), tool_calls=bool(calls)),
        tool_calls=calls,
        metadata=_timings(data),
    )


def parse_stream_object(data: Any) -> StreamingChunk:
    """Return the chunk one NDJSON object of a streamed ``/api/chat`` answer stands for.

    The final object (``done: true``) gives a final chunk with the usage and
    whatever text it still carries; its finish reason does not know about tool
    calls made in earlier objects, which the caller accounts for.
    """
    _raise_reported_error(data)
    message = _message(data)
    done = data.get("done", False)
    if not isinstance(done, bool):
        raise WireFormatError("sent a 'done' that is not true or false.")
    calls = tool_calls_of(message)
    model = data.get("model") if isinstance(data.get("model"), str) else None
    if not done:
        return StreamingChunk(content=message.get("content") or "", tool_calls=calls, model=model)
    return StreamingChunk(
        content=message.get("content") or "",
        is_final=True,
        finish_reason=finish_reason(data.get("done_reason"), tool_calls=bool(calls)),
        usage=usage_of(data),
        tool_calls=calls,
        model=model,
        metadata=_timings(data),
    )


def _timings(data: dict[str, Any]) -> dict[str, Any]:
    """Return Ollama's durations (nanoseconds) as milliseconds, for latency reports."""
    timings = {}
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            timings[key.replace("_duration", "_ms")] = round(value / 1_000_000, 3)
    return {"timings": timings} if timings else {}


def model_names(data: Any) -> list[str]:
    """Return the model names of a ``/api/tags`` answer, as Ollama names them (``llama3:latest``)."""
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise WireFormatError("sent a model list without 'models'.")
    names = []
    for item in models:
        name = (item.get("name") or item.get("model")) if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise WireFormatError("sent a model without a name.")
        names.append(name)
    return names


def parse_embed_usage(data: Any) -> Usage | None:
    """Return the tokens an ``/api/embed`` answer says its input cost (``prompt_eval_count``), or None."""
    count = data.get("prompt_eval_count") if isinstance(data, dict) else None
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise WireFormatError("sent a prompt_eval_count that is not a count.")
    return Usage(prompt_tokens=count)


def parse_embeddings(data: Any, *, count: int) -> list[list[float]]:
    """Return the COUNT vectors of an ``/api/embed`` answer, in input order."""
    vectors = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(vectors, list) or len(vectors) != count:
        raise WireFormatError(f"sent no embeddings or not {count} of them.")
    result = []
    for vector in vectors:
        if not isinstance(vector, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in vector
        ):
            raise WireFormatError("sent an embedding that is not a list of numbers.")
        result.append([float(x) for x in vector])
    return result
