"""The OpenAI wire format: Echo's chat types to OpenAI JSON and back, with no I/O.

Everything here is a pure function (or a small accumulator) over parsed JSON,
so it is tested on recorded request and response bodies without a network.
``providers.plugins.openai_provider`` does the HTTP and calls these through
``HTTPProvider.wire_call``, which types what they raise: ``WireFormatError``
for a body that breaks the format, ``UpstreamErrorEvent`` for an error sent
inside a stream.

Shapes follow OpenAI's API reference: ``POST /chat/completions`` (a
``chat.completion`` object, or ``chat.completion.chunk`` events ended by
``data: [DONE]``), ``GET /models`` and ``POST /embeddings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.errors import BadRequestError
from providers.http_provider import UpstreamErrorEvent, WireFormatError, status_named_in
from providers.types import DOCUMENT_PART, ChatMessage, ChatRequest, ChatResponse, ToolCall, Usage

#: The data of the Server-Sent Event that ends a stream.
DONE = "[DONE]"


# --- requests ---------------------------------------------------------------


def content_part(part: dict[str, Any]) -> dict[str, Any]:
    """Return one multimodal content PART in the shape OpenAI accepts.

    Some clients send ``{"type": "image_url", "image_url": "https://..."}``;
    OpenAI wants the URL inside an object, so that shorthand is expanded.
    """
    if part.get("type") == "image_url" and isinstance(part.get("image_url"), str):
        return {**part, "image_url": {"url": part["image_url"]}}
    if part.get("type") == DOCUMENT_PART:
        return document_part(part.get("document") or {})
    return dict(part)


class DocumentNotSupportedError(BadRequestError):
    """A document OpenAI cannot take as sent (a PDF by URL): the client must send it otherwise."""

    kind = "unsupported_document"
    http_status = 400


def document_part(document: dict[str, Any]) -> dict[str, Any]:
    """Return a document (``providers.types.DOCUMENT_PART``) as OpenAI takes it.

    A plain text becomes a text part (its title and context first); a base64
    PDF becomes a ``file`` part with its data URL. OpenAI's ``file`` part
    takes no URL, so a PDF by URL is refused (Echo does not fetch it).
    """
    source = document.get("source") or {}
    title = document.get("title") or ""
    if source.get("type") == "text":
        text = "\n\n".join(t for t in (title, document.get("context") or "", source["data"]) if t)
        return {"type": "text", "text": text}
    if source.get("type") == "base64":
        filename = title if title.lower().endswith(".pdf") else f"{title or 'document'}.pdf"
        return {
            "type": "file",
            "file": {
                "filename": filename,
                "file_data": f"data:{source.get('media_type')};base64,{source['data']}",
            },
        }
    raise DocumentNotSupportedError(
        f"OpenAI takes documents as data, not {source.get('type')!r} sources: "
        "send the PDF as base64 (source type 'base64') or the text as a 'text' source.",
        field="messages",
    )


def message_body(message: ChatMessage) -> dict[str, Any]:
    """Return MESSAGE as an entry of a request's ``messages``."""
    body: dict[str, Any] = {"role": message.role}
    if isinstance(message.content, list):
        body["content"] = [content_part(part) for part in message.content]
    elif message.tool_calls and not message.content:
        # An assistant turn that only called tools has no text: OpenAI wants null.
        body["content"] = None
    else:
        body["content"] = message.content
    if message.name:
        body["name"] = message.name
    if message.tool_calls:
        body["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id:
        body["tool_call_id"] = message.tool_call_id
    return body


#: The request options OpenAI takes under their own names, passed on as they are.
PASSED_OPTIONS = (
    "response_format",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "parallel_tool_calls",
    "n",
)


def build_chat_body(
    request: ChatRequest,
    *,
    model: str,
    stream: bool,
    max_tokens_field: str = "max_tokens",
) -> dict[str, Any]:
    """Return the JSON body of ``POST /chat/completions`` for REQUEST.

    MAX_TOKENS_FIELD names the length limit: reasoning models refuse
    ``max_tokens`` and take ``max_completion_tokens``. A streamed request asks
    for ``stream_options.include_usage`` so that the stream reports usage.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [message_body(m) for m in request.messages],
    }
    optional = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": request.stop,
        "tools": request.tools,
        "tool_choice": request.tool_choice,
        "user": request.user,
        max_tokens_field: request.max_tokens,
        **{name: getattr(request, name) for name in PASSED_OPTIONS},
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if stream:
        if request.n is not None and request.n > 1:
            # Its stream is read as one choice: several would run together.
            raise BadRequestError(
                "The openai plugin streams one choice; ask for several without streaming.",
                field="n",
            )
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def build_embeddings_body(
    texts: list[str] | list[list[int]], *, model: str, dimensions: int | None = None
) -> dict[str, Any]:
    """Return the JSON body of ``POST /embeddings`` for TEXTS (or token-id arrays), DIMENSIONS long."""
    body: dict[str, Any] = {"model": model, "input": list(texts), "encoding_format": "float"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


# --- responses --------------------------------------------------------------


def parse_usage(raw: Any) -> Usage | None:
    """Return the ``usage`` object RAW as Usage, or None when it is absent or null."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise WireFormatError("sent a usage that is not an object.")
    try:
        return Usage(
            prompt_tokens=int(raw.get("prompt_tokens") or 0),
            completion_tokens=int(raw.get("completion_tokens") or 0),
        )
    except (TypeError, ValueError):
        raise WireFormatError("sent token counts that are not numbers.") from None


def parse_tool_calls(raw: Any) -> list[ToolCall] | None:
    """Return a message's ``tool_calls`` as ToolCalls, or None when it has none."""
    if not raw:
        return None
    if not isinstance(raw, list):
        raise WireFormatError("sent tool_calls that are not a list.")
    calls = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise WireFormatError("sent a tool call without a function name.")
        calls.append(
            ToolCall(
                id=str(item.get("id") or f"call_{len(calls)}"),
                name=function["name"],
                arguments=function.get("arguments") or "{}",
            )
        )
    return calls


def message_text(message: dict[str, Any]) -> str:
    """Return the text of an answer MESSAGE (``content``, else a ``refusal``)."""
    content = message.get("content")
    if isinstance(content, list):
        # Some OpenAI-compatible servers answer with content parts.
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is not None and not isinstance(content, str):
        raise WireFormatError("sent message content that is not text.")
    # A refusal is the model's answer to the user, so it is shown as the text.
    return content or message.get("refusal") or ""


def _parse_choice(
    choice: Any, body: dict[str, Any], *, model: str, provider: str, usage: Usage
) -> ChatResponse:
    """Return one choice of a ``chat.completion`` BODY as a ChatResponse."""
    if not isinstance(choice, dict):
        raise WireFormatError("sent a chat completion choice that is not an object.")
    message = choice.get("message")
    if not isinstance(message, dict):
        raise WireFormatError("sent a chat completion choice with no message.")
    tool_calls = parse_tool_calls(message.get("tool_calls"))
    extra: dict[str, Any] = {}
    if isinstance(body.get("id"), str):
        extra["id"] = body["id"]
    if isinstance(body.get("created"), int):
        extra["created"] = body["created"]
    metadata = {}
    if body.get("system_fingerprint"):
        metadata["system_fingerprint"] = body["system_fingerprint"]
    if isinstance(choice.get("logprobs"), dict):
        # Asked for with ``logprobs``: the compatible API shows them as OpenAI sent them.
        metadata["logprobs"] = choice["logprobs"]
    return ChatResponse(
        content=message_text(message),
        model=body.get("model") or model,
        provider=provider,
        usage=usage,
        finish_reason=choice.get("finish_reason") or ("tool_calls" if tool_calls else "stop"),
        tool_calls=tool_calls,
        metadata=metadata,
        **extra,
    )


def parse_chat_response(body: Any, *, model: str, provider: str = "") -> ChatResponse:
    """Return a ``chat.completion`` BODY as a ChatResponse (MODEL when it names none).

    Choices after the first (asked for with ``n``) go to ``more_choices``,
    in their ``index`` order; the usage, which covers them all, is the first's.
    """
    if not isinstance(body, dict):
        raise WireFormatError("sent a chat completion that is not an object.")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise WireFormatError("sent a chat completion with no choices.")
    usage = parse_usage(body.get("usage")) or Usage()

    def position(pair: tuple[int, Any]) -> int:
        index = pair[1].get("index") if isinstance(pair[1], dict) else None
        return index if isinstance(index, int) and not isinstance(index, bool) else pair[0]

    ordered = [choice for _, choice in sorted(enumerate(choices), key=position)]
    answer = _parse_choice(ordered[0], body, model=model, provider=provider, usage=usage)
    answer.more_choices = [
        _parse_choice(choice, body, model=model, provider=provider, usage=Usage())
        for choice in ordered[1:]
    ]
    return answer


# --- streams ----------------------------------------------------------------


@dataclass(slots=True)
class StreamEvent:
    """What one event of a streamed chat completion says; DONE marks the ``[DONE]`` sentinel."""

    done: bool = False
    content: str = ""
    tool_call_deltas: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    logprobs: dict[str, Any] | None = None


# The HTTP status of an error sent inside a stream, by a word of its ``type`` or
# ``code``; anything else is the server's failure (500).
ERROR_WORD_STATUS = {"rate_limit": 429, "invalid_request": 400}


def error_status(error: dict[str, Any]) -> int:
    """Return the HTTP status an ``error`` object sent inside a stream stands for."""
    return status_named_in(f"{error.get('type')} {error.get('code')}", ERROR_WORD_STATUS)


def parse_stream_event(data: str) -> StreamEvent:
    """Return the meaning of one SSE DATA field of a streamed chat completion.

    Only the first choice is read: Echo asks for one. The last chunk of a
    stream with ``include_usage`` has no choices and carries the usage. An
    ``error`` object in place of a chunk raises ``UpstreamErrorEvent``.
    """
    if data[:1] != "{" and data.strip() == DONE:  # a chunk is an object: no copy of it made
        return StreamEvent(done=True)
    try:
        chunk = orjson.loads(data)
    except ValueError:
        raise WireFormatError("sent malformed JSON in its stream.") from None
    if not isinstance(chunk, dict):
        raise WireFormatError("sent a stream event that is not an object.")
    if chunk.get("error") is not None:
        error = chunk["error"]
        error = error if isinstance(error, dict) else {"message": str(error)}
        raise UpstreamErrorEvent(error_status(error), {"error": error})
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        raise WireFormatError("sent stream choices that are not a list.")
    event = StreamEvent(usage=parse_usage(chunk.get("usage")), model=chunk.get("model"))
    if choices:
        choice = choices[0]
        if not isinstance(choice, dict):
            raise WireFormatError("sent a stream choice that is not an object.")
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise WireFormatError("sent a stream delta that is not an object.")
        event.content = message_text(delta)
        deltas = delta.get("tool_calls") or []
        if not isinstance(deltas, list):
            raise WireFormatError("sent tool-call deltas that are not a list.")
        event.tool_call_deltas = deltas
        event.finish_reason = choice.get("finish_reason")
        if isinstance(choice.get("logprobs"), dict):
            event.logprobs = choice["logprobs"]
    return event


class ToolCallAssembler:
    """Join streamed tool-call deltas into whole calls, keyed by each delta's ``index``.

    The first delta of a call brings its ``id`` and function ``name``; later
    ones bring pieces of the ``arguments`` JSON text, to be concatenated.
    """

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        """Take in the tool-call DELTAS of one stream event."""
        for position, delta in enumerate(deltas):
            if not isinstance(delta, dict):
                raise WireFormatError("sent a tool-call delta that is not an object.")
            # ``index`` is required by the reference; a server that omits it
            # sends whole calls in list order, so the position stands in.
            index = delta.get("index", position)
            if not isinstance(index, int) or isinstance(index, bool):
                raise WireFormatError("sent a tool-call delta whose index is not a number.")
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if delta.get("id"):
                call["id"] = str(delta["id"])
            function = delta.get("function") or {}
            if not isinstance(function, dict):
                raise WireFormatError("sent a tool-call delta whose function is not an object.")
            name = function.get("name")
            # OpenAI sends the name once; some compatible servers repeat it in
            # every delta, and a repeat must not double it.
            if isinstance(name, str) and name and name != call["name"]:
                call["name"] += name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call["arguments"] += arguments

    def calls(self) -> list[ToolCall]:
        """Return the assembled calls in index order."""
        result = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call["name"]:
                raise WireFormatError("streamed a tool call without a function name.")
            result.append(
                ToolCall(
                    id=call["id"] or f"call_{index}",
                    name=call["name"],
                    arguments=call["arguments"] or "{}",
                )
            )
        return result


# --- models and embeddings --------------------------------------------------


def parse_model_list(body: Any) -> list[str]:
    """Return the model ids of a ``GET /models`` BODY (``{"object": "list", "data": [...]}``)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise WireFormatError("sent a model list without data.")
    ids = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise WireFormatError("sent a model without an id.")
        ids.append(item["id"])
    return ids


def parse_embeddings_usage(body: Any) -> Usage:
    """Return the tokens a ``POST /embeddings`` BODY says its input cost (0 when it says nothing)."""
    raw = body.get("usage") if isinstance(body, dict) else None
    if raw is None:
        return Usage()
    if not isinstance(raw, dict):
        raise WireFormatError("sent a usage that is not an object.")
    tokens = raw.get("prompt_tokens", raw.get("total_tokens")) or 0
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise WireFormatError("sent token counts that are not numbers.")
    return Usage(prompt_tokens=tokens)


def parse_embeddings(body: Any, *, count: int) -> list[list[float]]:
    """Return the vectors of a ``POST /embeddings`` BODY, in input order; expect COUNT."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise WireFormatError("sent embeddings without data.")
    vectors: dict[int, list[float]] = {}
    for position, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
            raise WireFormatError("sent an embedding that is not a list of numbers.")
        index = item.get("index", position)
        try:
            vectors[int(index)] = [float(x) for x in item["embedding"]]
        except (TypeError, ValueError):
            raise WireFormatError("sent an embedding that is not a list of numbers.") from None
    if sorted(vectors) != list(range(count)):
        raise WireFormatError(f"sent {len(vectors)} embeddings for {count} inputs.")
    return [vectors[i] for i in range(count)]
