"""Authentication for the async views, which do not go through DRF.

Same rules as the DRF classes in ``authentication.py``: a client key, or a
logged-in session (with its CSRF token checked). The key comes as
``Authorization: Bearer <key>`` (OpenAI's SDK and Echo's own clients) or as
``x-api-key: <key>`` (Anthropic's SDK), so that either SDK works unchanged.

``check_chat_client`` returns a ``Denial`` that each API renders in its own
error shape (Echo's, OpenAI's, Anthropic's); ``authenticate_chat_client``
renders it in Echo's.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from plugins_api.access.client_keys import averify_key, bearer_token
from plugins_api.edge.error_responses import error_body
from plugins_api.models import ClientAPIKey

API_KEY_HEADER = "x-api-key"


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request may not chat: STATUS (401 or 403), Echo's error KIND and a MESSAGE."""

    status: int
    kind: str
    message: str

    @property
    def is_authentication(self) -> bool:
        return self.status == 401


def _unauthorized(message: str) -> Denial:
    return Denial(401, "authentication_required", message)


async def check_chat_client(request: HttpRequest) -> Denial | None:
    """Check that REQUEST may chat; return why not, or None when it may.

    Sets ``request.client`` to the key's identity (None for a session user).
    ``Authorization`` wins over ``x-api-key`` when a request has both.
    """
    request.client = None
    header = request.headers.get("Authorization")
    api_key = request.headers.get(API_KEY_HEADER)
    if header or api_key is not None:
        if header:
            token = bearer_token(header)
            if token is None:
                return _unauthorized("Use 'Authorization: Bearer <key>'.")
        else:
            token = api_key.strip()
            if not token:
                return _unauthorized("The x-api-key header is empty.")
        identity = await averify_key(token)
        if identity is None:
            return _unauthorized("Unknown or revoked API key.")
        if not identity.allows(ClientAPIKey.SCOPE_CHAT):
            return Denial(403, "permission_denied", "This key cannot chat.")
        request.client = identity
        return None
    user = await request.auser()
    if not user.is_authenticated:
        return _unauthorized("Send 'Authorization: Bearer <key>' (a chat or admin key).")
    rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    if rejected is not None:
        return Denial(403, "csrf_failed", "CSRF check failed for a session request.")
    return None


async def authenticate_chat_client(request: HttpRequest) -> JsonResponse | None:
    """Check that REQUEST may chat; return an error response in Echo's shape, or None."""
    denial = await check_chat_client(request)
    if denial is None:
        return None
    response = JsonResponse(error_body(denial.kind, denial.message), status=denial.status)
    if denial.is_authentication:
        response["WWW-Authenticate"] = 'Bearer realm="echo"'
    return response
