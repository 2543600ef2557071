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

``admit_client`` then holds an authenticated key to its rate limits
(``key_limits``): an unlimited key or a session user costs nothing, a
limited one gets an ``Admission`` to finish when its call ends, or a
``LimitRefusal`` each API renders (``echo_limit_refusal`` in Echo's shape).
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from plugins_api.access.key_credentials import SEND_A_KEY, Denial, aauthenticate_key, unauthorized
from plugins_api.access.key_limit_headers import openai_headers, retry_headers
from plugins_api.access.key_limits import Admission, LimitRefusal, key_limiter
from plugins_api.edge.error_responses import error_body
from plugins_api.models import ClientAPIKey


async def check_chat_client(request: HttpRequest) -> Denial | None:
    """Check that REQUEST may chat; return why not, or None when it may.

    Sets ``request.client`` to the key's identity (None for a session user).
    ``Authorization`` wins over ``x-api-key`` when a request has both.
    """
    request.client = None
    found = await aauthenticate_key(request.headers, x_api_key=True)
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


async def admit_client(request: HttpRequest) -> Admission | LimitRefusal | None:
    """Hold REQUEST's key to its limits: its Admission, its refusal, or None when it has none.

    Call it after ``check_chat_client``; a session user (no key) has no limits.
    """
    identity = getattr(request, "client", None)
    if identity is None or not identity.limits.any:
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
