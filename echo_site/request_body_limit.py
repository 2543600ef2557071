"""RequestBodyLimit: an ASGI middleware that bounds every HTTP request body before Django reads it.

Django's ASGI handler reads the whole body before any view runs, so a view
cannot refuse a body it has not yet received. This middleware sits between
the server and Django and acts on the stream itself:

- An API request (``/chat``, ``/v1/...``, ``/plugins/...``, ``/api/...``,
  ``/metrics``, ``/health/<name>``) that carries a body is answered 401 before
  any of the body is read when it has no credential at all, or a key that
  verification rejects (cached, so a known key costs no query).
- Every HTTP request body is bounded by ``settings.ECHO_MAX_BODY_BYTES``: a
  declared ``Content-Length`` over it is refused at once; a chunked body is
  counted as it streams in and refused with 413 as soon as it passes the limit.

The server must stream ``http.request`` chunks with flow control (uvicorn
does; daphne buffers the whole body before the application runs). Errors use
the shape of the API that was called: Anthropic's on ``/v1/messages``,
OpenAI's elsewhere under ``/v1/``, Echo's everywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.http.cookie import parse_cookie

from plugins_api.access.key_credentials import (
    SEND_A_KEY,
    Denial,
    averify_credential,
    key_credential,
    remember_verified,
    unauthorized,
)
from plugins_api.access.request_auth import echo_denial
from plugins_api.compat.anthropic_api import anthropic_denial, anthropic_error
from plugins_api.compat.openai_api import openai_denial, openai_error
from plugins_api.edge.api_paths import (
    ANTHROPIC_SHAPE,
    OPENAI_SHAPE,
    error_shape,
    requires_credential,
)
from plugins_api.edge.error_responses import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Only the chat endpoints accept Anthropic's x-api-key header; the DRF views
# read Authorization and the session alone.
_API_KEY_HEADER_PREFIXES = ("/v1/",)
_API_KEY_HEADER_PATHS = frozenset({"/chat"})

_DISCONNECT: Message = {"type": "http.disconnect"}


def _accepts_api_key_header(path: str) -> bool:
    return path in _API_KEY_HEADER_PATHS or path.startswith(_API_KEY_HEADER_PREFIXES)


def denial_response(path: str, denial: Denial) -> HttpResponse:
    """Render DENIAL in the error shape of the API under PATH."""
    shape = error_shape(path)
    if shape == ANTHROPIC_SHAPE:
        return anthropic_denial(denial)
    if shape == OPENAI_SHAPE:
        return openai_denial(denial)
    return echo_denial(denial)


def too_large_response(path: str, limit: int) -> HttpResponse:
    """Render a 413 for a body over LIMIT bytes in the error shape of the API under PATH."""
    message = f"The request body is larger than {limit} bytes (ECHO_MAX_BODY_BYTES)."
    shape = error_shape(path)
    if shape == ANTHROPIC_SHAPE:
        return anthropic_error(413, message)
    if shape == OPENAI_SHAPE:
        return openai_error(413, message, code="request_too_large")
    return JsonResponse(error_body("request_too_large", message), status=413)


async def send_early_response(send: Send, response: HttpResponse) -> None:
    """Send RESPONSE and close the connection: the request's body was not read to its end.

    Without ``Connection: close`` the server would keep reading (and dropping)
    the rest of the body to reach the next request on the connection.
    """
    body = response.content
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.items()]
    headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestBodyLimit:
    """Wrap an HTTP ASGI application: credentials first on API paths, then a bounded body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        declared: bytes | None = None
        chunked = False
        authorization = api_key = cookie = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                api_key = value.decode("latin-1")
            elif name == b"cookie":
                cookie = value.decode("latin-1")
        length: int | None = None
        if declared is not None and not chunked:
            try:
                length = int(declared)
            except ValueError:
                # Servers refuse such a request themselves; if one did not,
                # the body is counted as it comes, like a chunked one.
                chunked = True
        limit: int = settings.ECHO_MAX_BODY_BYTES
        has_body = chunked or bool(length)
        if has_body and requires_credential(path):
            token = self._token(path, authorization, api_key, cookie)
            if isinstance(token, Denial):
                await send_early_response(send, denial_response(path, token))
                return
            if token is not None:
                # A cache miss queries the database on the ORM threads' kept
                # connections (``client_keys``): no thread or connection of its own.
                found = await averify_credential(token)
                if isinstance(found, Denial):
                    await send_early_response(send, denial_response(path, found))
                    return
                # The view takes it from here: a key is verified once per request.
                remember_verified(scope, token, found)
        await self._serve_bounded(scope, receive, send, path, length, limit)

    @staticmethod
    def _token(
        path: str, authorization: str | None, api_key: str | None, cookie: str | None
    ) -> str | Denial | None:
        """Return the key to verify, None for a session cookie, or why the request has no credential.

        The key is read as the views read it (``key_credentials.key_credential``).
        A session is only looked for here, not checked: the view checks it (and
        its CSRF token) against a body already bounded.
        """
        headers = {"authorization": authorization, "x-api-key": api_key}
        credential = key_credential(headers, x_api_key=_accepts_api_key_header(path))
        if credential is not None:
            return credential
        if cookie and parse_cookie(cookie).get(settings.SESSION_COOKIE_NAME):
            return None
        return unauthorized(SEND_A_KEY)

    async def _serve_bounded(
        self, scope: Scope, receive: Receive, send: Send, path: str, length: int | None, limit: int
    ) -> None:
        if length is not None:
            if length > limit:
                await send_early_response(send, too_large_response(path, limit))
                return
            # The server delivers no more than Content-Length: nothing to count.
            await self.app(scope, receive, send)
            return

        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return _DISCONNECT
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Stop here: the application sees a client that went
                    # away, and the rest of the body is never read.
                    refused = True
                    if not started:
                        await send_early_response(send, too_large_response(path, limit))
                    return _DISCONNECT
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
