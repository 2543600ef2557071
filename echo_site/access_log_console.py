"""The access log's lines written straight to Echo's console handler: the same bytes, a tenth of the work.

Through ``logging``, one access-log line cost a chat call about 50 µs of a
worker's CPU, an eighth of the whole call (``make bench``'s in-process
breakdown): a ``LogRecord`` made, its message and extras scanned for secrets
twice (the record factory, then the handler's filter), three filters, the
formatter, and a write and a flush of its own. Where the lines go is known
(``ConsoleLines.of``): when the ``echo.access`` logger's records reach
exactly one handler, the console ``StreamHandler`` that ``settings.LOGGING``
configures, with its filters and its ``text`` or ``json`` formatter, and
nothing else, a batch of lines is made here as that handler would write
them, byte for byte, secrets redacted as its filter redacts them, and
written in one go under the handler's lock: about 15 µs a line. Any other
set-up (a handler a deployment or a test adds, another formatter, a level
that drops the lines) goes through ``logging`` as before.

``tests/echo_site/test_access_log_console.py`` holds both ways to the same
output for the same lines, for both formats, hostile ones included.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson

from echo_site.request_context import JsonLogFormatter, RequestIdFilter, redacted_text
from echo_site.security_log import ClientFaultFilter
from providers.secrets.log_redaction import SecretRedactingFilter, live_secret_values
from providers.secrets.masking import secret_redactor

#: The console handler's ``text`` format (``settings.LOGGING``).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
#: The filters of the console handler, none of which does more to an access line than
#: stamp its request id and redact it.
CONSOLE_FILTERS = frozenset({RequestIdFilter, ClientFaultFilter, SecretRedactingFilter})
#: What one line says: its message, request id, method, target, status, duration (ms) and
#: when its answer ended (``time.time()``), as ``echo_site.access_log`` makes them.
LineFields = tuple[str, str, str, str, Any, float, float]
_JSON_TIME = "%Y-%m-%dT%H:%M:%S%z"
_TEXT_TIME = "%Y-%m-%d %H:%M:%S"


def _plain_text_formatter(formatter: logging.Formatter) -> bool:
    """Return whether FORMATTER is the ``text`` one, with logging's own time and style."""
    return (
        type(formatter) is logging.Formatter
        and formatter._fmt == TEXT_FORMAT
        and type(formatter._style) is logging.PercentStyle
        and getattr(formatter._style, "_defaults", None) is None
        and formatter.datefmt is None
        and formatter.default_time_format == _TEXT_TIME
        and formatter.default_msec_format == "%s,%03d"
        and formatter.converter is time.localtime
    )


def _json_formatter(formatter: logging.Formatter) -> bool:
    return type(formatter) is JsonLogFormatter and formatter.converter is time.localtime


def _only_handler(logger: logging.Logger) -> logging.Handler | None:
    """Return the one handler LOGGER's records reach, or None: none, several, or a filter on the way.

    The handlers are found as ``Logger.callHandlers`` finds them: up the
    hierarchy, until a logger that does not propagate.
    """
    if logger.disabled or logger.filters:
        return None
    reached: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        reached.extend(current.handlers)
        current = current.parent if current.propagate else None
    return reached[0] if len(reached) == 1 else None


class ConsoleLines:
    """Makes and writes access-log lines as HANDLER, the console handler, would (see the module)."""

    def __init__(self, handler: logging.StreamHandler, *, json_lines: bool, name: str) -> None:
        self.handler = handler
        self.json_lines = json_lines
        self.name = name
        self._second: int | None = None
        self._stamp = ""

    @classmethod
    def of(cls, logger: logging.Logger) -> ConsoleLines | None:
        """Return the writer of LOGGER's lines when they reach only the console handler, else None."""
        handler = _only_handler(logger)
        if (
            type(handler) is not logging.StreamHandler
            or handler.level > logging.INFO
            or handler.terminator != "\n"
            or len(handler.filters) != len(CONSOLE_FILTERS)
            or {type(f) for f in handler.filters} != CONSOLE_FILTERS
        ):
            return None
        formatter = handler.formatter
        if formatter is None or logging.getLevelName(logging.INFO) != "INFO":
            return None  # (a level renamed with logging.addLevelName: logging's own lines say it)
        if _json_formatter(formatter):
            return cls(handler, json_lines=True, name=logger.name)
        if _plain_text_formatter(formatter):
            return cls(handler, json_lines=False, name=logger.name)
        return None

    def write(self, lines: Sequence[LineFields]) -> None:
        """Write LINES at once, as the handler would write each."""
        redact = secret_redactor(live_secret_values())
        text = "".join(self._line(redact, *line) + "\n" for line in lines)
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        finally:
            handler.release()

    def _line(
        self,
        redact: Any,
        message: str,
        request_id: str,
        method: str,
        target: str,
        status: Any,
        duration_ms: float,
        ended: float,
    ) -> str:
        # What the record factory and the handler's filter redact: the message and each string extra.
        message, request_id = redact(message), redact(request_id)
        if not self.json_lines:
            msecs = int((ended - int(ended)) * 1000)
            return f"{self._time(ended, _TEXT_TIME)},{msecs:03d} INFO {self.name} [{request_id}] {message}"
        entry = {
            "time": self._time(ended, _JSON_TIME),
            "level": "INFO",
            "logger": self.name,
            "request_id": request_id,
            "message": message,
            "method": redact(method),
            "path": redact(target),
            "status": redact(status) if isinstance(status, str) else status,
            "duration_ms": duration_ms,
        }
        try:
            return orjson.dumps(entry, default=redacted_text).decode()
        except TypeError:  # as JsonLogFormatter falls back
            return json.dumps(entry, default=redacted_text)

    def _time(self, ended: float, layout: str) -> str:
        """Return ENDED's local time in LAYOUT, made once a second (a batch's lines share theirs)."""
        second = int(ended)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(layout, time.localtime(ended))
        return self._stamp
