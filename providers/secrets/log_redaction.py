"""Keep the live providers' secrets out of every log record, whoever logs it and wherever it goes.

A handler filter would guard only the handlers Echo configures: the ASGI
server's own loggers (uvicorn's and daphne's tracebacks) and any handler a
deployment adds would still see the raw record. So the redaction happens
where every record is made: ``install_log_redaction`` wraps the log record
factory, and each record's message, arguments, traceback, stack and extra
string attributes are passed through ``providers.secrets.masking.redact`` with the
secrets of the providers live in this process.
"""

from __future__ import annotations

import logging
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from providers.runtime import process_module
from providers.secrets.masking import has_shapes, secret_redactor

# The attributes every LogRecord has; the others were added by ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


def live_secret_values() -> tuple[str, ...]:
    """Return the secrets of every provider live in this process's registry.

    By the secret names the registry read when it built each instance: no
    plugin code runs here, for every log record. The registry's own tuple,
    the same object until a provider changes (``secret_redactor`` keeps its
    redactor by it).
    """
    try:
        return process_module().registry.all_secret_values()  # the current runtime's
    except RuntimeError:  # the registry changed while being read (another thread's swap)
        return ()


def redact_record(record: logging.LogRecord, secrets: Sequence[str]) -> logging.LogRecord:
    """Strip SECRETS from RECORD in place; return it.

    The message is formatted and its arguments dropped only when it held a
    secret; a traceback that held one is kept as redacted text
    (``exc_text``, which formatters print) and the exception object dropped.
    """
    if not secrets and not has_shapes():
        return record
    redact = secret_redactor(secrets)
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it; keep the parts safe
        message = None
        record.msg = redact(str(record.msg))
        record.args = tuple(redact(repr(a)) for a in record.args or ())
    if message is not None:
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        clean = redact(text)
        if clean != text:
            record.exc_text, record.exc_info = clean, None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return redact_extras(record, secrets)


def redact_extras(record: logging.LogRecord, secrets: Sequence[str]) -> logging.LogRecord:
    """Strip SECRETS from RECORD's ``extra=`` string attributes, in place; return it."""
    if not secrets and not has_shapes():
        return record
    attributes = vars(record)
    extras = attributes.keys() - _STANDARD_ATTRIBUTES
    if not extras:
        return record
    redact = secret_redactor(secrets)
    for key in extras:
        value = attributes[key]
        if isinstance(value, str):
            attributes[key] = redact(value)
    return record


#: The records the factory made and redacted, with what it redacted: while those parts are
#: the very objects it left, the filter has only the extras to do.
_made_clean: weakref.WeakKeyDictionary[logging.LogRecord, tuple[Any, ...]] = (
    weakref.WeakKeyDictionary()
)


def _redacted_parts(record: logging.LogRecord) -> tuple[Any, ...]:
    return (record.msg, record.args, record.exc_info, record.exc_text, record.stack_info)


def _unchanged_since_made(record: logging.LogRecord) -> bool:
    """Return whether the factory redacted RECORD and nothing replaced what it redacted since."""
    made = _made_clean.get(record)
    return made is not None and all(
        now is then for now, then in zip(_redacted_parts(record), made, strict=True)
    )


def install_log_redaction(secrets: Callable[[], list[str]] = live_secret_values) -> None:
    """Make every log record of this process pass through ``redact_record`` (once)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "echo_redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            values = secrets()
        except Exception:  # never lose a log line to the redaction itself
            return record
        redact_record(record, values)
        _made_clean[record] = _redacted_parts(record)
        return record

    redacting_factory.echo_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)


class SecretRedactingFilter(logging.Filter):
    """A handler filter doing ``redact_record``, for the ``extra=`` attributes the factory cannot see.

    The record factory runs before ``extra`` is set on a record; Echo's own
    handlers also get this filter so that those attributes are covered. A
    record the factory redacted, whose message, arguments, traceback and
    stack nothing has replaced since (another filter may rewrite them), has
    only them left to do; any other (made by ``logging.makeLogRecord``, or
    before the factory was installed) is redacted whole.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if _unchanged_since_made(record):
                redact_extras(record, live_secret_values())
            else:
                redact_record(record, live_secret_values())
        except Exception:  # never lose a log line to the redaction itself
            pass
        return True
