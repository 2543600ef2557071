"""Echo's own middleware: refuse unusable URLs, run Django's header middleware on the loop, and
skip the cookie middleware for API keys.

``UrlCharactersMiddleware`` answers 404 to a path with NUL or another control
character (no route means such a name) and 400 to a query parameter with
NUL: PostgreSQL refuses NUL in a query, so a provider lookup with one was a 500.

``SecurityMiddleware``, ``CommonMiddleware`` and ``XFrameOptionsMiddleware``
are Django's, for every request, key clients' included: the security headers,
HSTS and the HTTPS redirect, the slash redirect. Their hooks only read the
request and set headers (no database, no I/O), so in an async server they
run on the event loop: Django's ``MiddlewareMixin`` would hop to a thread for
each hook, five hops per request, which doubled the middleware's time.

``BrowserMiddleware``: sessions, CSRF, authentication and messages are for
people in a browser, and in an async server each costs thread hops on every
request. A client that offers a key (``Authorization: Bearer`` or
``x-api-key``) carries no cookie for them to read, so its requests to the
API skip them and reach the view as an anonymous user (the view checks the
key); so do the public probes (``/health``, ``/health/live``,
``/health/ready``), which read no session, whoever calls them. Every other request, the pages, the login and the admin included, runs
the whole list in ``settings.ECHO_BROWSER_MIDDLEWARE``, CSRF checks included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse
from django.middleware import clickjacking, common, security
from django.utils.decorators import sync_and_async_middleware
from django.utils.module_loading import import_string

from plugins_api.access.key_credentials import presents_key, request_headers
from plugins_api.edge.api_paths import PUBLIC_API_PATHS, is_api_path
from plugins_api.edge.error_views import bad_request, unusable_path

ViewHook = Callable[[HttpRequest, Callable[..., Any], tuple, dict], HttpResponse | None]


# C0 controls, DEL and lone surrogates: no name Echo serves holds one.
_UNUSABLE_PATH_CHARACTERS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def needs_no_browser(request: HttpRequest) -> bool:
    """Return whether REQUEST skips the browser middleware: a key client's, or a probe's.

    The public probes (``/health``, ``/health/live``, ``/health/ready``) read no
    session and set no cookie, whoever calls them.
    """
    return request.path_info in PUBLIC_API_PATHS or is_key_client(request)


def is_key_client(request: HttpRequest) -> bool:
    """Return whether REQUEST is an API client's, to the API, offering a key.

    The key comes as ``Authorization: Bearer`` or, from Anthropic's SDK, ``x-api-key``.
    """
    # Pages (the chat page at ``/`` and ``/chat/``, ``/accounts/``, ``/admin/``)
    # always run the browser middleware, whatever header a client sends.
    return is_api_path(request.path_info) and presents_key(request_headers(request))


async def _anonymous_user() -> AnonymousUser:
    return AnonymousUser()


def as_key_client(request: HttpRequest) -> HttpRequest:
    """Give REQUEST, which skips the session, the user Django would: anonymous.

    Views read ``request.user`` / ``request.auser()`` whatever the client sent;
    without AuthenticationMiddleware neither would exist (a 500).
    """
    request.user = AnonymousUser()
    request.auser = _anonymous_user
    return request


def refuse_unusable_url(request: HttpRequest) -> HttpResponse | None:
    """Return the answer to a URL Echo cannot serve, or None when REQUEST's URL is fine.

    A control character in the path names nothing: 404, as for any unknown
    path (so every documented path keeps its documented answers). NUL in a
    query parameter: 400 naming the parameter.
    """
    if _UNUSABLE_PATH_CHARACTERS.search(request.path_info):
        return unusable_path(request)
    query = request.META.get("QUERY_STRING", "")
    # The query is decoded only when it may hold a NUL: most requests have none.
    if "%00" in query or "\x00" in query:
        for key, values in request.GET.lists():
            if "\x00" in key or any("\x00" in value for value in values):
                field = key.replace("\x00", "") or "query"
                return bad_request(request, "Query parameters must not contain NUL.", field=field)
    return None


@sync_and_async_middleware
def UrlCharactersMiddleware(get_response: Callable[[HttpRequest], Any]) -> Callable[..., Any]:  # noqa: N802 - a middleware, named like one
    """Refuse a URL whose path holds a control character (404) or whose query holds NUL (400)."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            return refuse_unusable_url(request) or await get_response(request)

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            return refuse_unusable_url(request) or get_response(request)

    return middleware


class HooksOnTheLoop:
    """In an async stack, call a ``MiddlewareMixin``'s hooks on the event loop, not in a thread.

    Only for middleware whose hooks neither block nor touch the database.
    """

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(HooksOnTheLoop, security.SecurityMiddleware):
    """Django's SecurityMiddleware (security headers, HSTS, HTTPS redirect), on the loop."""


class CommonMiddleware(HooksOnTheLoop, common.CommonMiddleware):
    """Django's CommonMiddleware (the slash redirect, Content-Length), on the loop."""


class XFrameOptionsMiddleware(HooksOnTheLoop, clickjacking.XFrameOptionsMiddleware):
    """Django's XFrameOptionsMiddleware, on the loop."""


class BrowserMiddleware:
    """Run the browser middleware (sessions, CSRF, login, messages), except for API key clients."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        chain = get_response
        instances = []
        for path in reversed(settings.ECHO_BROWSER_MIDDLEWARE):
            chain = import_string(path)(chain)
            instances.append(chain)
        self.browser_chain = chain
        # Django calls process_view hooks only for the middleware it built
        # itself, so the inner ones (CSRF's check) are called from here.
        self.view_hooks: list[ViewHook] = [
            m.process_view for m in reversed(instances) if hasattr(m, "process_view")
        ]
        if self.async_mode:
            markcoroutinefunction(self)
            self.process_view = self._aprocess_view
        else:
            self.process_view = self._process_view

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if needs_no_browser(request):
            return self.get_response(as_key_client(request))
        return self.browser_chain(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if needs_no_browser(request):
            return await self.get_response(as_key_client(request))
        return await self.browser_chain(request)

    def _process_view(self, request: HttpRequest, view: Any, args: tuple, kwargs: dict) -> Any:
        if needs_no_browser(request):
            return None
        for hook in self.view_hooks:
            response = hook(request, view, args, kwargs)
            if response is not None:
                return response
        return None

    async def _aprocess_view(
        self, request: HttpRequest, view: Any, args: tuple, kwargs: dict
    ) -> Any:
        if needs_no_browser(request):
            return None
        for hook in self.view_hooks:
            response = await sync_to_async(hook, thread_sensitive=True)(request, view, args, kwargs)
            if response is not None:
                return response
        return None
