"""BoundedJSONParser: the DRF parser of every ``/api/`` and ``/plugins/`` body.

DRF's own ``JSONParser`` hands the body to ``json.load``: a body nested a
hundred thousand levels deep exhausts the interpreter's recursion (a 500),
``\\u0000`` reaches PostgreSQL (which refuses it: another 500), and DRF reads
the body from its stream, past Django's cap on ``request.body``. This parser
reads at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes (which settings set to
``ECHO_MAX_BODY_BYTES``; under ASGI ``RequestBodyLimit`` has already refused
a larger body, under WSGI this is the bound), parses through
``plugins_api.edge.bounded_json.loads_bounded`` (which also refuses numbers JSON
cannot carry back out: ``NaN``, ``Infinity``, ``1e999``), each as a 400
naming the field in Echo's error shape.
"""

from __future__ import annotations

from typing import IO, Any

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser

from plugins_api.edge.bounded_json import JsonInputError, loads_bounded


class InvalidJSONBody(exceptions.ParseError):
    """The body is not JSON Echo accepts; FIELD is the dotted path of the culprit (None: the body)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RequestBodyTooLarge(exceptions.APIException):
    """The body is larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE``."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"
    default_detail = "The request body is too large."


def _body_limit() -> int | None:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class BoundedJSONParser(JSONParser):
    """Parse a JSON body bounded in size, depth and characters; refuse it naming the field."""

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        limit = _body_limit()
        data = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise RequestBodyTooLarge(
                f"The request body is larger than {limit} bytes (ECHO_MAX_BODY_BYTES)."
            )
        try:
            value = loads_bounded(data)
        except JsonInputError as exc:
            raise InvalidJSONBody(exc.message, field=exc.field) from None
        return value
