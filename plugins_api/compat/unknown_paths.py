"""The 404 of a ``/v1`` path nobody serves, in the error shape of the API the path belongs to.

An SDK reads its own API's error body: Anthropic's under ``/v1/messages``,
OpenAI's elsewhere under ``/v1/``. The URL map sends every unmatched ``/v1``
path here, with DEBUG on too (Django would otherwise show its HTML page).
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from plugins_api.compat.anthropic_api import anthropic_error
from plugins_api.compat.openai_api import openai_error
from plugins_api.edge.api_paths import ANTHROPIC_SHAPE, error_shape


def v1_not_found(request: HttpRequest) -> JsonResponse:
    """Answer 404 for REQUEST's path, which no ``/v1`` route serves."""
    shown = request.path if len(request.path) <= 200 else request.path[:197] + "..."
    message = f"No such endpoint: {request.method} {shown}"
    if error_shape(request.path) == ANTHROPIC_SHAPE:
        return anthropic_error(404, message)
    return openai_error(404, message, code="unknown_url")
