"""What the site middleware does to a key client's call, learnt once from the middleware itself.

For a key client's chat call (or a probe), ``settings.MIDDLEWARE`` does the
same few things every time: it gives the request its id, checks its host,
skips the browser middleware, and adds the same headers to the answer
(X-Frame-Options, the security headers, HSTS over HTTPS), its length and
its id. Run as Django's chain of hooks, setting those headers one by one on
the response object, that is about a tenth of what Echo adds to an upstream
call's latency on a machine that is not already warm (``make bench``; see
docs/BENCHMARKS.md, "Comparing two versions of Echo").
``MiddlewareEffects`` asks Django's own response hooks once, at start-up,
which headers they add (over HTTP and over HTTPS), encodes them once, and
the hot path (``echo_site.hot_path``) adds them to the answer as it writes
it, in the order the chain would have.

Only where the answer is sure to be the same: ``for_settings`` returns None
unless ``settings.MIDDLEWARE`` is Echo's own list (a middleware added in
settings runs through Django's chain), no user agent is refused and no
``www.`` is prepended; ``takes`` leaves to the chain any request whose
answer could differ: one the HTTPS redirect answers, one with NUL in its
query, one whose host is not allowed, one that needs the browser
middleware. A header the view set itself is not added again, as the hooks'
``setdefault`` would not. ``tests/echo_site/test_hot_path.py`` sends every
case both ways and compares the answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.module_loading import import_string

from echo_site.middleware import (
    BrowserMiddleware,
    CommonMiddleware,
    SecurityMiddleware,
    UrlCharactersMiddleware,
    XFrameOptionsMiddleware,
    as_key_client,
    needs_no_browser,
)
from echo_site.request_context import HEADER as REQUEST_ID_HEADER
from echo_site.request_context import (
    RequestIdMiddleware,
    current_request_id,
    request_id_for,
)

#: The middleware whose effects are known here, in the order of Echo's settings.
KNOWN_MIDDLEWARE = (
    RequestIdMiddleware,
    SecurityMiddleware,
    UrlCharactersMiddleware,
    CommonMiddleware,
    XFrameOptionsMiddleware,
    BrowserMiddleware,
)
FRAME_HEADER = "X-Frame-Options"
#: Distinct Host headers whose check is remembered (a client sending many costs only itself).
HOSTS_KEPT = 64

#: (name as the response looks it up, the header as written)
EncodedHeaders = tuple[tuple[str, tuple[bytes, bytes]], ...]
RawHeaders = list[tuple[bytes, bytes]]


def _passes_get_host(request: HttpRequest) -> bool:
    try:
        request.get_host()
    except DisallowedHost:
        return False
    return True


def _never(request: HttpRequest) -> HttpResponseBase:
    raise AssertionError("only the middleware's response hooks are asked")


class _Probe(HttpRequest):
    """A request over HTTPS, or not: all that the response hooks ask of one."""

    def __init__(self, secure: bool) -> None:
        super().__init__()
        self.secure = secure

    def is_secure(self) -> bool:
        return self.secure


def _encoded(pairs: list[tuple[str, str]]) -> EncodedHeaders:
    return tuple((name, (name.encode("ascii"), value.encode("latin-1"))) for name, value in pairs)


def headers_added(hooks: object, secure: bool) -> EncodedHeaders:
    """Return the headers HOOKS' ``process_response`` adds to an answer with its length, over HTTPS if SECURE."""
    answer = HttpResponse(b"")
    answer["Content-Length"] = "0"
    own = set(answer.headers)
    answer = hooks.process_response(_Probe(secure), answer)  # type: ignore[attr-defined]
    return _encoded([(name, value) for name, value in answer.items() if name not in own])


class MiddlewareEffects:
    """The site middleware's effects on a hot path call, done directly (see the module's text)."""

    def __init__(self) -> None:
        frame = XFrameOptionsMiddleware(_never)
        security = SecurityMiddleware(_never)
        # The chain adds, innermost first: X-Frame-Options, the length (CommonMiddleware),
        # the security headers, the request id.
        self.frame = {secure: headers_added(frame, secure) for secure in (False, True)}
        self.security = {secure: headers_added(security, secure) for secure in (False, True)}
        common = headers_added(CommonMiddleware(_never), secure=False)
        if common:  # Django's CommonMiddleware added more than the length: not known here
            raise ValueError(f"CommonMiddleware adds {common!r} to every answer")
        self.ssl_redirect = settings.SECURE_SSL_REDIRECT
        #: Host header -> whether it is allowed, for the hosts allowed as of ``_hosts_for``.
        self._hosts: dict[str, bool] = {}
        self._hosts_for: tuple[object, bool] | None = None

    @classmethod
    def for_settings(cls) -> MiddlewareEffects | None:
        """Return the effects of the current settings' middleware, or None if they are not known here."""
        if tuple(import_string(path) for path in settings.MIDDLEWARE) != KNOWN_MIDDLEWARE:
            return None
        if settings.DISALLOWED_USER_AGENTS or settings.PREPEND_WWW:
            return None
        try:
            return cls()
        except ValueError:
            return None

    def takes(self, request: HttpRequest) -> bool:
        """Return whether REQUEST's answer through the middleware is sure to be the usual one."""
        if self.ssl_redirect and not request.is_secure():
            return False  # answered by the redirect to https
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:
            return False  # refused by UrlCharactersMiddleware
        if not self._host_allowed(request):
            return False  # refused by CommonMiddleware
        return needs_no_browser(request)

    def _host_allowed(self, request: HttpRequest) -> bool:
        """Return whether REQUEST's host passes ``get_host``: asked once per Host a client sends.

        Clients send one or two hosts; each is checked against ``ALLOWED_HOSTS``
        the first time and remembered (``HOSTS_KEPT`` at most, forgotten all at
        once past that, and whenever the hosts allowed change).
        """
        host = request.META.get("HTTP_HOST")
        if host is None or settings.USE_X_FORWARDED_HOST:
            return _passes_get_host(request)  # the host is not the header alone
        allowed_now = (settings.ALLOWED_HOSTS, settings.DEBUG)
        if self._hosts_for != allowed_now or len(self._hosts) >= HOSTS_KEPT:
            self._hosts.clear()
            self._hosts_for = allowed_now
        allowed = self._hosts.get(host)
        if allowed is None:
            allowed = self._hosts[host] = _passes_get_host(request)
        return allowed

    async def answer(
        self,
        request: HttpRequest,
        view: Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> tuple[HttpResponseBase, RawHeaders]:
        """Answer REQUEST by VIEW as the middleware would; return the answer and the headers to add.

        The request gets its id (in the logs too) and the anonymous user; an
        exception becomes the answer Django's converter makes of it.
        """
        request.request_id = request_id_for(request)
        token = current_request_id.set(request.request_id)
        try:
            try:
                response = await view(as_key_client(request))
            except Exception as exc:  # as Django's exception converter does, in a thread
                response = await sync_to_async(response_for_exception, thread_sensitive=False)(
                    request, exc
                )
        finally:
            current_request_id.reset(token)
        return response, self._headers_for(request, response)

    def _headers_for(self, request: HttpRequest, response: HttpResponseBase) -> RawHeaders:
        secure = request.is_secure()
        # The names the view set, as the hooks' lookups compare them (case-blind), read once.
        present = {name.lower() for name in response.headers}
        added: RawHeaders = []
        if not getattr(response, "xframe_options_exempt", False):
            added += (raw for name, raw in self.frame[secure] if name.lower() not in present)
        if not response.streaming and "content-length" not in present:
            added.append((b"Content-Length", str(len(response.content)).encode("ascii")))
        added += (raw for name, raw in self.security[secure] if name.lower() not in present)
        if REQUEST_ID_HEADER.lower() in present:  # the middleware's id replaces the view's
            response[REQUEST_ID_HEADER] = request.request_id
        else:
            added.append((REQUEST_ID_HEADER.encode("ascii"), request.request_id.encode("ascii")))
        return added
