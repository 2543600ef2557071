"""The request id: taken from ``X-Request-ID`` or made up, returned in the response, in every log line.

``RequestIdMiddleware`` is async-native (no thread hop per request) and
runs first. ``RequestIdFilter`` stamps each log record with the current id;
``JsonLogFormatter`` writes one JSON object per line for log shippers.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from providers.secrets.log_redaction import live_secret_values
from providers.secrets.masking import secret_redactor
from providers.types import answer_id

HEADER = "X-Request-ID"
# A client's id is kept only if it is short and plain: it goes into logs.
ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "echo_request_id", default="-"
)


def request_id_for(request: HttpRequest) -> str:
    """Return the client's request id when acceptable, else a new one."""
    given = request.META.get("HTTP_X_REQUEST_ID", "")
    return given if ACCEPTABLE_ID.match(given) else answer_id()


class RequestIdMiddleware:
    """Give every request an id, in ``request.request_id``, the logs and the response."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        token = self._start(request)
        try:
            return self._finish(request, self.get_response(request))
        finally:
            current_request_id.reset(token)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        token = self._start(request)
        try:
            return self._finish(request, await self.get_response(request))
        finally:
            current_request_id.reset(token)

    @staticmethod
    def _start(request: HttpRequest) -> contextvars.Token[str]:
        request.request_id = request_id_for(request)
        return current_request_id.set(request.request_id)

    @staticmethod
    def _finish(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response[HEADER] = request.request_id
        return response


class RequestIdFilter(logging.Filter):
    """Stamp each record with the id of the request being served ("-" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class JsonLogFormatter(logging.Formatter):
    """Write each record as one JSON object: time, level, logger, request_id, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:  # orjson: a third of json's time, on every line (the access log's included)
            return orjson.dumps(entry, default=redacted_text).decode()
        except TypeError:  # a lone surrogate, an integer beyond 64 bits, a key that is no string
            return json.dumps(entry, default=redacted_text)


def redacted_text(value: Any) -> str:
    """Return VALUE, an extra that is no JSON value, as text with every secret redacted.

    The log redaction redacts the text extras; an object (Django's request on
    its "Not Found" lines) is made text only here, and its text may quote a
    key (the request's raw path).
    """
    return secret_redactor(live_secret_values())(str(value))
