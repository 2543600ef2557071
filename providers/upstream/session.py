"""UpstreamSession: one provider's pooled, policy-checked HTTP connection to its upstream API.

Every HTTP provider sends its requests through one of these (per event loop),
made by ``HTTPProvider``: aiohttp's client over a ``PolicyCheckedConnector``
(``providers.upstream.connections``), so that every new connection is checked
against the upstream policy after DNS, and TCP_NODELAY is set on each. aiohttp
is used directly: an ``httpx.AsyncClient`` in front of it (URL merging, cookie
extraction, its request and response models) cost about a fifth of a key
client's whole call through Echo (``make bench``), and none of it is needed
to send a provider's JSON and read its answer.

What a request gets:

- the session's headers (the provider's: authentication, ``Accept``) and the
  call's own, in that order; ``Content-Type: application/json`` with a JSON
  body; aiohttp adds ``Host``, ``Content-Length``, ``Accept-Encoding`` and
  the ``User-Agent``. A header with a line break or a NUL is refused before
  any connection, without its value in the error (it may be a key);
- no redirects (a provider reports one as an error), no cookie jar (an
  upstream's cookies are not one client's to carry to the next), no proxy
  from the environment (a proxy would resolve and connect past the policy);
- timeouts: CONNECT_TIMEOUT bounds DNS, TCP and TLS for one connection,
  READ_TIMEOUT each wait for the next bytes of the answer and the wait for a
  free connection from a full pool;
- failures as one of four ``TransportFailure`` kinds, which the provider maps
  to its typed errors: refused by the policy, timed out, broke the
  connection (a hang-up, a body cut short, an answer that is not HTTP), or
  unreachable (refused, unresolvable, reset);
- the answer's body read whole (``read``) or line by line as it arrives
  (``lines``, or ``line_batches`` a read's lines at a time, for Server-Sent
  Events and NDJSON), never buffered past a line,
  and a line at most ``MAX_LINE_CHARS`` long (past it the upstream is broken).
  Leaving the ``request`` block before the body's end closes the connection
  instead of pooling it.
"""

from __future__ import annotations

import asyncio
import codecs
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from providers.upstream.connections import BlockedUpstreamError, PolicyCheckedConnector

#: What ``lines`` splits on: the line ends of Server-Sent Events (and NDJSON's ``\n``).
_LINE_END = re.compile(r"\r\n|\r|\n")
#: The longest line ``lines`` holds while waiting for its end: a streamed event is a few
#: kilobytes; an upstream that sends more without a line end is broken, not slow.
MAX_LINE_CHARS = 8 * 1024 * 1024


class TransportFailure(Exception):
    """A request that got no complete answer from the upstream; the message says what happened."""


class RefusedByPolicy(TransportFailure):
    """The upstream policy refused the connection (its ``__cause__`` is the ``BlockedUpstreamError``)."""


class TransportTimeout(TransportFailure):
    """Connecting, or waiting for the next bytes of the answer, took longer than allowed."""


class BrokenConnection(TransportFailure):
    """The upstream hung up before its answer's end, or answered something that is not HTTP."""


class Unreachable(TransportFailure):
    """No connection: refused, unresolvable, reset, or a URL that cannot be dialled."""


class IllegalHeader(TransportFailure):
    """A header with a line break or a NUL, which would split the request's head: nothing sent."""


# Most specific first: the first class the failure is an instance of decides.
_FAILURE_FOR: tuple[tuple[type[BaseException], type[TransportFailure], str], ...] = (
    (BlockedUpstreamError, RefusedByPolicy, "refused by the upstream policy"),
    (aiohttp.ConnectionTimeoutError, TransportTimeout, "connect timeout"),
    (aiohttp.ServerTimeoutError, TransportTimeout, "read timeout"),
    (aiohttp.ClientConnectorError, Unreachable, "connect error"),
    (aiohttp.ServerDisconnectedError, BrokenConnection, "server disconnected"),
    (aiohttp.ClientPayloadError, BrokenConnection, "answer cut short"),
    (aiohttp.ClientResponseError, BrokenConnection, "answer is not HTTP"),
    (aiohttp.InvalidURL, Unreachable, "invalid URL"),
    (aiohttp.NonHttpUrlClientError, Unreachable, "not an HTTP URL"),
    (aiohttp.ClientConnectionError, Unreachable, "connection error"),
    (aiohttp.ClientError, Unreachable, "client error"),
    (asyncio.TimeoutError, TransportTimeout, "read timeout"),
)
_FAILURES = (aiohttp.ClientError, BlockedUpstreamError, asyncio.TimeoutError)


def failure_for(exc: BaseException) -> TransportFailure | None:
    """Return the ``TransportFailure`` that stands for EXC (an aiohttp or policy failure), or None."""
    for kind, failure_class, what in _FAILURE_FOR:
        if isinstance(exc, kind):
            detail = str(exc)
            if kind is BlockedUpstreamError:
                return failure_class(detail)
            return failure_class(f"{what}: {detail}" if detail else what)
    return None


def _raise_failure(exc: BaseException) -> NoReturn:
    failure = failure_for(exc)
    if failure is None:
        raise exc
    raise failure from exc


def checked_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Return HEADERS as a list; refuse one with a line break or NUL, which would split the head.

    The value is never quoted in the error: it may be a key.
    """
    checked = []
    for name, value in headers.items():
        for part in (name, value):
            if "\r" in part or "\n" in part or "\0" in part:
                where = "a header name" if part is name else f"the value of {name!r}"
                raise IllegalHeader(f"Illegal header: a line break or NUL character in {where}.")
        checked.append((name, value))
    return checked


class _ClosingResponse(aiohttp.ClientResponse):
    """aiohttp's answer, which also closes its connection when the request said to.

    A client that sent ``Connection: close`` must not send another request on
    that connection (RFC 9112, 9.6); aiohttp by itself heeds only the server's
    ``Connection: close``, and would pool the connection the server is closing.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        asked = self.request_info.headers.get("Connection", "")
        if asked and "close" in (token.strip().lower() for token in asked.split(",")):
            if connection.protocol is not None:
                connection.protocol.force_close()
        return await super().start(connection)


class UpstreamAnswer:
    """An upstream's answer: status and headers at once, the body read whole or line by line."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def reason(self) -> str:
        return self._response.reason or ""

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The answer's headers, looked up without regard to case."""
        return self._response.headers

    async def read(self) -> bytes:
        """Return the whole body."""
        try:
            return await self._response.read()
        except _FAILURES as exc:
            _raise_failure(exc)

    async def lines(self) -> AsyncIterator[str]:
        """Yield the body's lines (UTF-8, ends stripped) as they arrive; the last one even unended."""
        async for batch in self.line_batches():
            for line in batch:
                yield line

    async def line_batches(self) -> AsyncIterator[list[str]]:
        """Yield the body's lines as ``lines`` does, in lists: the lines each read from the network completed.

        A streamed answer's event is one read, two lines: one step through
        a reader's generators per event, not one per line.
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            async for chunk in self._response.content.iter_any():
                pending += decoder.decode(chunk)
                # A CR that ends what came may be half of a CRLF: keep it for the next bytes.
                held_cr = pending.endswith("\r")
                *complete, pending = _LINE_END.split(pending[:-1] if held_cr else pending)
                if complete:
                    yield complete
                if len(pending) > MAX_LINE_CHARS:
                    raise BrokenConnection(f"a line longer than {MAX_LINE_CHARS:,} characters")
                if held_cr:
                    pending += "\r"
        except _FAILURES as exc:
            _raise_failure(exc)
        pending += decoder.decode(b"", final=True)
        if pending:
            *complete, last = _LINE_END.split(pending)
            if last:  # the last line, unended
                complete.append(last)
            if complete:
                yield complete

    def finish(self) -> None:
        """Give the connection back to the pool if the body was read to its end; close it otherwise."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class UpstreamExchange:
    """One request and its answer: ``async with session.request(...) as answer``.

    Entering sends the request; leaving gives the connection back to the pool
    or closes it (``UpstreamAnswer.finish``). A class rather than a
    generator's context manager: every upstream call makes one.
    """

    __slots__ = ("_answer", "_body", "_headers", "_method", "_path", "_session")

    def __init__(
        self,
        session: UpstreamSession,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        self._session = session
        self._method = method
        self._path = path
        self._body = body
        self._headers = headers
        self._answer: UpstreamAnswer | None = None

    async def __aenter__(self) -> UpstreamAnswer:
        if self._answer is not None:
            raise RuntimeError("an exchange is entered once")
        self._answer = await self._session._send(
            self._method, self._path, self._body, self._headers
        )
        return self._answer

    async def __aexit__(self, *exc_info: object) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.finish()


class UpstreamSession:
    """One provider's connection pool to BASE_URL, with its HEADERS and timeouts.

    Made on the event loop that uses it (aiohttp's pool belongs to its loop);
    the session opens on the first request and closes with ``aclose``.
    MAX_CONNECTIONS bounds the connections open at once (each streamed answer
    holds one while it streams); an idle one is kept for KEEPALIVE seconds.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        read_timeout: float,
        connect_timeout: float,
        max_connections: int,
        ssl_context: ssl.SSLContext,
        keepalive: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._given_headers = dict(headers)
        self._headers: list[tuple[str, str]] = []
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            # aiohttp's ``connect`` is the whole wait for a connection: a free one
            # from the pool, then DNS, TCP and TLS; ``sock_connect`` is one attempt.
            connect=read_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The aiohttp session, once the first request has opened it."""
        return self._session

    def _open(self) -> aiohttp.ClientSession:
        self._headers = checked_headers(self._given_headers)  # before any connection
        connector = PolicyCheckedConnector(
            connect_timeout=self._connect_timeout,
            ssl=self._ssl_context,
            limit=self._max_connections,
            # One upstream host per provider: its whole pool may go to that host.
            limit_per_host=self._max_connections,
            keepalive_timeout=self._keepalive,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=self._timeout,
            # The provider's own Accept is sent; aiohttp's would come first.
            skip_auto_headers=("Accept", "Content-Type"),
            response_class=_ClosingResponse,
        )
        return self._session

    def url(self, path: str) -> URL:
        """Return the URL of PATH below the base URL (an absolute URL as is), made once per path."""
        url = self._urls.get(path)
        if url is None:
            target = path if "://" in path else self.base_url + "/" + path.lstrip("/")
            url = URL(target, encoded="%" in target)
            if len(self._urls) < 256:  # a provider's paths are few; a model in a path is bounded
                self._urls[path] = url
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamExchange:
        """Send METHOD PATH with BODY (JSON bytes); ``async with`` gives the answer, its body still to read.

        The connection goes back to the pool when the body was read to its end,
        and is closed otherwise.
        """
        return UpstreamExchange(self, method, path, body, headers)

    async def _send(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> UpstreamAnswer:
        session = self._session or self._open()
        sent = self._headers
        if headers:
            sent = [*sent, *checked_headers(headers)]
        if body is not None:
            sent = [*sent, ("Content-Type", "application/json")]
        try:
            response = await session.request(
                method, self.url(path), headers=sent, data=body, allow_redirects=False
            )
        except _FAILURES as exc:
            _raise_failure(exc)
        return UpstreamAnswer(response)

    async def aclose(self) -> None:
        """Close the session and every connection in its pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
