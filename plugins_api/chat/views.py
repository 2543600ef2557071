"""``POST /chat``: the guide's chat endpoint, JSON or streamed as SSE.

An async view on the request's hot path: the key check is cached, routing
and the provider call are in memory, nothing blocks the event loop.
A key with rate limits is held to them (``request_auth.admit_client``): a
refusal is a 429 ``rate_limited`` with ``Retry-After``. A key with a budget
whose period's spend has reached it gets a 429 ``budget_exceeded`` until
the period ends (``key_budgets``); the answer's cost is charged to it. A key with a model
allow-list gets its default model when the call names none, a 403
``model_not_allowed`` for a model it may not use, and no failover to one
(``request_auth.check_model_access``, ``route_filter``).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from plugins_api.access.key_budgets import BudgetRefusal
from plugins_api.access.key_limit_headers import openai_headers
from plugins_api.access.key_limits import LimitRefusal
from plugins_api.access.request_auth import (
    Denial,
    admit_client,
    authenticate_chat_client,
    check_model_access,
    echo_budget_refusal,
    echo_denial,
    echo_limit_refusal,
    route_filter,
)
from plugins_api.edge.chat_requests import RequestFieldError, parse_chat_call, parse_json
from plugins_api.edge.error_responses import error_body, error_response
from plugins_api.edge.json_answer import JsonAnswer
from plugins_api.edge.request_usage import RequestUsage, client_label
from plugins_api.edge.sse import chat_event_stream, event_stream_response, first_chunk
from providers.errors import ProviderError
from providers.runtime import process as runtime


@csrf_exempt  # Bearer clients carry no CSRF token; session callers are checked in authenticate_chat_client
@require_POST
async def chat(request: HttpRequest) -> HttpResponse:
    """Answer a chat request, as JSON or (``"stream": true``) as Server-Sent Events."""
    denied = await authenticate_chat_client(request)
    if denied is not None:
        return denied
    try:
        call = parse_chat_call(parse_json(request.body))
    except RequestFieldError as exc:
        return JsonResponse(error_body("invalid_request", exc.message, field=exc.field), status=400)
    identity = getattr(request, "client", None)
    checked = check_model_access(identity, call.request, call.provider)
    if isinstance(checked, Denial):
        return echo_denial(checked)
    call.request = checked
    allow = route_filter(identity)
    admission = await admit_client(request)
    if isinstance(admission, BudgetRefusal):
        return echo_budget_refusal(admission)
    if isinstance(admission, LimitRefusal):
        return echo_limit_refusal(admission)
    counters = openai_headers(admission.state) if admission is not None else {}
    usage = RequestUsage(
        client=await client_label(request),
        endpoint="/chat",
        stream=call.stream,
        admission=admission,
        identity=identity,
    )
    try:
        if not call.stream:
            response = await runtime.manager.chat_completion(
                call.request, call.provider, allow=allow
            )
            overhead = usage.answered(response)
            answer = JsonAnswer(response.as_dict(), headers=counters)
            if overhead is not None:
                answer["X-Echo-Overhead-Ms"] = f"{overhead:.2f}"
            return answer
        chunks = runtime.manager.chat_completion_stream(call.request, call.provider, allow=allow)
        first = await first_chunk(chunks)
        usage.first_chunk()
    except ProviderError as exc:
        usage.failed(exc, provider=call.provider or "", model=call.request.model or "")
        return error_response(exc)
    except BaseException:  # cancelled (the client left) or a bug: the slot is given back
        usage.release()
        raise
    streamed = event_stream_response(chat_event_stream(first, chunks, usage))
    for name, value in counters.items():
        streamed[name] = value
    return streamed
