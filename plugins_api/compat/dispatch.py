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

A call that asks for ``n`` choices (``ChatRequest.n``, OpenAI's ``n``) is
passed whole to a provider that answers several natively (it declares ``n``
in ``supported_options``: openai) when it is not streamed. Otherwise Echo
makes N calls at once through the manager, each a normal routed call with
its retries and failover, and merges them: ``more_choices`` for a whole
answer; for a stream, the N streams' chunks interleaved as they come, each
tagged with its choice (``CHOICE_INDEX`` in its metadata; a choice's end is a
chunk with its ``finish_reason`` that is not final), then one final chunk
with the summed usage (``CHOICE_COUNT`` in its metadata). Either way the
call counts as one request for the key's limits and is charged all tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

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
from plugins_api.edge.json_answer import JsonAnswer
from plugins_api.edge.request_usage import RequestUsage, client_label
from plugins_api.edge.sse import StreamFormat, encode_stream, event_stream_response, first_chunk
from providers.errors import ProviderError
from providers.runtime import process as runtime
from providers.runtime.manager import RouteFilter
from providers.runtime.request_options import supported_options
from providers.types import ChatRequest, ChatResponse, StreamingChunk, Usage

#: The metadata key of a merged stream's chunk that says which choice it belongs to.
CHOICE_INDEX = "choice_index"
#: The metadata key of a merged stream's final chunk: how many choices it merged.
CHOICE_COUNT = "choice_count"

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


# --- several choices (n) -------------------------------------------------------


def answers_choices_natively(request: ChatRequest) -> bool:
    """Return whether REQUEST's first route is a provider that answers ``n`` choices itself."""
    try:
        route = runtime.manager.resolve(request)
        provider = runtime.registry.get(route.provider)
    except ProviderError:
        return False  # the call itself refuses it in its own words
    return "n" in supported_options(provider)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def fan_out_completion(
    request: ChatRequest, count: int, *, allow: RouteFilter | None
) -> ChatResponse:
    """Return COUNT answers to REQUEST, made at once through the manager, as one answer.

    The first is the answer; the others are its ``more_choices``; the usage
    is their sum. One failure fails the call (the others are cancelled).
    """
    tasks = [
        asyncio.ensure_future(runtime.manager.chat_completion(request, allow=allow))
        for _ in range(count)
    ]
    try:
        answers = await asyncio.gather(*tasks)
    except BaseException:
        await _cancel(tasks)
        raise
    first = answers[0]
    first.more_choices = list(answers[1:])
    first.usage = Usage(
        prompt_tokens=sum(answer.usage.prompt_tokens for answer in answers),
        completion_tokens=sum(answer.usage.completion_tokens for answer in answers),
    )
    return first


async def fan_out_stream(
    request: ChatRequest, count: int, *, allow: RouteFilter | None
) -> AsyncIterator[StreamingChunk]:
    """Yield the chunks of COUNT streams of REQUEST, run at once, interleaved (see the module docstring).

    A failure of any stream fails the merged one; one that ends without its
    final chunk ends the merged one early (the SSE writer says so).
    """
    queue: asyncio.Queue[tuple[int, StreamingChunk | None, BaseException | None]] = asyncio.Queue(
        maxsize=4 * count
    )

    async def pump(index: int) -> None:
        stream = runtime.manager.chat_completion_stream(request, allow=allow)
        try:
            async for chunk in stream:
                await queue.put((index, chunk, None))
                if chunk.is_final:
                    return
            await queue.put((index, None, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a ProviderError, or a bug: the merged stream raises it
            await queue.put((index, None, exc))
        finally:
            await stream.aclose()

    tasks = [asyncio.ensure_future(pump(index)) for index in range(count)]
    try:
        finished = 0
        prompt = completion = 0
        reported = False
        first_meta: dict[str, Any] | None = None
        model: str | None = None
        while finished < count:
            index, chunk, error = await queue.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            metadata = {**chunk.metadata, CHOICE_INDEX: index}
            if first_meta is None:
                first_meta = dict(chunk.metadata)
            model = model or chunk.model
            if not chunk.is_final:
                yield dataclasses.replace(chunk, metadata=metadata)
                continue
            finished += 1
            if chunk.usage is not None:
                reported = True
                prompt += chunk.usage.prompt_tokens
                completion += chunk.usage.completion_tokens
            yield dataclasses.replace(
                chunk,
                is_final=False,
                finish_reason=chunk.finish_reason or "stop",
                usage=None,
                metadata=metadata,
            )
        yield StreamingChunk(
            is_final=True,
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion) if reported else None,
            model=model,
            metadata={**(first_meta or {}), CHOICE_COUNT: count},
        )
    finally:
        await _cancel(tasks)


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
    count = call.request.n or 1
    fan_out = count > 1 and (call.stream or not answers_choices_natively(call.request))
    single = dataclasses.replace(call.request, n=None) if fan_out else call.request
    try:
        if not call.stream:
            if fan_out:
                answer = await fan_out_completion(single, count, allow=allow)
            else:
                answer = await runtime.manager.chat_completion(call.request, allow=allow)
            overhead = usage.answered(answer)
            response = JsonAnswer(wire.body(answer))
            answered_by(response, answer.provider, answer.model, overhead)
            with_limit_headers(response, admission, wire.errors)
            return response
        if fan_out:
            chunks = fan_out_stream(single, count, allow=allow)
        else:
            chunks = runtime.manager.chat_completion_stream(call.request, allow=allow)
        first = await first_chunk(chunks)
        usage.first_chunk()
    except ProviderError as exc:
        usage.failed(exc, model=call.request.model or "")
        return wire.errors.provider_error(exc, model=call.request.model)
    except BaseException:  # cancelled (the client left) or a bug: the slot is given back
        usage.release()
        raise
    events = encode_stream(first, chunks, wire.stream_format(call), usage)
    streamed = event_stream_response(events)
    answered_by(streamed, first.metadata.get("provider"), first.metadata.get("model"))
    with_limit_headers(streamed, admission, wire.errors)
    return streamed
