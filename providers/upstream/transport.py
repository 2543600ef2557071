"""PolicyCheckedTransport: httpx's API over aiohttp's connection pool, policy-checked.

Providers keep calling upstreams through an ``httpx.AsyncClient`` (the plugin
contract); underneath, this transport sends each request through one aiohttp
session per provider, because aiohttp's connection handling costs about half
of httpcore's per call on loopback and stays flat under concurrency where
httpcore's pool does not (``bench/upstream_clients.py``).

What it keeps from httpx's own transport, so that nothing above it changes:

- the request as httpx built it: the URL exactly as encoded, the headers in
  their order and case (aiohttp adds none: httpx sets Host, Accept,
  Accept-Encoding, User-Agent and Content-Length), no redirects, no
  decompression (httpx decodes), no cookie jar (httpx keeps cookies), no
  proxy from the environment;
- the timeouts: httpx's ``connect`` bounds DNS, TCP and TLS; ``pool`` bounds
  the wait for a connection from the pool as well; ``read`` bounds each wait
  for the next bytes of the answer;
- the errors, each the httpx error httpcore raises for the same failure, so
  ``HTTPProvider`` maps it to the same ``ProviderError``: a connect timeout is
  ``httpx.ConnectTimeout``, a read timeout ``httpx.ReadTimeout``, a refused
  or unresolvable host ``httpx.ConnectError``, an upstream that hangs up or
  breaks HTTP ``httpx.RemoteProtocolError``, and a policy refusal
  ``httpx.ConnectError`` whose ``__cause__`` is the ``BlockedUpstreamError``;
- the body streamed as it arrives, chunk by chunk, never buffered; closing a
  response before its end closes its connection instead of pooling it.

The pool is a ``PolicyCheckedConnector`` (``providers.upstream.connections``):
every new connection is checked against the upstream policy after DNS, and
aiohttp sets TCP_NODELAY on each. The session opens on the first request, on
the loop that makes it, and closes with the httpx client.

(The ``httpx-aiohttp`` package does the same job, but sends every header name
in lower case and reports a refused or dropped connection as a connect
timeout; the benchmark measures it beside this transport.)
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import aiohttp
import httpx
from yarl import URL

from providers.upstream.connections import BlockedUpstreamError, PolicyCheckedConnector

# Most specific first: the first class the failure is an instance of decides.
_HTTPX_ERROR_FOR: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (BlockedUpstreamError, httpx.ConnectError),
    # Waiting for a pool slot, resolving, connecting, the TLS handshake.
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    # A body cut short, or an answer that is not HTTP.
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    # A connection reset or closed while the request was sent or the answer read.
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientError, httpx.TransportError),
    (asyncio.TimeoutError, httpx.ReadTimeout),
)
_FAILURES = (aiohttp.ClientError, BlockedUpstreamError, asyncio.TimeoutError)


def httpx_error_for(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """Return the httpx error that stands for EXC (an aiohttp or policy failure), or None."""
    for kind, error_class in _HTTPX_ERROR_FOR:
        if isinstance(exc, kind):
            return error_class(str(exc) or type(exc).__name__, request=request)
    return None


def raise_as_httpx(exc: BaseException, request: httpx.Request) -> NoReturn:
    """Raise the httpx error that stands for EXC, caused by EXC; EXC itself if none does."""
    error = httpx_error_for(exc, request)
    if error is None:
        raise exc
    raise error from exc


class _ResponseBody(httpx.AsyncByteStream):
    """An answer's body as the upstream sends it, chunk by chunk, its failures made httpx's."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _FAILURES as exc:
            raise_as_httpx(exc, self._request)

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end; closed otherwise.
        self._response.release()


class _ClosingResponse(aiohttp.ClientResponse):
    """aiohttp's answer, which also closes its connection when the request said to.

    A client that sent ``Connection: close`` must not send another request on
    that connection (RFC 9112, 9.6); aiohttp by itself heeds only the server's
    ``Connection: close``, and would pool the connection the server is closing.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        asked = self.request_info.headers.get("Connection", "")
        if "close" in (token.strip().lower() for token in asked.split(",")):
            if connection.protocol is not None:
                connection.protocol.force_close()
        return await super().start(connection)


def _headers_of(request: httpx.Request) -> list[tuple[str, str]]:
    """Return REQUEST's headers as sent, in order and case; refuse one that would split the head.

    The value is never quoted in the error: it may be a key.
    """
    headers = []
    for name, value in request.headers.raw:
        for part in (name, value):
            if b"\r" in part or b"\n" in part or b"\0" in part:
                where = (
                    "a header name" if part is name else f"the value of {name.decode('latin-1')!r}"
                )
                raise httpx.LocalProtocolError(
                    f"Illegal header: a line break or NUL character in {where}.",
                    request=request,
                )
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return headers


def _timeouts(request: httpx.Request) -> aiohttp.ClientTimeout:
    timeout: dict[str, float | None] = request.extensions.get("timeout", {})
    return aiohttp.ClientTimeout(
        total=None,
        # aiohttp's ``connect`` is the whole wait for a connection: a pool slot,
        # then DNS, TCP and TLS; its ``sock_connect`` is one connection attempt.
        connect=timeout.get("pool"),
        sock_connect=timeout.get("connect"),
        sock_read=timeout.get("read"),
    )


class PolicyCheckedTransport(httpx.AsyncBaseTransport):
    """httpx's transport over one policy-checked aiohttp session: one provider's pool.

    LIMITS gives the pool's size (``max_connections``; ``None`` is no limit)
    and how long an idle connection is kept (``keepalive_expiry``); DNS
    lookups are bounded by CONNECT_TIMEOUT. TLS uses VERIFY and checks the
    request's host name.
    """

    def __init__(
        self, *, verify: ssl.SSLContext, limits: httpx.Limits, connect_timeout: float | None
    ) -> None:
        self._ssl_context = verify
        self._limits = limits
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """Return the aiohttp session once the first request has opened it."""
        return self._session

    def _open_session(self) -> aiohttp.ClientSession:
        limit = self._limits.max_connections or 0  # aiohttp's "no limit" is 0
        connector = PolicyCheckedConnector(
            connect_timeout=self._connect_timeout,
            ssl=self._ssl_context,
            limit=limit,
            # One upstream host per provider: its whole pool may go to that host.
            limit_per_host=limit,
            keepalive_timeout=self._limits.keepalive_expiry,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # httpx keeps the client's cookies; a second jar would send them twice.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            # The headers are httpx's, all of them: aiohttp adds none of its own.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            response_class=_ClosingResponse,
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send REQUEST and return its answer with the body still to read."""
        session = self._session or self._open_session()
        headers = _headers_of(request)
        data: Any
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            # A streamed request body: aiohttp frames it itself.
            data = request.stream
            headers = [(n, v) for n, v in headers if n.lower() != "transfer-encoding"]
        try:
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=_timeouts(request),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        except _FAILURES as exc:
            raise_as_httpx(exc, request)
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            extensions=extensions,
        )

    async def aclose(self) -> None:
        """Close the session and every connection in its pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
