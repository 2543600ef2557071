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
"""

from __future__ import annotations

import logging
import time
from typing import Any

from echo_site.request_body_limit import ASGIApp, Receive, Scope, Send
from echo_site.request_context import HEADER as REQUEST_ID_HEADER
from echo_site.request_context import current_request_id

logger = logging.getLogger("echo.access")

#: Longest request target (path and query) written; the rest is cut.
MAX_TARGET = 512
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode("ascii")
# C0 controls and DEL, written as \xNN.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def request_target(scope: Scope) -> str:
    """Return SCOPE's path and query string as a log line may hold them (cut, escaped)."""
    target: str = scope.get("path", "")
    query: bytes = scope.get("query_string", b"")
    if query:
        target = f"{target}?{query.decode('latin-1')}"
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
            _log(scope, status, answer.get("headers", ()), time.perf_counter() - started)


def _log(scope: Scope, status: int | str, headers: Any, seconds: float) -> None:
    request_id = next((value for name, value in headers if name.lower() == _REQUEST_ID), None)
    token = current_request_id.set(request_id.decode("latin-1") if request_id else "-")
    try:
        method = scope.get("method", "-")
        target = request_target(scope)
        version = scope.get("http_version", "1.1")
        duration_ms = round(seconds * 1000, 1)
        logger.info(
            '%s - "%s %s HTTP/%s" %s %.1fms',
            client_address(scope),
            method,
            target,
            version,
            status,
            duration_ms,
            extra={"method": method, "path": target, "status": status, "duration_ms": duration_ms},
        )
    finally:
        current_request_id.reset(token)
