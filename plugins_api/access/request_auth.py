"""Who may chat through the async views (``/chat``, ``/v1/...``), which do not go through DRF.

Same rules as the DRF classes in ``authentication.py``: a client key, or a
logged-in session (with its CSRF token checked). The key is read and
verified by the one key authentication (``key_credentials``); these views
take it as ``Authorization: Bearer <key>`` (OpenAI's SDK and Echo's own
clients) or as ``x-api-key: <key>`` (Anthropic's SDK), so that either SDK
works unchanged.

``check_chat_client`` returns a ``Denial`` that each API renders in its own
error shape (Echo's, OpenAI's, Anthropic's); ``authenticate_chat_client``
renders it in Echo's (``echo_denial``).

``admit_client`` then holds an authenticated key to its budget
(``key_budgets``) and its rate limits (``key_limits``): a key without them or
a session user costs nothing, a limited one gets an ``Admission`` to finish
when its call ends, or a ``BudgetRefusal`` / ``LimitRefusal`` each API renders
(``echo_budget_refusal`` / ``echo_limit_refusal`` in Echo's shape). The budget
is checked first: a call refused for its budget takes no rate-limit slot.

``check_model_access`` holds a key to its model allow-list
(``key_model_access``): it puts the key's default model on a call that names
none, and refuses (403 ``model_not_allowed``, naming the model) a call whose
first route the key may not use. ``route_filter`` is what the manager is
then given, so that a failover never lands on a provider or model the key
may not use: such a fallback is skipped, not served.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from plugins_api.access.client_keys import ClientIdentity
from plugins_api.access.key_budgets import BudgetRefusal, budget_ledger
from plugins_api.access.key_credentials import (
    SEND_A_KEY,
    Denial,
    aauthenticate_key,
    request_headers,
    unauthorized,
)
from plugins_api.access.key_limit_headers import openai_headers, retry_headers
from plugins_api.access.key_limits import Admission, LimitRefusal, key_limiter
from plugins_api.edge.error_responses import error_body
from plugins_api.models import ClientAPIKey
from providers.errors import ProviderError
from providers.runtime import process as runtime
from providers.runtime.manager import RouteFilter
from providers.types import ChatRequest


async def check_chat_client(request: HttpRequest) -> Denial | None:
    """Check that REQUEST may chat; return why not, or None when it may.

    Sets ``request.client`` to the key's identity (None for a session user).
    ``Authorization`` wins over ``x-api-key`` when a request has both.
    """
    request.client = None
    found = await aauthenticate_key(
        request_headers(request), x_api_key=True, scope=getattr(request, "scope", None)
    )
    if isinstance(found, Denial):
        return found
    if found is not None:
        if not found.allows(ClientAPIKey.SCOPE_CHAT):
            return Denial(403, "permission_denied", "This key cannot chat.")
        request.client = found
        return None
    user = await request.auser()
    if not user.is_authenticated:
        return unauthorized(SEND_A_KEY)
    rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    if rejected is not None:
        return Denial(403, "csrf_failed", "CSRF check failed for a session request.")
    return None


def echo_denial(denial: Denial) -> JsonResponse:
    """Render DENIAL in Echo's error shape, with the Bearer challenge on a 401."""
    response = JsonResponse(error_body(denial.kind, denial.message), status=denial.status)
    if denial.is_authentication:
        response["WWW-Authenticate"] = 'Bearer realm="echo"'
    return response


async def authenticate_chat_client(request: HttpRequest) -> JsonResponse | None:
    """Check that REQUEST may chat; return an error response in Echo's shape, or None."""
    denial = await check_chat_client(request)
    return None if denial is None else echo_denial(denial)


async def admit_client(
    request: HttpRequest, *, spends: bool = True
) -> Admission | BudgetRefusal | LimitRefusal | None:
    """Hold REQUEST's key to its budget and limits: its Admission, a refusal, or None (no limits).

    Call it after ``check_chat_client``; a session user (no key) has no
    limits. SPENDS says whether the call may cost money (a chat); only then
    is the key's budget checked, before its rate limits.
    """
    identity = getattr(request, "client", None)
    if identity is None:
        return None
    if spends and identity.budget_usd is not None:
        refused = await budget_ledger().check(identity)
        if refused is not None:
            return refused
    if not identity.limits.any:
        return None
    return await key_limiter().admit(identity.key_id, identity.limits)


def echo_limit_refusal(refusal: LimitRefusal) -> JsonResponse:
    """Render REFUSAL in Echo's error shape: 429 ``rate_limited`` (503 when limits cannot be checked)."""
    kind = "rate_limited" if refusal.status == 429 else "limits_unavailable"
    response = JsonResponse(
        error_body(
            kind, refusal.message, limit=refusal.limit, retry_after=refusal.retry_after_seconds
        ),
        status=refusal.status,
    )
    for name, value in {**retry_headers(refusal), **openai_headers(refusal.state)}.items():
        response[name] = value
    return response


def echo_budget_refusal(refusal: BudgetRefusal) -> JsonResponse:
    """Render REFUSAL in Echo's error shape: 429 ``budget_exceeded`` (503 when it cannot be checked).

    The body names the budget, its period and when it resets; ``Retry-After``
    is the wait until then, and ``x-should-retry: false`` tells SDKs not to
    retry by themselves.
    """
    extra: dict[str, object] = {"retry_after": refusal.retry_after_seconds}
    if refusal.status == 429:
        extra.update(
            budget_usd=f"{refusal.budget_usd.normalize():f}",
            period=refusal.period,
            resets_at=refusal.resets_at_text,
        )
    response = JsonResponse(
        error_body(refusal.kind, refusal.message, **extra), status=refusal.status
    )
    for name, value in refusal.headers().items():
        response[name] = value
    return response


def with_default_model(
    identity: ClientIdentity | None, request: ChatRequest, provider_name: str | None
) -> ChatRequest:
    """Return REQUEST with IDENTITY's default model when it names no model (and no other provider)."""
    default = identity.access.default_model if identity is not None else None
    if request.model or not default:
        return request
    prefix, _, name = default.partition("/")
    if provider_name is None:
        return request.with_model(default)
    return request.with_model(name) if provider_name == prefix else request


def model_not_allowed(provider: str, model: str | None) -> Denial:
    """Return the 403 Denial of PROVIDER's MODEL, naming it."""
    label = f"{provider}/{model}" if model else provider
    return Denial(
        403,
        "model_not_allowed",
        f"This key may not use the model {label!r}; ask for access or use another model.",
    )


def check_model_access(
    identity: ClientIdentity | None, request: ChatRequest, provider_name: str | None = None
) -> ChatRequest | Denial:
    """Return REQUEST as IDENTITY may send it (its default model put in), or the 403 Denial.

    The route is resolved as the manager resolves it; a request no provider
    can take is let through for the manager to refuse in its own words. A
    session user (IDENTITY None) may use every model.
    """
    request = with_default_model(identity, request, provider_name)
    if identity is None or not identity.access.restricted:
        return request
    try:
        route = runtime.manager.resolve(request, provider_name)
    except ProviderError:
        return request
    if route.group is not None:
        # A group is open to a key that may use one of its deployments: the
        # route filter then keeps each call on those, whichever is drawn.
        allowed = runtime.manager.group_allows(route.group, identity.access.allows)
        return request if allowed else model_not_allowed(route.group, None)
    model = route.model
    if model is None and route.provider in runtime.registry:
        model = runtime.registry.get(route.provider).config.get("default_model")
    if not identity.access.allows(route.provider, model):
        return model_not_allowed(route.provider, model)
    return request


def route_filter(identity: ClientIdentity | None) -> RouteFilter | None:
    """Return the manager's filter of the routes IDENTITY may use (None: every route)."""
    if identity is None or not identity.access.restricted:
        return None
    return identity.access.allows
