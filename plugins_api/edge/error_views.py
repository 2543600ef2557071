"""Django's 400, 404 and 500 pages, in Echo's JSON error shape for API clients.

Paths of the API (and clients that ask for JSON) get ``{"error": {...}}``;
people in a browser get Django's usual pages. Django uses these handlers
when DEBUG is off.
"""

from __future__ import annotations

from django.core.exceptions import DisallowedHost
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.views import defaults

from plugins_api.edge.api_paths import is_api_path
from plugins_api.edge.error_responses import error_body


def wants_json(request: HttpRequest) -> bool:
    """Return whether REQUEST comes from an API client rather than a browser page."""
    return is_api_path(request.path) or "application/json" in request.headers.get("Accept", "")


def bad_request(request: HttpRequest, message: str, *, field: str | None = None) -> HttpResponse:
    """Answer 400 with MESSAGE about FIELD (a page with the message for a browser)."""
    if wants_json(request):
        return JsonResponse(error_body("invalid_request", message, field=field), status=400)
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


def refused_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Answer 400 to a request Django refused (a Host not in ALLOWED_HOSTS, a malformed request).

    The exception's own text is not shown: it may quote the client's input at length.
    """
    if not wants_json(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        message = "This server does not answer to that Host header (ALLOWED_HOSTS)."
        return bad_request(request, message, field="Host")
    return bad_request(request, "The request is malformed.")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Answer 404."""
    if wants_json(request):
        return JsonResponse(
            error_body("not_found", f"No such endpoint: {request.path}"), status=404
        )
    return defaults.page_not_found(request, exception)


def unusable_path(request: HttpRequest) -> HttpResponse:
    """Answer 404 to a path holding control characters: no name Echo serves has one."""
    message = "Nothing here: the URL path holds control characters."
    if wants_json(request):
        return JsonResponse(error_body("not_found", message, field="path"), status=404)
    return defaults.page_not_found(request, Http404(message))


def server_error(request: HttpRequest) -> HttpResponse:
    """Answer 500 without details: they are in the log."""
    if wants_json(request):
        return JsonResponse(
            error_body("internal_error", "Echo failed to handle the request; see the server log."),
            status=500,
        )
    return defaults.server_error(request)
