"""Authentication for the async views, which do not go through DRF.

Same rules as the DRF classes in ``authentication.py``: a Bearer client key,
or a logged-in session (with its CSRF token checked).
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from plugins_api.client_keys import averify_key, bearer_token
from plugins_api.error_responses import error_body
from plugins_api.models import ClientAPIKey


def _unauthorized(message: str) -> JsonResponse:
    response = JsonResponse(error_body("authentication_required", message), status=401)
    response["WWW-Authenticate"] = 'Bearer realm="echo"'
    return response


async def authenticate_chat_client(request: HttpRequest) -> JsonResponse | None:
    """Check that REQUEST may chat; return an error response, or None when it may.

    Sets ``request.client`` to the key's identity (None for a session user).
    """
    request.client = None
    header = request.headers.get("Authorization")
    if header:
        token = bearer_token(header)
        if token is None:
            return _unauthorized("Use 'Authorization: Bearer <key>'.")
        identity = await averify_key(token)
        if identity is None:
            return _unauthorized("Unknown or revoked API key.")
        if not identity.allows(ClientAPIKey.SCOPE_CHAT):
            return JsonResponse(
                error_body("permission_denied", "This key cannot chat."), status=403
            )
        request.client = identity
        return None
    user = await request.auser()
    if not user.is_authenticated:
        return _unauthorized("Send 'Authorization: Bearer <key>' (a chat or admin key).")
    rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    if rejected is not None:
        return JsonResponse(
            error_body("csrf_failed", "CSRF check failed for a session request."), status=403
        )
    return None
