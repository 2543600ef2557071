"""The hot path: key clients' chat calls, served by Django's own middleware and views, minus the rest.

``POST /chat``, ``/v1/chat/completions``, ``/v1/messages`` (and its
``count_tokens``), ``/v1/embeddings`` and ``/v1/responses`` from a client that offers a key (``Authorization:
Bearer`` or ``x-api-key``) are most of Echo's traffic; load balancers' ``GET``
of ``/health``, ``/health/live`` and ``/health/ready`` most of the rest. Django's ASGI handler
costs each of them two thread hops (the ``request_started`` and
``request_finished`` signals, whose receivers are sync) and a walk through the
whole URL map, which is most of the time Echo spends on such a call.
``HotPath`` sends those requests to ``HotPathHandler`` and everything else
(pages, the admin, session callers, other routes and methods) to Django
unchanged.

``HotPathHandler`` *is* Django's ``ASGIHandler``, with three things left out:

- the request signals: no thread hop, on any request that does not touch the
  database (a key-cache miss and a stored response are read and written on
  the ORM threads' kept connections). Their one job here, closing a
  database connection the request's own sync code opened, is done by the
  handler itself, and only when this request ran code in a thread (see
  ``_close_connections_of``);
- the URL map: the chat paths were resolved once, an exact-path lookup finds
  their view (the same view function, the same ``ResolverMatch``);
- the thread hop to log a 4xx/5xx response: the same ``log_response``, on
  the loop;
- the middleware chain, where its effects are known
  (``echo_site.middleware_effects``): the request gets its id and user,
  and the answer the chain's headers, encoded once at start-up, as it is
  written; any other request, and any other middleware list, runs Django's
  chain.

And it writes the answer before Echo's bookkeeping: the usage a view
records (``plugins_api.edge.after_answer``) is recorded once the answer's
last byte is sent, or the client gone, in the same task.

Everything a client can see is Django's, so both ways give the same answer
to the same request, byte for byte, headers in the same order:
``settings.MIDDLEWARE``'s effects (the request id, the security headers,
HSTS and the HTTPS redirect, X-Frame-Options, Content-Length, the browser
middleware skipped for a key client), as its own hooks give them, the
view's exception handling, ``send_response``, and the
listening for ``http.disconnect`` that cancels a view or a stream when the
client goes away. ``HotPath`` sits inside ``RequestBodyLimit`` and inside
the drain (``echo_site.asgi.application``), so the key-before-body rule,
``ECHO_MAX_BODY_BYTES`` and graceful shutdown hold for it as for Django.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from contextlib import aclosing

from asgiref.sync import SyncToAsync, ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase
from django.urls import ResolverMatch, get_resolver, set_script_prefix, set_urlconf
from django.utils.log import log_response

from echo_site.middleware import BrowserMiddleware
from echo_site.middleware_effects import MiddlewareEffects, RawHeaders
from echo_site.request_body_limit import ASGIApp, Receive, Scope, Send
from plugins_api.access.key_credentials import presents_key, scope_credential_headers
from plugins_api.edge.after_answer import deferred_work, run_deferred
from plugins_api.edge.api_paths import PUBLIC_API_PATHS
from plugins_api.edge.sse import EventStream

#: The chat paths of the hot path (POST, key clients only).
HOT_PATHS = (
    "/chat",
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/embeddings",
    "/v1/responses",
)
#: The probes' paths (GET and HEAD, anyone): load balancers call them several times a second.
PROBE_PATHS = tuple(sorted(PUBLIC_API_PATHS))


def path_info(scope: Scope) -> str:
    """Return SCOPE's path below its ``root_path``, as Django's ``request.path_info`` has it."""
    path: str = scope["path"]
    root_path = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :] or "/"
    return path


async def read_body(receive: Receive) -> bytes:
    """Return the whole request body; raise RequestAborted if the client goes away first."""
    first = await receive()
    if first["type"] == "http.disconnect":
        raise RequestAborted()
    body = first.get("body", b"")
    if not first.get("more_body", False):
        return body  # the usual case: one message, no copy
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _close_connections_of(context: ThreadSensitiveContext) -> None:
    """Close the database connections CONTEXT's thread opened, as ``request_finished`` would.

    A request's sync code runs in its thread-sensitive context's own thread,
    which asgiref makes on the first such call: no thread, no connection, and
    nothing to close (no hop), the usual case (a key-cache miss and a stored
    response query on the ORM threads, ``providers.runtime.orm_threads``).
    Otherwise the connection would be left open in a thread that ends with the request.
    """
    if context in SyncToAsync.context_to_thread_executor:
        await sync_to_async(close_old_connections)()


class HotPathHandler(ASGIHandler):
    """Django's ASGI handler for PATHS only: no request signals, no URL map walk, no thread hops."""

    def __init__(
        self, paths: Iterable[str] = HOT_PATHS, probe_paths: Iterable[str] = PROBE_PATHS
    ) -> None:
        super().__init__()
        resolver = get_resolver()
        self.chat_paths = frozenset(paths)
        self.probe_paths = frozenset(probe_paths)
        self.routes: dict[str, ResolverMatch] = {
            path: resolver.resolve(path) for path in self.chat_paths | self.probe_paths
        }
        #: What settings.MIDDLEWARE does to these calls; None: not known, Django's chain runs.
        self.effects = MiddlewareEffects.for_settings()
        #: Whether a route's view may be called as it is (see ``_call_view``).
        self.views_called_directly = self._views_need_nothing_more()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with ThreadSensitiveContext() as context:
            await self.handle(scope, receive, send)
            await _close_connections_of(context)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve SCOPE as ``ASGIHandler.handle`` does, without the request signals."""
        try:
            body = await read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, io.BytesIO(body))
        if request is None:
            await self.send_response(error_response, send)
            return
        with deferred_work() as deferred:
            try:
                await self._respond(request, receive, send)
            finally:
                run_deferred(deferred)

    async def _respond(self, request: HttpRequest, receive: Receive, send: Send) -> None:
        """Answer REQUEST; if the client goes away first, cancel the view or the stream.

        As Django's handler does, but with one task, not two: the request's own
        task answers, and a second one waits for ``http.disconnect``.
        """
        serving = asyncio.current_task()
        assert serving is not None
        gone = False

        async def cancel_on_disconnect() -> None:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                serving.cancel()

        watcher = asyncio.create_task(cancel_on_disconnect())
        response: HttpResponseBase | None = None
        try:
            if self.effects is not None and self.effects.takes(request):
                response, added = await self._answer_directly(request)
                if isinstance(response, EventStream):
                    await send_events(response, added, send)
                elif response.streaming:
                    await self.send_response(response, _adding(added, send))
                else:
                    await send_whole(response, added, send)
            else:
                response = await self.run_get_response(request)
                await self.send_response(response, send)
        except asyncio.CancelledError:
            if not gone:
                raise
            serving.uncancel()
        finally:
            watcher.cancel()
            # What response.close() does, without its request_finished signal.
            for closer in response._resource_closers if response is not None else ():
                closer()
            request.close()

    async def _answer_directly(self, request: HttpRequest) -> tuple[HttpResponseBase, RawHeaders]:
        """Answer REQUEST with the middleware's known effects; return the answer and its added headers."""
        set_urlconf(settings.ROOT_URLCONF)
        assert self.effects is not None
        view = self._call_view if self.views_called_directly else self._get_response_async
        response, added = await self.effects.answer(request, view)
        response._handler_class = type(self)  # type: ignore[attr-defined]  # as run_get_response does
        self._log_refusal(request, response)
        return response, added

    def _views_need_nothing_more(self) -> bool:
        """Return whether every route's view may be called without Django's view machinery.

        That machinery runs view middleware (only the browser middleware has a
        hook, and it does nothing for the requests answered directly), wraps
        the view in a transaction with ``ATOMIC_REQUESTS``, runs a sync view in
        a thread, and renders template responses: none of which these routes
        need, when their views are async and no database wants atomic requests.
        """
        browser_hooks_only = all(
            isinstance(getattr(hook, "__self__", None), BrowserMiddleware)
            for hook in self._view_middleware
        )
        atomic = any(db.get("ATOMIC_REQUESTS") for db in settings.DATABASES.values())
        views_async = all(iscoroutinefunction(match.func) for match in self.routes.values())
        return (
            browser_hooks_only
            and not atomic
            and views_async
            and not self._template_response_middleware
        )

    async def _call_view(self, request: HttpRequest) -> HttpResponseBase:
        """Call REQUEST's view, as ``_get_response_async`` would for these routes (see above)."""
        match = self.resolve_request(request)
        response = await match.func(request, *match.args, **match.kwargs)
        self.check_response(response, match.func)
        if hasattr(response, "render") and callable(response.render):
            response = await sync_to_async(response.render, thread_sensitive=True)()
        return response

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        """Return the view of REQUEST's path, resolved once (no walk through the URL map)."""
        match = self.routes[request.path_info]
        request.resolver_match = match
        return match

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """Run the middleware chain and view; log a 4xx/5xx as Django does, on the loop."""
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)
        self._log_refusal(request, response)
        return response

    @staticmethod
    def _log_refusal(request: HttpRequest, response: HttpResponseBase) -> None:
        """Log a 4xx/5xx answer as Django does."""
        if response.status_code >= 400:
            log_response(
                "%s: %s",
                response.reason_phrase,
                request.path,
                response=response,
                request=request,
            )


def _start(response: HttpResponseBase, added: RawHeaders) -> dict:
    """Return RESPONSE's ``http.response.start``: its headers, its cookies, then ADDED (as ``send_response``)."""
    headers = [(name.encode("ascii"), value.encode("latin-1")) for name, value in response.items()]
    headers += (
        (b"Set-Cookie", cookie.output(header="").encode("ascii").strip())
        for cookie in response.cookies.values()
    )
    headers += added
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}


async def send_whole(response: HttpResponseBase, added: RawHeaders, send: Send) -> None:
    """Send RESPONSE, a whole body, with ADDED after its headers and cookies: as ``send_response``.

    The same two messages (three or more for a body over ``chunk_size``),
    built without its generic loops: a chat answer's headers are a handful.
    """
    await send(_start(response, added))
    body = response.content  # type: ignore[attr-defined]
    size = HotPathHandler.chunk_size
    if len(body) <= size:
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    for start in range(0, len(body), size):
        await send(
            {
                "type": "http.response.body",
                "body": body[start : start + size],
                "more_body": start + size < len(body),
            }
        )


async def send_events(response: EventStream, added: RawHeaders, send: Send) -> None:
    """Send RESPONSE's events, each in a message of its own, with ADDED after its headers.

    The messages ``send_response`` sends for it (the start, one body message
    per event, an empty last one), read from the events themselves rather
    than through Django's streaming wrappers (``EventStream``). The events
    are closed however the sending ends, the client's leaving included: the
    upstream stream under them is given back at once.
    """
    await send(_start(response, added))
    async with aclosing(response.events) as events:
        async for event in events:
            if type(event) is not bytes:
                event = response.make_bytes(event)
            await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body"})


def _adding(headers: RawHeaders, send: Send) -> Send:
    """Return SEND, adding HEADERS to the answer's start."""

    async def send_adding(message: dict) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message["headers"], *headers]
        await send(message)

    return send_adding


class HotPath:
    """Send key clients' ``POST`` to a hot path to ``HotPathHandler``, everything else to APP."""

    def __init__(self, app: ASGIApp, handler: HotPathHandler | None = None) -> None:
        self.app = app
        self.handler = handler or HotPathHandler()

    def takes(self, scope: Scope) -> bool:
        """Return whether SCOPE goes the hot path.

        A key client's POST to a chat path, or anyone's GET or HEAD of a probe.
        A session caller of a chat path (no key) goes to Django: its CSRF check
        needs the browser middleware.
        """
        if scope["type"] != "http":
            return False
        method, path = scope["method"], path_info(scope)
        if method == "POST":
            return path in self.handler.chat_paths and presents_key(scope_credential_headers(scope))
        return method in ("GET", "HEAD") and path in self.handler.probe_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.takes(scope):
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)
