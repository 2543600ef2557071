"""Django's security log, made one warning line per refused request.

Django logs each request it refuses as suspicious (a ``Host`` not in
``ALLOWED_HOSTS``, too many fields, a bad multipart body) on
``django.security.<kind>`` at ERROR, with the whole traceback: about 2 KB a
request that anyone can send, by the thousand, into the log an operator
pages on. The refusal is the client's fault and already answered (400), so
``ClientFaultFilter``, on the console handler, writes each as a WARNING of
one line: the kind, the message (cut), the request id. Anything else on
``django.security`` (a CSRF failure is logged as a WARNING already) passes
unchanged.
"""

from __future__ import annotations

import logging

SECURITY_LOGGER = "django.security."
#: Longest message kept: Django's quotes the client's header, which may be long.
MAX_MESSAGE = 300


class ClientFaultFilter(logging.Filter):
    """Demote Django's security errors to one-line warnings (see the module's text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.name.startswith(SECURITY_LOGGER):
            message = record.getMessage()
            if len(message) > MAX_MESSAGE:
                message = message[:MAX_MESSAGE] + "..."
            record.msg, record.args = message, ()
            record.levelno, record.levelname = (
                logging.WARNING,
                logging.getLevelName(logging.WARNING),
            )
            record.exc_info = record.exc_text = None
            record.__dict__.pop("request", None)  # its repr quotes the path, unescaped
        return True
