"""The access log: one line per HTTP request, written once its answer has been sent.

uvicorn's own access log writes its line when the answer *starts*, before
its body goes out: formatting and writing it was a tenth of the latency
Echo added to a chat call (``make bench``, docs/BENCHMARKS.md). So
``make run`` turns it off (``--no-access-log``) and Echo writes its own,
here, after the last byte (a stream's included) and after the request's
deferred bookkeeping: the client never waits for it. The line is the one
uvicorn writes, plus how long the request took, through Echo's logging (the
request id, secret redaction, ``LOG_FORMAT=json`` with the fields apart)::

    127.0.0.1:52814 - "POST /v1/chat/completions HTTP/1.1" 200 1.4ms

on the logger ``echo.access`` (``ECHO_ACCESS_LOG=false`` silences it). The
status is the answer's; ``500`` when the application failed before
answering (the server answers it so), ``-`` when the client left first. The
request line's target is cut to ``MAX_TARGET`` characters and its control
characters are escaped: a client cannot forge a log line, nor make one huge.
Websockets are logged by the server as they open and close.

Lines are written in batches, as nginx's ``access_log ... buffer= flush=``
does: a request's line is kept (``LineBatch``) and written with the others
answered within ``BATCH_SECONDS``, or at once when ``BATCH_LINES`` are
waiting, at the lifespan's shutdown, and at the process's exit. Each line
keeps the time its answer ended. A line written alone, between two
requests, cost a loaded worker about three times what it costs among
others: one worker served 10% more chat calls a second with its lines
written in batches (``docs/BENCHMARKS.md``). The price is a line up to
``BATCH_SECONDS`` late, and lost if the process is killed outright.
``BATCH_LINES`` stays small because a batch is written in one go, between
two requests' steps: 32 lines hold the loop for under a millisecond,
where 256 raised a loaded worker's p99 by 3 ms. ``flush`` writes what is
waiting. When the lines go to Echo's console handler and nowhere else, a
batch is made and written by ``echo_site.access_log_console`` (the same
bytes, a fraction of ``logging``'s work); otherwise each goes through
``logging``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from echo_site.access_log_console import ConsoleLines, LineFields
from echo_site.request_body_limit import ASGIApp, Receive, Scope, Send
from echo_site.request_context import HEADER as REQUEST_ID_HEADER
from echo_site.request_context import current_request_id

logger = logging.getLogger("echo.access")
#: Where a line that cannot be written is reported (not the access log itself).
_failures = logging.getLogger(__name__)

#: Longest request target (path and query) written; the rest is cut.
MAX_TARGET = 512
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode("ascii")
#: The longest a line waits to be written, and the most lines that wait (then written at once).
BATCH_SECONDS = 0.1
BATCH_LINES = 32
_FORMAT = '%s - "%s %s HTTP/%s" %s %.1fms'
#: A query parameter named for a credential, and its value.
_CREDENTIAL_PARAMETER = re.compile(
    r"(?i)((?:^|[?&;])(?:api[-_]?key|key|token|access[-_]?token|auth|authorization|"
    r"secret|password|passwd|signature|sig)=)[^&;#]*"
)
# C0 controls and DEL, written as \xNN.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def request_target(scope: Scope) -> str:
    """Return SCOPE's path and query string as a log line may hold them (masked, cut, escaped).

    Echo takes keys in headers only, but a client may still put one in a URL
    (``?api_key=...``): the value of a query parameter named for a credential
    is written as ``****``, whatever it is (an Echo key anywhere is masked
    by the log redaction, as every line's: ``plugins_api.access.client_keys.KEY_SHAPE``).
    """
    target: str = scope.get("path", "")
    query: bytes = scope.get("query_string", b"")
    if query:
        target = f"{target}?{query.decode('latin-1')}"
        target = _CREDENTIAL_PARAMETER.sub(r"\1****", target)
    if len(target) > MAX_TARGET:
        target = target[:MAX_TARGET] + "..."
    return target if target.isprintable() else target.translate(_ESCAPES)


def client_address(scope: Scope) -> str:
    """Return SCOPE's client as ``host:port`` (``-`` when the server does not say)."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


class AccessLog:
    """Serve HTTP requests by APP, then log each one (see the module's text)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer: dict[str, Any] = {}

        async def send_noting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = message.get("headers", ())
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_noting)
            failed = False
        finally:
            status = answer.get("status", 500 if failed else "-")
            ended = time.time()
            seconds = time.perf_counter() - started
            pending.add((scope, status, answer.get("headers", ()), seconds, ended))


#: What a line is made of: the request's scope, its status, its answer's headers,
#: how long it took (seconds) and when it ended (``time.time()``).
Line = tuple[Scope, Any, Any, float, float]


class LineBatch:
    """Lines waiting to be written by WRITE: all at once, SECONDS after the first, or at LINES.

    WRITE_ALL, when given, is offered the whole batch first.

    The wait is a timer on the running event loop; with no loop running, a
    line is written at once. Lines kept on a loop that went away (a test's)
    are written with the next line, or by ``flush``.
    """

    def __init__(
        self,
        write: Callable[[Line], None],
        *,
        lines: int = BATCH_LINES,
        seconds: float = BATCH_SECONDS,
        write_all: Callable[[list[Line]], bool] | None = None,
    ) -> None:
        self.write = write
        #: Writes a whole batch when it can (True), else each line goes to WRITE.
        self.write_all = write_all
        self.lines = lines
        self.seconds = seconds
        self._pending: list[Line] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, line: Line) -> None:
        """Keep LINE; write the batch now if it is full or no event loop runs here."""
        with self._lock:
            self._pending.append(line)
            full = len(self._pending) >= self.lines
        if full:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer is None or self._timer_loop is not loop:
            # A timer left on another loop (or one a flush made stale) finds
            # nothing, or less, to write: it is never cancelled across loops.
            self._timer_loop = loop
            self._timer = loop.call_later(self.seconds, self.flush)

    def flush(self) -> None:
        """Write every waiting line, in the order their answers ended."""
        with self._lock:
            lines, self._pending = self._pending, []
            self._timer = None
        if lines and self.write_all is not None and self.write_all(lines):
            return
        for line in lines:
            try:
                self.write(line)
            except Exception:  # one bad line must not cost the others
                _failures.exception("an access-log line could not be written")


def _line_args(line: Line) -> tuple[Any, ...]:
    """Return LINE's request id (``-``: none) and its message's arguments (for ``_FORMAT``)."""
    scope, status, headers, seconds, _ = line
    request_id = next((value for name, value in headers if name.lower() == _REQUEST_ID), None)
    return (
        request_id.decode("latin-1") if request_id else "-",
        client_address(scope),
        scope.get("method", "-"),
        request_target(scope),
        scope.get("http_version", "1.1"),
        status,
        round(seconds * 1000, 1),
    )


def line_fields(line: Line) -> LineFields:
    """Return what LINE's log line says (see ``LineFields``)."""
    request_id, *args = _line_args(line)
    _, method, target, _, status, duration_ms = args
    return _FORMAT % tuple(args), request_id, method, target, status, duration_ms, line[4]


def _write(line: Line) -> None:
    """Write LINE through the ``echo.access`` logger, stamped with the time its answer ended."""
    request_id, *args = _line_args(line)
    _, method, target, _, status, duration_ms = args
    ended = line[4]
    token = current_request_id.set(request_id)
    try:
        record = logger.makeRecord(
            logger.name,
            logging.INFO,
            __file__,
            0,
            _FORMAT,
            tuple(args),
            None,
            "_write",
            {"method": method, "path": target, "status": status, "duration_ms": duration_ms},
        )
        # Made now, stamped with the answer's end: the three times a record keeps.
        record.relativeCreated -= (record.created - ended) * 1000
        record.created = ended
        record.msecs = int((ended - int(ended)) * 1000) + 0.0
        logger.handle(record)
    finally:
        current_request_id.reset(token)


def _write_to_console(lines: list[Line]) -> bool:
    """Write LINES at once when they go to the console handler alone; return whether they went."""
    console = ConsoleLines.of(logger)
    if console is None:
        return False
    try:
        console.write([line_fields(line) for line in lines])
    except Exception:
        _failures.exception("%d access-log lines could not be written", len(lines))
    return True


#: This process's waiting lines.
pending = LineBatch(_write, write_all=_write_to_console)


def flush() -> None:
    """Write this process's waiting access-log lines now (at shutdown, in tests)."""
    pending.flush()


atexit.register(flush)
