"""Upstream connections that are checked against the URL policy when they open.

A provider's host name is checked when its config is saved and when it
starts, but DNS can answer differently later (DNS rebinding: a name that
resolved to a public address at start resolves to 169.254.169.254 or a
loopback service a minute on). So the HTTP client of every provider opens
its connections through ``PolicyCheckedTransport``: each new connection
resolves the host here, checks every address the resolver gave against
``providers.upstream.policy``, and connects to a checked address, never to
the name (which the socket layer would resolve again). TLS still verifies
and sends SNI for the name, and the Host header is untouched, because httpcore
takes both from the request's origin, not from the address connected to.

Connections are pooled, so the cost (one lookup, which connecting needs
anyway) is paid per new connection, not per request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable

import httpcore
import httpx

from providers.upstream.policy import connection_problem, host_problem


class BlockedUpstreamError(httpcore.ConnectError):
    """A connection was refused by the upstream policy; the message says why."""


async def resolve_host(host: str, port: int) -> list[str]:
    """Return the IP addresses HOST resolves to, in the resolver's order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def resolved_problem(url: str) -> str | None:
    """Return why URL's host, once resolved now, may not be an upstream, or None.

    A host that does not resolve now is not a problem here: the request
    itself will fail, typed, and each connection is checked when it opens.
    """
    try:
        parsed = httpx.URL(url)
        host, port = parsed.raw_host.decode("ascii"), parsed.port or 443
    except (httpx.InvalidURL, ValueError):
        return None  # base_url_problem has said why
    if not host:
        return None
    try:
        addresses = await resolve_host(host, port)
    except OSError:
        return None
    return connection_problem(host, addresses)


class PolicyCheckedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks, then connects to an address."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Open a connection to HOST:PORT if every address HOST resolves to may be reached.

        The lookup counts against the connect TIMEOUT, as it would inside
        the socket layer. Addresses are tried in the resolver's order.
        """
        # A literal or a metadata name is refused before any lookup.
        if problem := host_problem(host):
            raise BlockedUpstreamError(problem)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve_host(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"Resolving {host!r} timed out.") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"Cannot resolve {host!r}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} resolves to no address.")
        if problem := connection_problem(host, addresses):
            raise BlockedUpstreamError(problem)
        last_error: Exception | None = None
        for address in addresses:
            left = None if timeout is None else max(0.0, timeout - (loop.time() - started))
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=left,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # at least one address was tried
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refuse: a provider reaches its upstream over TCP only."""
        raise BlockedUpstreamError("Unix sockets are not upstreams.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PolicyCheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool opening connections through the policy.

    httpx does not take a network backend, so the pool it builds is replaced
    by the same pool over ``PolicyCheckedBackend`` (httpx is pinned; the
    tests of ``providers.upstream.connections`` fail if this stops working).
    """

    def __init__(self, *, verify: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=verify, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PolicyCheckedBackend(),
        )
