"""OpenAI's API, served by Echo: ``/v1/chat/completions``, ``/v1/models``, ``/v1/embeddings``.

Code written against the OpenAI SDK points its ``base_url`` at Echo's
``/v1``, uses an Echo client key as its API key, and changes nothing else.
The ``model`` routes: ``openai/gpt-4o-mini``, ``anthropic/claude-...``,
``ollama/llama3`` name a provider by prefix; a bare name goes to the routing
default. Chat goes through the ModelManager, so retries, failover and
circuit breakers work as for ``POST /chat``. This module is OpenAI's wire
format; the serving (key check, routing, usage) is ``compat.dispatch``'s.

Answers name who answered: ``model`` is ``provider/model`` (the form
``GET /v1/models`` lists, so it can be sent back as is), and the headers
``x-echo-provider`` and ``x-echo-model`` say the same.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, with Echo's honest status (401 bad key, 404 unknown model or
provider, 429 with ``Retry-After``, 5xx when the upstreams failed). A key
whose budget is spent gets 429 of type ``insufficient_quota`` (OpenAI's own
for a spent quota) and code ``budget_exceeded``, with ``x-should-retry:
false`` so that the SDK raises ``RateLimitError`` at once, without retrying.

Streams are ``chat.completion.chunk`` events (``data: {...}`` lines): a
first chunk with the assistant role, one chunk per piece of text, tool
calls (whole, one delta each, with their ``index``), a chunk with the
``finish_reason``, a usage chunk with ``choices: []`` when the request set
``stream_options.include_usage`` (and the provider reported usage), then
``data: [DONE]``. A failure after the first chunk has been sent cannot
change the status any more: the stream then ends with one ``data:
{"error": {...}}`` event in the same error shape, and no ``[DONE]``, which
the OpenAI SDK raises as ``APIError``; the text already sent stands.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from plugins_api.access.key_budgets import BudgetRefusal
from plugins_api.access.key_limit_headers import openai_headers, retry_headers
from plugins_api.access.key_limits import LimitRefusal
from plugins_api.access.request_auth import (
    Denial,
    check_chat_client,
    model_not_allowed,
)
from plugins_api.compat.dispatch import (
    CHOICE_COUNT,
    CHOICE_INDEX,
    ChatCall,
    ChatWire,
    CompatErrors,
    admit,
    answered_by,
    limit,
    model_label,
    provider_failure,
    serve_chat,
    with_limit_headers,
)
from plugins_api.edge.chat_requests import (
    MAX_TOOLS,
    RequestFieldError,
    bounded_list,
    bounded_name,
    optional_string,
    parse_messages,
    parse_openai_options,
    parse_stop,
    reject_upstream_settings,
    required_string,
)
from plugins_api.edge.json_answer import JsonAnswer
from plugins_api.edge.request_usage import RequestUsage, client_label
from plugins_api.edge.sse import json_text, sse_frame
from providers.errors import (
    ModelNotFoundError,
    ProviderError,
    ProviderNotFoundError,
    ProviderTimeoutError,
)
from providers.runtime import process as runtime
from providers.runtime.manager import Route, plugin_failure
from providers.runtime.retry_policy import routing_setting
from providers.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamingChunk,
    ToolCall,
    answer_id,
)

#: How long ``GET /v1/models`` waits for a provider's live list before it
#: shows the models the plugin declares instead.
MODEL_LIST_SECONDS = 5.0

#: The most choices one call may ask for (``n``): each may be a call upstream.
MAX_CHOICES = 8


# --- errors -------------------------------------------------------------------


def openai_error(
    status: int,
    message: str,
    *,
    kind: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    """Return an error response in OpenAI's shape; KIND defaults to the one STATUS implies."""
    body = {
        "error": {
            "message": message,
            "type": kind or _error_type(status),
            "param": param,
            "code": code,
        }
    }
    response = JsonResponse(body, status=status)
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def _error_type(status: int) -> str:
    if status == 429:
        return "requests"  # what OpenAI calls a request-rate limit
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _param(field: str | None) -> str | None:
    # The compatible APIs name the provider through the model's prefix.
    return "model" if field == "provider" else field


def _error_code(exc: ProviderError, status: int) -> str:
    if isinstance(exc, ModelNotFoundError | ProviderNotFoundError):
        return "model_not_found"
    if status == 429:
        return "rate_limit_exceeded"
    return exc.kind


def openai_provider_error(exc: ProviderError, *, model: str | None = None) -> JsonResponse:
    """Render provider error EXC in OpenAI's shape, with Echo's honest status."""
    status, message, headers = provider_failure(exc, model=model)
    code = _error_code(exc, status)
    return openai_error(status, message, param=_param(exc.field), code=code, headers=headers)


def openai_denial(denial: Denial) -> JsonResponse:
    """Render an authentication failure in OpenAI's shape (``key_expired`` keeps its code)."""
    if denial.is_authentication:
        return openai_error(
            401,
            denial.message,
            code="key_expired" if denial.kind == "key_expired" else "invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="echo"'},
        )
    return openai_error(denial.status, denial.message, code=denial.kind)


def openai_field_error(exc: RequestFieldError) -> JsonResponse:
    """Render a bad request body in OpenAI's shape, naming the field."""
    return openai_error(400, exc.message, param=exc.field)


def openai_rate_limited(refusal: LimitRefusal) -> JsonResponse:
    """Render a key's rate-limit refusal as OpenAI does: 429 ``rate_limit_exceeded``, ``retry-after``.

    The type is OpenAI's for the limit reached (``requests`` or ``tokens``).
    """
    headers = {**retry_headers(refusal), **openai_headers(refusal.state)}
    if refusal.status != 429:
        return openai_error(
            refusal.status, refusal.message, code="limits_unavailable", headers=headers
        )
    kind = "tokens" if refusal.limit == "tokens" else "requests"
    return openai_error(
        429, refusal.message, kind=kind, code="rate_limit_exceeded", headers=headers
    )


def openai_budget_exceeded(refusal: BudgetRefusal) -> JsonResponse:
    """Render a key's spent budget as OpenAI renders a spent quota: 429 ``insufficient_quota``.

    The code is ``budget_exceeded``; ``Retry-After`` is the wait until the
    budget's period ends, and ``x-should-retry: false`` stops the SDK's retries.
    """
    if refusal.status != 429:
        return openai_error(
            refusal.status, refusal.message, code="limits_unavailable", headers=refusal.headers()
        )
    return openai_error(
        429,
        refusal.message,
        kind="insufficient_quota",
        code="budget_exceeded",
        headers=refusal.headers(),
    )


OPENAI_ERRORS = CompatErrors(
    denial=openai_denial,
    field_error=openai_field_error,
    provider_error=openai_provider_error,
    rate_limited=openai_rate_limited,
    limit_headers=openai_headers,
    budget_exceeded=openai_budget_exceeded,
)


# --- requests -----------------------------------------------------------------


@dataclass(slots=True)
class CompletionCall(ChatCall):
    """What a ``/v1/chat/completions`` body asks for: a chat call, and whether usage ends its stream."""

    include_usage: bool


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestFieldError(key, f"Must be a number between {low:g} and {high:g}.")
    return value


def _whole(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestFieldError(key, "Must be a whole number of at least 1.")
    return value


def _model(data: dict[str, Any]) -> str:
    model = bounded_name(data.get("model"), "model", "a model name")
    if model is None or not model.strip():
        raise RequestFieldError(
            "model", "Required: a model, as 'provider/model' or a name the default provider knows."
        )
    return model.strip()


def parse_function_tools(raw: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    """Return OpenAI function tools (at most ``MAX_TOOLS``), every field a provider reads checked."""
    if raw is None:
        return None
    bounded_list(raw, field, MAX_TOOLS, "function tools")
    for index, tool in enumerate(raw):
        at = f"{field}.{index}"
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
        ):
            raise RequestFieldError(at, "Must be {'type': 'function', 'function': {'name', ...}}.")
        if not required_string(function, "name", f"{at}.function"):
            raise RequestFieldError(f"{at}.function.name", "Must not be empty.")
        optional_string(function, "description", f"{at}.function")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise RequestFieldError(f"{at}.function.parameters", "Must be a JSON schema object.")
        if function.get("strict") is not None and not isinstance(function["strict"], bool):
            raise RequestFieldError(f"{at}.function.strict", "Must be true or false.")
    return raw or None


def _tool_choice(raw: Any) -> str | dict[str, Any] | None:
    if raw is None or raw in ("none", "auto", "required"):
        return raw
    if (
        isinstance(raw, dict)
        and raw.get("type") == "function"
        and isinstance(raw.get("function"), dict)
        and isinstance(raw["function"].get("name"), str)
        and raw["function"]["name"]
    ):
        return raw
    raise RequestFieldError(
        "tool_choice",
        "Must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name'}}.",
    )


def _include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise RequestFieldError("stream_options", "Must be an object.")
    include_usage = options.get("include_usage", False)
    if include_usage is None:
        return False
    if not isinstance(include_usage, bool):
        raise RequestFieldError("stream_options.include_usage", "Must be true or false.")
    return include_usage


#: OpenAI's newer name for system instructions; every provider knows "system".
OPENAI_ROLE_ALIASES = {"developer": "system"}


def parse_completion_call(data: dict[str, Any]) -> CompletionCall:
    """Return the CompletionCall a ``/v1/chat/completions`` body describes.

    Read: ``model``, ``messages`` (content as text or parts, images
    included; ``developer`` messages count as ``system``), ``stream``,
    ``stream_options.include_usage``, ``temperature``, ``top_p``,
    ``max_tokens`` / ``max_completion_tokens``, ``stop``, ``tools``,
    ``tool_choice`` and the options ``parse_openai_options`` reads
    (``response_format``, ``seed``, penalties, ``logprobs``/``top_logprobs``,
    ``logit_bias``, ``parallel_tool_calls``, ``user``, and Echo's ``top_k``
    and ``thinking``): a provider that cannot honour one refuses the call
    (400 ``unsupported_option``), none is dropped. ``n`` (1 to
    ``MAX_CHOICES``) asks for that many choices (``compat.dispatch``).
    """
    reject_upstream_settings(data)
    model = _model(data)
    messages = parse_messages(data.get("messages"), role_aliases=OPENAI_ROLE_ALIASES)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestFieldError("stream", "Must be true or false.")
    include_usage = _include_usage(data)
    n = data.get("n")
    if n is not None and (
        isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES
    ):
        raise RequestFieldError("n", f"Must be a whole number from 1 to {MAX_CHOICES}.")
    max_completion_tokens = _whole(data, "max_completion_tokens")
    max_tokens = _whole(data, "max_tokens")
    request = ChatRequest(
        messages=messages,
        model=model,
        temperature=_number(data, "temperature", 0, 2),
        max_tokens=max_completion_tokens or max_tokens,
        top_p=_number(data, "top_p", 0, 1),
        stop=parse_stop(data.get("stop")),
        stream=stream,
        tools=parse_function_tools(data.get("tools")),
        tool_choice=_tool_choice(data.get("tool_choice")),
        n=n if n is not None and n > 1 else None,
        **parse_openai_options(data),
    )
    return CompletionCall(request=request, stream=stream, include_usage=include_usage)


# --- responses ----------------------------------------------------------------


def completion_id() -> str:
    """Return a new id for a chat completion."""
    return f"chatcmpl-{answer_id()}"


def _wire_tool_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _choice(index: int, response: ChatResponse) -> dict[str, Any]:
    """Return RESPONSE as choice INDEX of a ``chat.completion``."""
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null, not "", for an answer that only calls tools.
        "content": response.content if response.content or not response.tool_calls else None,
        "refusal": None,
    }
    if response.tool_calls:
        message["tool_calls"] = [_wire_tool_call(call) for call in response.tool_calls]
    return {
        "index": index,
        "message": message,
        "logprobs": response.metadata.get("logprobs"),
        "finish_reason": response.finish_reason or "stop",
    }


def completion_body(response: ChatResponse) -> dict[str, Any]:
    """Return RESPONSE (and its ``more_choices``) as a ``chat.completion`` object."""
    answers = [response, *response.more_choices]
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": response.created,
        "model": model_label(response.provider, response.model),
        "choices": [_choice(index, answer) for index, answer in enumerate(answers)],
        "usage": response.usage.as_dict(),
    }


_CONTENT = b'{"index":0,"delta":{"content":'
_CONTENT_END = b'},"logprobs":null,"finish_reason":null}]}\n\n'


class CompletionChunks:
    """OpenAI's ``chat.completion.chunk`` events of one stream (see the module docstring).

    A stream of several choices (``n``, merged by ``compat.dispatch``) gives
    each chunk its choice's ``index``: each choice opens with its role, ends
    with its ``finish_reason``, and numbers its own tool calls.
    """

    def __init__(self, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.frame: dict[str, Any] = {}
        self.tool_index: dict[int, int] = {}
        #: An event's bytes before its choice: ``data: {...the frame...,"choices":[``.
        self._head = b""

    def opening(self, first: StreamingChunk) -> Iterator[bytes]:
        meta = first.metadata
        self.frame = {
            "id": completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model_label(meta.get("provider"), meta.get("model")),
        }
        if self.include_usage:
            self.frame["usage"] = None  # as OpenAI does: only the last chunk carries it
        self._head = b"data: " + orjson.dumps(self.frame)[:-1] + b',"choices":['
        return iter(())

    def chunk(self, chunk: StreamingChunk) -> Iterable[bytes]:
        meta = chunk.metadata
        if (
            chunk.content
            and not chunk.is_final
            and not chunk.finish_reason
            and not chunk.tool_calls
            and 0 in self.tool_index
            and CHOICE_INDEX not in meta
            and CHOICE_COUNT not in meta
            and not meta.get("logprobs")
        ):
            # Most events of a stream: text for the one choice, whose role was sent.
            # The bytes ``_event`` gives, the frame encoded once at the opening.
            text = json_text(chunk.content)
            if text is None:
                return self._events(chunk)
            return (self._head + _CONTENT + text + _CONTENT_END,)
        return self._events(chunk)

    def _events(self, chunk: StreamingChunk) -> Iterator[bytes]:
        merged = CHOICE_COUNT in chunk.metadata
        index = chunk.metadata.get(CHOICE_INDEX, 0) if not chunk.is_final or not merged else 0
        if not (chunk.is_final and merged) and index not in self.tool_index:
            self.tool_index[index] = 0
            yield self._event(index, {"role": "assistant", "content": ""})
        if chunk.content or chunk.metadata.get("logprobs"):
            yield self._event(
                index, {"content": chunk.content}, logprobs=chunk.metadata.get("logprobs")
            )
        for call in chunk.tool_calls or []:
            delta = {"tool_calls": [{"index": self.tool_index[index], **_wire_tool_call(call)}]}
            yield self._event(index, delta)
            self.tool_index[index] += 1
        if not chunk.is_final and chunk.finish_reason:  # one choice of several ended
            yield self._event(index, {}, chunk.finish_reason)
        if chunk.is_final:
            if not merged:
                yield self._event(index, {}, chunk.finish_reason or "stop")
            if self.include_usage and chunk.usage is not None:
                yield sse_frame({**self.frame, "choices": [], "usage": chunk.usage.as_dict()})
            yield sse_frame("[DONE]")

    def failure(self, exc: ProviderError) -> bytes:
        status, message, _ = provider_failure(exc)
        error = {
            "message": message,
            "type": _error_type(status),
            "param": None,
            "code": _error_code(exc, status),
        }
        return sse_frame({"error": error})

    def _event(
        self,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        *,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        return sse_frame({**self.frame, "choices": [choice]})


CHAT_COMPLETIONS = ChatWire(
    endpoint="/v1/chat/completions",
    errors=OPENAI_ERRORS,
    parse=parse_completion_call,
    body=completion_body,
    stream_format=lambda call: CompletionChunks(include_usage=call.include_usage),
)


# --- views --------------------------------------------------------------------


@csrf_exempt  # key clients carry no CSRF token; session callers are checked in check_chat_client
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Answer ``POST /v1/chat/completions`` as OpenAI does, whole or streamed."""
    return await serve_chat(request, CHAT_COMPLETIONS)


async def _provider_models(name: str) -> list[str]:
    """Return the models of live provider NAME, kept a short while (``providers.runtime.model_lists``).

    Any chat client may call these views: they never ask an upstream per
    request, and concurrent callers share one upstream call.
    """
    return await runtime.model_lists.models(name, timeout=MODEL_LIST_SECONDS)


def _model_object(provider: str, model: str) -> dict[str, Any]:
    status = runtime.registry.status(provider)
    return {
        "id": f"{provider}/{model}",
        "object": "model",
        "created": int(status.get("loaded_at") or 0),
        "owned_by": provider,
    }


def _group_object(name: str) -> dict[str, Any]:
    """Return model group NAME as OpenAI lists a model (Echo owns the name)."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "echo"}


def _any_route(provider: str, model: str | None) -> bool:
    return True


@require_GET
async def models(request: HttpRequest) -> HttpResponse:
    """Answer ``GET /v1/models``: every live provider's models, as ``provider/model``, and the model groups.

    A key with a model allow-list sees only the models it may use.
    """
    denial = await check_chat_client(request)
    if denial is not None:
        return openai_denial(denial)
    admission = await limit(request, OPENAI_ERRORS, spends=False)
    if isinstance(admission, HttpResponse):
        return admission
    if admission is not None:
        admission.finish()  # answered from memory: it counts as a request, holds no slot
    identity = getattr(request, "client", None)
    access = identity.access if identity is not None else None
    names = [
        name
        for name in runtime.registry.names()
        if access is None or not access.restricted or access.allows_provider(name)
    ]
    lists = await asyncio.gather(*(_provider_models(name) for name in names))
    data = [
        _model_object(name, model)
        for name, found in zip(names, lists, strict=True)
        for model in found
        if name in runtime.registry and (access is None or access.allows(name, model))
    ]
    allows = access.allows if access is not None and access.restricted else None
    data += [_group_object(name) for name in runtime.manager.public_model_groups(allows)]
    return JsonResponse({"object": "list", "data": data})


@require_GET
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    """Answer ``GET /v1/models/{provider/model}`` (``client.models.retrieve``)."""
    denial = await check_chat_client(request)
    if denial is not None:
        return openai_denial(denial)
    admission = await limit(request, OPENAI_ERRORS, spends=False)
    if isinstance(admission, HttpResponse):
        return admission
    if admission is not None:
        admission.finish()
    identity = getattr(request, "client", None)
    if model_id.split("/", 1)[0] not in runtime.registry:
        allowed = runtime.manager.group_allows(
            model_id, identity.access.allows if identity is not None else _any_route
        )
        if allowed is not None:  # a model group's name
            if not allowed:
                return openai_denial(model_not_allowed(model_id, None))
            return JsonResponse(_group_object(model_id))
    provider, _, model = model_id.partition("/")
    if identity is not None and not identity.access.allows(provider, model):
        return openai_denial(model_not_allowed(provider, model))
    if provider in runtime.registry and model and model in await _provider_models(provider):
        return JsonResponse(_model_object(provider, model))
    return openai_error(
        404,
        f"The model {model_id!r} does not exist: GET /v1/models lists them as 'provider/model'.",
        param="model",
        code="model_not_found",
    )


#: The most inputs one ``/v1/embeddings`` call may send (OpenAI's own limit).
MAX_EMBEDDING_INPUTS = 2048
#: The most token ids one input may hold, and the largest id.
MAX_INPUT_TOKENS = 8192
MAX_TOKEN_ID = 2**31 - 1
#: The largest ``dimensions`` a call may ask for.
MAX_DIMENSIONS = 65536


@dataclass(slots=True)
class EmbeddingsCall:
    """What a ``/v1/embeddings`` body asks for: texts or token-id arrays, DIMENSIONS long."""

    model: str
    input: list[str] | list[list[int]]
    base64: bool
    dimensions: int | None = None

    @property
    def is_tokens(self) -> bool:
        """Return whether the input is token-id arrays."""
        return bool(self.input) and not isinstance(self.input[0], str)


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


def _embedding_input(raw: Any) -> list[str] | list[list[int]]:
    """Return RAW (a string, strings, token ids, or lists of token ids) as texts or token arrays."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        raise RequestFieldError(
            "input", "Must be a string, a non-empty list of strings, or token-id arrays."
        )
    if len(raw) > MAX_EMBEDDING_INPUTS:
        raise RequestFieldError("input", f"At most {MAX_EMBEDDING_INPUTS} inputs per call.")
    if all(isinstance(text, str) for text in raw):
        return raw
    if isinstance(raw[0], str):
        bad = next(i for i, text in enumerate(raw) if not isinstance(text, str))
        raise RequestFieldError(
            f"input.{bad}", "Must be text like the first input: one call does not mix them."
        )
    if all(_token_id(token) for token in raw):
        raw = [raw]  # one input as token ids
    if len(raw) > MAX_EMBEDDING_INPUTS:
        raise RequestFieldError("input", f"At most {MAX_EMBEDDING_INPUTS} inputs per call.")
    for index, tokens in enumerate(raw):
        if not isinstance(tokens, list) or not tokens or not all(_token_id(t) for t in tokens):
            raise RequestFieldError(
                f"input.{index}",
                "Must be text, or a non-empty list of token ids (whole numbers from 0); "
                "one call does not mix them.",
            )
        if len(tokens) > MAX_INPUT_TOKENS:
            raise RequestFieldError(
                f"input.{index}", f"At most {MAX_INPUT_TOKENS} token ids per input."
            )
    return raw


def parse_embeddings_call(data: dict[str, Any]) -> EmbeddingsCall:
    """Return the EmbeddingsCall a ``/v1/embeddings`` body describes.

    Read: ``model``, ``input`` (text, texts, a token-id array or token-id
    arrays, as OpenAI takes them), ``encoding_format`` (``float`` or
    ``base64``), ``dimensions`` and ``user`` (checked, as OpenAI's SDK may send it).
    """
    model = _model(data)
    texts = _embedding_input(data.get("input"))
    encoding = data.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestFieldError("encoding_format", "Must be 'float' or 'base64'.")
    dimensions = data.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise RequestFieldError("dimensions", f"Must be a whole number from 1 to {MAX_DIMENSIONS}.")
    bounded_name(data.get("user"), "user", "an end user's id")
    return EmbeddingsCall(
        model=model, input=texts, base64=encoding == "base64", dimensions=dimensions
    )


def embedding_option_error(
    call: EmbeddingsCall, provider: Any, name: str
) -> RequestFieldError | None:
    """Return the 400 for an option of CALL that PROVIDER (called NAME) cannot honour, else None.

    Vectors of another length than asked would break the client's index
    quietly, and token ids are the upstream's own tokenizer's: no other
    provider can read them back as text.
    """
    declared = getattr(provider, "embedding_options", frozenset())
    honoured = declared if isinstance(declared, frozenset | set) else frozenset()
    if call.dimensions is not None and "dimensions" not in honoured:
        return RequestFieldError(
            "dimensions",
            f"Provider {name!r} returns its model's own dimensions: omit 'dimensions', "
            "or use a provider that supports it (openai).",
        )
    if call.is_tokens and "token_input" not in honoured:
        return RequestFieldError(
            "input",
            f"Provider {name!r} cannot read token-id arrays (they are OpenAI's tokenizer's ids, "
            "and Echo cannot turn them back into text for it): send the text instead "
            "(LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False)).",
        )
    return None


def _encode(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    # OpenAI's base64 format: little-endian float32s (what its SDK asks for by default).
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def _embed(route: Route, call: EmbeddingsCall) -> EmbeddingResponse | RequestFieldError:
    """Return CALL's vectors from ROUTE's provider, with the model that made them and their usage.

    One call on the provider the model names: the manager's retries and
    failover are for chat, and vectors of another model would not compare.
    An option that provider cannot honour is returned as the 400 to send.
    """
    async with runtime.registry.lease(route.provider) as provider:
        refusal = embedding_option_error(call, provider, route.provider)
        if refusal is not None:
            return refusal
        deadline = float(routing_setting(provider.config, "deadline_seconds"))
        request = EmbeddingRequest(input=call.input, model=route.model, dimensions=call.dimensions)
        try:
            async with asyncio.timeout(deadline):
                answer = await provider.create_embeddings(request)
        except ProviderError as exc:
            exc.provider = exc.provider or route.provider
            raise
        except TimeoutError:
            raise ProviderTimeoutError(
                f"Provider {route.provider!r} did not answer within {deadline:g}s.",
                provider=route.provider,
            ) from None
        except Exception as unexpected:
            raise plugin_failure(route, unexpected) from unexpected
        if not isinstance(answer, EmbeddingResponse) or len(answer.vectors) != len(call.input):
            raise plugin_failure(route, TypeError("create_embeddings returned no vector per input"))
        answer.model = answer.model or route.model or provider.config.get("embedding_model")
    return answer


def _embedding_denial(identity: Any, model: str) -> Denial | None:
    """Return the 403 Denial when IDENTITY's key may not embed with MODEL, else None."""
    if identity is None or not identity.access.restricted:
        return None
    try:
        route = runtime.manager.resolve(ChatRequest(messages=[], model=model))
        config = runtime.registry.get(route.provider).config
    except ProviderError:
        return None  # the call below refuses it in its own words
    embedding_model = route.model or config.get("embedding_model")
    if not identity.access.allows(route.provider, embedding_model):
        return model_not_allowed(route.provider, embedding_model)
    return None


@csrf_exempt  # key clients carry no CSRF token; session callers are checked in check_chat_client
@require_POST
async def embeddings(request: HttpRequest) -> HttpResponse:
    """Answer ``POST /v1/embeddings`` from the provider the model names.

    ``usage`` is the provider's own count (openai's upstream), or an
    estimate of one token per word for a provider that reports none. It is
    recorded like a chat's: charged to the key's tokens per minute, and its
    cost to the key's budget. A key may embed only with a model its
    allow-list allows (the provider's ``embedding_model`` when the call names
    the provider only). ``dimensions`` and token-id input go to a provider
    that declares them (``embedding_options``); any other refuses them (400).
    """
    call = await admit(request, OPENAI_ERRORS, parse_embeddings_call)
    if isinstance(call, HttpResponse):
        return call
    identity = getattr(request, "client", None)
    denial = _embedding_denial(identity, call.model)
    if denial is not None:
        return openai_denial(denial)
    admission = await limit(request, OPENAI_ERRORS)
    if isinstance(admission, HttpResponse):
        return admission
    usage = RequestUsage(
        client=await client_label(request),
        endpoint="/v1/embeddings",
        stream=False,
        admission=admission,
        identity=identity,
    )
    try:
        route = runtime.manager.resolve(ChatRequest(messages=[], model=call.model))
        answer = await _embed(route, call)
    except ProviderError as exc:
        usage.failed(exc, model=call.model)
        return openai_provider_error(exc, model=call.model)
    except BaseException:
        usage.release()
        raise
    if isinstance(answer, RequestFieldError):
        usage.release()
        return openai_field_error(answer)
    model = answer.model
    usage.answered(
        ChatResponse(content="", model=model or "", provider=route.provider, usage=answer.usage)
    )
    data = [
        {"object": "embedding", "index": index, "embedding": _encode(vector, call.base64)}
        for index, vector in enumerate(answer.vectors)
    ]
    tokens = answer.usage.prompt_tokens
    response = JsonAnswer(
        {
            "object": "list",
            "data": data,
            "model": model_label(route.provider, model),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
    answered_by(response, route.provider, model)
    with_limit_headers(response, admission, OPENAI_ERRORS)
    return response
