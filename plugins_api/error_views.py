"""Django's 404 and 500 pages, in Echo's JSON error shape for API clients.

Paths of the API (and clients that ask for JSON) get ``{"error": {...}}``;
people in a browser get Django's usual pages. Django uses these handlers
when DEBUG is off.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from plugins_api.error_responses import error_body

API_PREFIXES = ("/plugins", "/api/", "/chat", "/health", "/v1/")


def wants_json(request: HttpRequest) -> bool:
    """Return whether REQUEST comes from an API client rather than a browser page."""
    return request.path.startswith(API_PREFIXES) or "application/json" in request.headers.get(
        "Accept", ""
    )


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Answer 404."""
    if wants_json(request):
        return JsonResponse(
            error_body("not_found", f"No such endpoint: {request.path}"), status=404
        )
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """Answer 500 without details: they are in the log."""
    if wants_json(request):
        return JsonResponse(
            error_body("internal_error", "Echo failed to handle the request; see the server log."),
            status=500,
        )
    return defaults.server_error(request)
