"""Upstream connections that are checked against the URL policy when they open.

A provider's host name is checked when its config is saved and when it
starts, but DNS can answer differently later (DNS rebinding: a name that
resolved to a public address at start resolves to 169.254.169.254 or a
loopback service a minute on). So every provider's connection pool (an
aiohttp ``PolicyCheckedConnector``, under the provider's
``providers.upstream.session.UpstreamSession``) opens its connections through
``PolicyCheckedResolver``: each new connection to a name resolves the name
here, checks every address the resolver gave against
``providers.upstream.policy``, and hands aiohttp only those checked
addresses, so the socket connects to a checked address, never to the name
(which the socket layer would resolve again). An address literal, which
aiohttp connects to without asking a resolver, is checked by the connector
itself before it opens the connection. TLS still verifies and sends SNI for
the name, and the Host header is untouched: both come from the request's URL,
not from the address connected to.

Connections are pooled and aiohttp's DNS cache is off, so the cost (one
lookup, which connecting needs anyway) is paid per new connection, not per
request, and every new connection asks DNS afresh.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from providers.upstream.policy import connection_problem, host_problem


class BlockedUpstreamError(Exception):
    """A connection was refused by the upstream policy; the message says why.

    Not an ``OSError`` on purpose: aiohttp passes it through untouched (it
    would wrap an ``OSError`` as a DNS failure), so the session can tell a
    refusal from a failure.
    """


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


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class PolicyCheckedResolver(AbstractResolver):
    """An aiohttp resolver that resolves a name, checks every address, and returns them all.

    The lookup is bounded by TIMEOUT (the provider's connect timeout), as it
    would be inside the socket layer. A refused name raises
    ``BlockedUpstreamError``; a lookup that fails raises ``OSError`` and one
    that runs out of time ``TimeoutError``, which aiohttp reports as a
    connect error and a connect timeout.
    """

    def __init__(self, *, timeout: float | None) -> None:
        self._timeout = timeout

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Return the checked addresses of HOST, in the resolver's order of preference."""
        # A metadata name or a name outside ECHO_UPSTREAM_ALLOW is refused before any lookup.
        if problem := host_problem(host):
            raise BlockedUpstreamError(problem)
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await resolve_host(host, port)
        except TimeoutError:
            raise TimeoutError(f"Resolving {host!r} timed out.") from None
        if family:
            addresses = [a for a in addresses if _family_of(a) == family]
        if not addresses:
            raise OSError(f"{host!r} resolves to no address.")
        if problem := connection_problem(host, addresses):
            raise BlockedUpstreamError(problem)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=_family_of(address),
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        """Nothing to release: lookups run on the event loop's resolver."""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class PolicyCheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connection pool, every new connection checked against the upstream policy.

    Names go through ``PolicyCheckedResolver`` (aiohttp's DNS cache is off, so
    each new connection asks it); an address literal, which aiohttp dials
    without a lookup, is checked here when a connection to it opens. Pooled
    connections are reused without a check: they were checked when they opened.
    """

    def __init__(self, *, connect_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(
            resolver=PolicyCheckedResolver(timeout=connect_timeout),
            use_dns_cache=False,
            **kwargs,
        )

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        # The one place aiohttp opens a connection (the pool's reuse path does not
        # come here). Its name is private; aiohttp is pinned and the tests of this
        # module dial a blocked literal, so a rename fails them.
        host = req.url.raw_host or ""
        if _is_address(host) and (problem := host_problem(host)):
            raise BlockedUpstreamError(problem)
        return await super()._create_connection(req, traces, timeout)
