"""Which upstream URLs a provider may be pointed at.

A ``base_url`` must be http(s), carry no credentials, and name a host that is
not blocked: link-local addresses and the clouds' metadata endpoints are
always blocked (a provider pointed there would hand out the machine's cloud
credentials), plus whatever ``ECHO_UPSTREAM_BLOCK`` adds. When
``ECHO_UPSTREAM_ALLOW`` is set, the host must also match one of its entries
(exact names, ``*.example.com`` wildcards, IP addresses or CIDR ranges).
Names are checked again after DNS resolution, when the provider starts.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import os
import socket
from urllib.parse import urlsplit

ALWAYS_BLOCKED = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")


def _setting(name: str) -> list[str]:
    try:
        from django.conf import settings

        if settings.configured:
            return list(getattr(settings, name, []) or [])
    except ImportError:  # a plugin tested without Django
        pass
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def _networks(entries: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return networks


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Return why ADDRESS may not be an upstream, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for network in _networks([*ALWAYS_BLOCKED, *_setting("ECHO_UPSTREAM_BLOCK")]):
        if address.version == network.version and address in network:
            return f"{address} is in a blocked range ({network})."
    return None


def _allowed(host: str) -> bool:
    allow = _setting("ECHO_UPSTREAM_ALLOW")
    if not allow:
        return True
    address = _address(host)
    for entry in allow:
        if address is not None:
            for network in _networks([entry]):
                if address.version == network.version and address in network:
                    return True
        if fnmatch.fnmatch(host.lower(), entry.lower()):
            return True
    return False


def base_url_problem(url: str) -> str | None:
    """Return why URL may not be a provider's base URL, or None when it may."""
    try:
        parts = urlsplit(url)
        port = parts.port  # noqa: F841 - raises on a bad port
    except ValueError as exc:
        return f"Not a valid URL: {exc}."
    if parts.scheme not in ("http", "https"):
        return "Must start with http:// or https://."
    if parts.username or parts.password:
        return "Must not contain credentials; set the key in its own setting."
    host = parts.hostname
    if not host:
        return "Must name a host."
    address = _address(host)
    if address is not None and (problem := address_problem(address)):
        return problem
    if not _allowed(host):
        return f"Host {host!r} is not in ECHO_UPSTREAM_ALLOW."
    return None


async def resolved_problem(url: str) -> str | None:
    """Return why URL's host, once resolved, may not be an upstream, or None."""
    host = urlsplit(url).hostname
    if not host or _address(host) is not None:
        return None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return None  # unresolvable now: the request itself will fail, typed, and be retried
    for info in infos:
        address = _address(info[4][0])
        if address is not None and (problem := address_problem(address)):
            return f"Host {host!r} resolves to {problem}"
    return None
