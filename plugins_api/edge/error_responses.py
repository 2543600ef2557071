"""The one JSON error shape of Echo's API: ``{"error": {"type", "message", "field"?, "provider"?}}``.

Both DRF views (through ``api_exception_handler``) and the async chat views
(through ``error_response``) render errors here, so a client sees one shape
and an honest status whatever failed.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.http import JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from providers.errors import ProviderError, RateLimitError
from providers.runtime import process as runtime
from providers.runtime.retry_policy import retry_after_seconds
from providers.secrets.masking import redact

logger = logging.getLogger(__name__)


def provider_error_body(exc: ProviderError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Return (status, body, headers) for a provider error, secrets stripped."""
    body = exc.as_dict()
    # By the secret names the registry read when it built the instance: asking
    # the plugin again here would let a plugin that raises turn a 4xx into a 500.
    secrets = runtime.registry.secret_values(exc.provider) if exc.provider else []
    body["message"] = redact(body["message"], secrets)
    headers = {}
    # Clamped: a plugin's inf or NaN retry_after would make ceil() raise (a 500).
    retry_after = retry_after_seconds(exc.retry_after)
    # A rate limit, or a 503 that knows when it ends (an open breaker, an
    # upstream's own Retry-After): clients and SDKs wait that long, not guess.
    if retry_after is not None and (isinstance(exc, RateLimitError) or exc.http_status == 503):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return exc.http_status, {"error": body}, headers


def error_body(
    kind: str, message: str, *, field: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Return the error shape for KIND and MESSAGE."""
    error: dict[str, Any] = {"type": kind, "message": message}
    if field:
        error["field"] = field
    error.update({k: v for k, v in extra.items() if v is not None})
    return {"error": error}


def error_response(exc: ProviderError) -> JsonResponse:
    """Render a provider error as a Django JsonResponse (for the async views)."""
    status, body, headers = provider_error_body(exc)
    response = JsonResponse(body, status=status)
    for key, value in headers.items():
        response[key] = value
    return response


def _first_field(detail: Any, prefix: str = "") -> tuple[str | None, str]:
    """Return the first (dotted field, message) in a DRF validation detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors":
                name = prefix or None
            field, message = _first_field(value, name or "")
            return field or name, message
    if isinstance(detail, list) and detail:
        for index, item in enumerate(detail):
            if isinstance(item, (dict, list)):
                return _first_field(item, f"{prefix}.{index}" if prefix else str(index))
        return (prefix or None), str(detail[0])
    return (prefix or None), str(detail)


def _flat_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Return a DRF validation DETAIL as {dotted field: [messages]}, as ``field`` names them.

    DRF nests the errors of a list or object field by index or key
    (``{"fallbacks": {"0": [...]}}``); one flat map keeps the documented shape.
    """
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = (
                prefix if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            )
            for field, messages in _flat_errors(value, name).items():
                flat.setdefault(field, []).extend(messages)
        return flat
    if isinstance(detail, list):
        flat = {}
        for index, item in enumerate(detail):
            if isinstance(item, (dict, list)):
                nested = _flat_errors(item, f"{prefix}.{index}" if prefix else str(index))
                for field, messages in nested.items():
                    flat.setdefault(field, []).extend(messages)
            else:
                flat.setdefault(prefix or "non_field_errors", []).append(str(item))
        return flat
    return {prefix or "non_field_errors": [str(detail)]}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler: render every API error in Echo's shape."""
    if isinstance(exc, ProviderError):
        status, body, headers = provider_error_body(exc)
        return Response(body, status=status, headers=headers)
    if isinstance(exc, drf.ValidationError):
        field, message = _first_field(exc.detail)
        body = error_body("invalid_request", message, field=field)
        if isinstance(exc.detail, dict):
            body["error"]["errors"] = _flat_errors(exc.detail)
        return Response(body, status=400)
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return Response(
            error_body("authentication_required", str(exc.detail)),
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="echo"'},
        )
    if isinstance(exc, drf.PermissionDenied):
        return Response(error_body("permission_denied", str(exc.detail)), status=403)
    if isinstance(exc, drf.NotFound):
        return Response(error_body("not_found", str(exc.detail)), status=404)
    if isinstance(exc, drf.ParseError):
        # BoundedJSONParser's errors name the culprit (``messages.0.content``).
        field = getattr(exc, "field", None)
        return Response(error_body("invalid_json", str(exc.detail), field=field), status=400)
    if isinstance(exc, drf.Throttled):
        headers = {"Retry-After": str(exc.wait)} if exc.wait else {}
        return Response(error_body("rate_limited", str(exc.detail)), status=429, headers=headers)
    if isinstance(exc, drf.APIException):
        return Response(error_body(exc.default_code, str(exc.detail)), status=exc.status_code)
    from django.db import DatabaseError
    from django.http import Http404

    if isinstance(exc, DatabaseError):
        # The write's transaction rolled back: nothing was saved and nothing
        # changed anywhere. The database's own words stay in the log.
        logger.error("the database refused a write: %s", type(exc).__name__, exc_info=exc)
        return Response(
            error_body(
                "not_saved", "The database refused the change; nothing was saved. Try again."
            ),
            status=503,
        )
    if isinstance(exc, Http404):
        return Response(error_body("not_found", str(exc) or "Not found."), status=404)
    return None
