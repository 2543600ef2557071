"""Serve a compatible API's call: authenticate, parse, route through the manager, record usage, answer.

What ``/v1/chat/completions`` (``openai_api``) and ``/v1/messages``
(``anthropic_api``) share, so that each of them is only its wire format: a
``CompatErrors`` (how it refuses) and a ``ChatWire`` (how it reads a body and
writes an answer or a stream). The conventions both follow live here too:
an answer's model is ``provider/model`` (as ``GET /v1/models`` lists it), the
``x-echo-provider`` / ``x-echo-model`` headers say who answered, and a 404
for a ``prefix/model`` whose prefix is no provider says so. A key with rate
limits (``key_limits``) is admitted after its body is read and before the
provider is called (``limit``); its refusal and its counters go out in the
API's own shape and headers (``CompatErrors.rate_limited``, ``limit_headers``).
A key whose budget is spent (``key_budgets``) is refused in the same place
(``CompatErrors.budget_exceeded``: 429 with ``x-should-retry: false``), before
its rate limits are counted; the answer's cost is charged to its budget.
A key with a model allow-list (``key_model_access``) is refused a model it
may not use (403 ``model_not_allowed`` in the API's shape, before its limits
are counted), and the manager skips any fallback it may not use
(``request_auth.route_filter``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from plugins_api.access.key_budgets import BudgetRefusal
from plugins_api.access.key_limits import Admission, LimitRefusal, LimitState
from plugins_api.access.request_auth import (
    Denial,
    admit_client,
    check_chat_client,
    check_model_access,
    route_filter,
)
from plugins_api.edge.chat_requests import RequestFieldError, parse_json
from plugins_api.edge.error_responses import provider_error_body
from plugins_api.edge.request_usage import RequestUsage, client_label
from plugins_api.edge.sse import StreamFormat, encode_stream, event_stream_response, first_chunk
from providers.errors import ProviderError
from providers.runtime import process as runtime
from providers.types import ChatRequest, ChatResponse

PROVIDER_HEADER = "x-echo-provider"
MODEL_HEADER = "x-echo-model"
OVERHEAD_HEADER = "x-echo-overhead-ms"


# --- answers and failures -----------------------------------------------------


def model_label(provider: str | None, model: str | None) -> str:
    """Return the ``provider/model`` name of an answer (as ``GET /v1/models`` lists it)."""
    if provider and model:
        return f"{provider}/{model}"
    return model or provider or ""


def answered_by(
    response: HttpResponse | StreamingHttpResponse,
    provider: str | None,
    model: str | None,
    overhead_ms: float | None = None,
) -> None:
    """Say in RESPONSE's headers which provider and model answered, and what Echo added."""
    if provider:
        response[PROVIDER_HEADER] = provider
    if model:
        response[MODEL_HEADER] = model
    if overhead_ms is not None:
        response[OVERHEAD_HEADER] = f"{overhead_ms:.2f}"


def unknown_prefix_hint(model: str | None) -> str:
    """Return a sentence for a 404 when MODEL's ``prefix/`` names no live provider, else ''."""
    if not model or "/" not in model:
        return ""
    prefix = model.split("/", 1)[0]
    if prefix in runtime.registry:
        return ""
    return (
        f" No provider is named {prefix!r} either: name the model as 'provider/model' "
        "(GET /v1/models lists them)."
    )


def provider_failure(
    exc: ProviderError, *, model: str | None = None
) -> tuple[int, str, dict[str, str]]:
    """Return (status, message, headers) for provider error EXC, its secrets stripped.

    A 404 for MODEL, when its ``prefix/`` is no provider, says so: the model
    string is the only place a compatible client names a provider. The
    headers name the provider that failed.
    """
    status, body, headers = provider_error_body(exc)
    message = body["error"]["message"]
    if status == 404:
        message += unknown_prefix_hint(model)
    if exc.provider:
        headers[PROVIDER_HEADER] = exc.provider
    return status, message, headers


# --- serving ------------------------------------------------------------------


class ProviderErrorRenderer(Protocol):
    """Render provider error EXC for a call that asked for MODEL."""

    def __call__(self, exc: ProviderError, *, model: str | None = None) -> HttpResponse: ...


@dataclass(frozen=True, slots=True)
class CompatErrors:
    """How one compatible API refuses: a caller it denies, a bad field, a provider's failure, a limit.

    LIMIT_HEADERS names a key's rate-limit counters as the API's SDKs read them;
    BUDGET_EXCEEDED renders a key's spent budget.
    """

    denial: Callable[[Denial], HttpResponse]
    field_error: Callable[[RequestFieldError], HttpResponse]
    provider_error: ProviderErrorRenderer
    rate_limited: Callable[[LimitRefusal], HttpResponse]
    limit_headers: Callable[[LimitState], dict[str, str]]
    budget_exceeded: Callable[[BudgetRefusal], HttpResponse]


@dataclass(slots=True)
class ChatCall:
    """What a compatible chat body asks for: the common request, and whether to stream it."""

    request: ChatRequest
    stream: bool


CallT = TypeVar("CallT")
ChatCallT = TypeVar("ChatCallT", bound=ChatCall)


@dataclass(frozen=True, slots=True)
class ChatWire(Generic[ChatCallT]):
    """One compatible API's chat endpoint: its path and its wire format."""

    endpoint: str  # as usage records it
    errors: CompatErrors
    parse: Callable[[dict[str, Any]], ChatCallT]
    body: Callable[[ChatResponse], dict[str, Any]]
    stream_format: Callable[[ChatCallT], StreamFormat]


async def admit(
    request: HttpRequest, errors: CompatErrors, parse: Callable[[dict[str, Any]], CallT]
) -> CallT | HttpResponse:
    """Return the call REQUEST's JSON body describes, read by PARSE, once its caller may chat.

    Otherwise return the refusal, in ERRORS' shape.
    """
    denial = await check_chat_client(request)
    if denial is not None:
        return errors.denial(denial)
    try:
        return parse(parse_json(request.body))
    except RequestFieldError as exc:
        return errors.field_error(exc)


async def limit(
    request: HttpRequest, errors: CompatErrors, *, spends: bool = True
) -> Admission | HttpResponse | None:
    """Hold REQUEST's key to its budget and rate limits: its Admission, None (no limits), or the refusal.

    SPENDS says whether the call may cost money (its budget is checked then).
    """
    found = await admit_client(request, spends=spends)
    if isinstance(found, BudgetRefusal):
        return errors.budget_exceeded(found)
    return errors.rate_limited(found) if isinstance(found, LimitRefusal) else found


def with_limit_headers(
    response: HttpResponse | StreamingHttpResponse,
    admission: Admission | None,
    errors: CompatErrors,
) -> None:
    """Put ADMISSION's counters on RESPONSE in ERRORS' API's names (nothing for no limits)."""
    if admission is not None:
        for name, value in errors.limit_headers(admission.state).items():
            response[name] = value


async def serve_chat(
    request: HttpRequest, wire: ChatWire[Any]
) -> HttpResponse | StreamingHttpResponse:
    """Answer chat REQUEST in WIRE's format, whole or streamed, through the manager.

    A stream answers 200 only once its first chunk is in; a failure before
    that gets the honest status in WIRE's error shape. Usage is recorded
    either way.
    """
    call = await admit(request, wire.errors, wire.parse)
    if isinstance(call, HttpResponse):
        return call
    identity = getattr(request, "client", None)
    checked = check_model_access(identity, call.request)
    if isinstance(checked, Denial):
        return wire.errors.denial(checked)
    call.request = checked
    allow = route_filter(identity)
    admission = await limit(request, wire.errors)
    if isinstance(admission, HttpResponse):
        return admission
    usage = RequestUsage(
        client=await client_label(request),
        endpoint=wire.endpoint,
        stream=call.stream,
        admission=admission,
        identity=identity,
    )
    try:
        if not call.stream:
            answer = await runtime.manager.chat_completion(call.request, allow=allow)
            overhead = usage.answered(answer)
            response = JsonResponse(wire.body(answer))
            answered_by(response, answer.provider, answer.model, overhead)
            with_limit_headers(response, admission, wire.errors)
            return response
        chunks = runtime.manager.chat_completion_stream(call.request, allow=allow)
        first = await first_chunk(chunks)
        usage.first_chunk()
    except ProviderError as exc:
        usage.failed(exc, model=call.request.model or "")
        return wire.errors.provider_error(exc, model=call.request.model)
    except BaseException:  # cancelled (the client left) or a bug: the slot is given back
        usage.release()
        raise
    events = encode_stream(first, usage.track(first, chunks), wire.stream_format(call))
    streamed = event_stream_response(events)
    answered_by(streamed, first.metadata.get("provider"), first.metadata.get("model"))
    with_limit_headers(streamed, admission, wire.errors)
    return streamed
