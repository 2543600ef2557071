"""``GET /metrics``: Echo's Prometheus metrics, for an admin key or a staff login.

Point Prometheus at it with ``authorization: {credentials_file: ...}`` holding
an admin-scoped client key (``x-api-key`` works too, as on the chat endpoints).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from plugins_api.access.client_keys import averify_key, bearer_token
from plugins_api.access.request_auth import API_KEY_HEADER
from plugins_api.edge.error_responses import error_body
from providers.usage.metrics import REGISTRY


@require_GET
async def metrics(request: HttpRequest) -> HttpResponse:
    """Answer the metrics in Prometheus' text format."""
    # The key comes as Echo's other endpoints take it: a Bearer token or x-api-key.
    authorization = request.headers.get("Authorization")
    token = bearer_token(authorization)
    if token is None and not authorization:
        token = (request.headers.get(API_KEY_HEADER) or "").strip() or None
    if token is not None:
        identity = await averify_key(token)
        if identity is None:
            response = JsonResponse(
                error_body("authentication_required", "Unknown or revoked API key."), status=401
            )
            response["WWW-Authenticate"] = 'Bearer realm="echo"'
            return response
        allowed = identity.is_admin
    else:
        user = await request.auser()
        if not user.is_authenticated:
            response = JsonResponse(
                error_body("authentication_required", "Send an admin key as a Bearer token."),
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="echo"'
            return response
        allowed = user.is_staff
    if not allowed:
        return JsonResponse(
            error_body("permission_denied", "Metrics need an admin key or a staff login."),
            status=403,
        )
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
