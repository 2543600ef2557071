"""``GET /metrics``: Echo's Prometheus metrics, for an admin key or a staff login.

Point Prometheus at it with ``authorization: {credentials_file: ...}`` holding
an admin-scoped client key (``x-api-key`` works too, as on the chat endpoints).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from plugins_api.access.key_credentials import Denial, aauthenticate_key, unauthorized
from plugins_api.access.request_auth import echo_denial
from providers.usage.metrics import exposition


@require_GET
async def metrics(request: HttpRequest) -> HttpResponse:
    """Answer the metrics in Prometheus' text format."""
    # The key comes as on the chat endpoints: a Bearer token or x-api-key.
    found = await aauthenticate_key(request.headers, x_api_key=True)
    if isinstance(found, Denial):
        return echo_denial(found)
    if found is not None:
        allowed = found.is_admin
    else:
        user = await request.auser()
        if not user.is_authenticated:
            return echo_denial(unauthorized("Send an admin key as a Bearer token."))
        allowed = user.is_staff
    if not allowed:
        return echo_denial(
            Denial(403, "permission_denied", "Metrics need an admin key or a staff login.")
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
