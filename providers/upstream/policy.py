"""Which upstream URLs and addresses a provider may reach.

A ``base_url`` must be http(s), carry no credentials, and name a host that is
not blocked. Always blocked: the unspecified addresses (``0.0.0.0/8`` and
``::``, which reach the machine's own loopback services), link-local
addresses, the clouds' metadata addresses and their well-known host names
(a provider pointed there would hand out the machine's cloud credentials),
plus whatever ``ECHO_UPSTREAM_BLOCK`` adds. When ``ECHO_UPSTREAM_ALLOW`` is
set, the host must also match one of its entries (exact names,
``*.example.com`` wildcards, IP addresses or CIDR ranges).

An address is checked in every spelling the resolver accepts: the legacy
IPv4 forms (``0xa9fea9fe``, ``2852039166``, ``0251.0376.0251.0376``,
``169.254.43518``) and IPv6 addresses that carry an IPv4 address
(IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), which are checked as the
IPv4 address(es) they embed. ``base_url_problem`` is the one check every
write path runs (through the plugin's config validation);
``providers.upstream.connections`` runs ``connection_problem`` on every new
connection, after DNS, so a name that later resolves elsewhere is caught too.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from urllib.parse import unquote

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_BLOCKED = (
    "0.0.0.0/8",  # "this network": 0.0.0.0 connects to the local machine
    "::/128",  # unspecified, same as 0.0.0.0
    "169.254.0.0/16",  # link-local, home of most clouds' metadata service
    "fe80::/10",
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
)

# Host names of cloud metadata services. They resolve only inside the cloud,
# so a check of their address at save time proves nothing: refuse the names.
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.com",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# Also refused: "metadata.*.internal" and "instance-data.*.internal", the
# per-region spellings (instance-data.us-west-2.compute.internal).
_METADATA_LABELS = ("metadata", "instance-data")

# One part of a legacy IPv4 spelling as inet_aton reads it: hex, octal or decimal.
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
_NUMERIC_HOST = re.compile(
    r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}\.?"
)

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


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


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Return HOST read the way inet_aton reads it (``127.1``, ``0x7f.1``, ``2130706433``), or None.

    Raise ValueError for a numeric host that is out of range: the resolver
    would look it up as a name, and nothing good comes of that either.
    """
    if not _NUMERIC_HOST.fullmatch(host):
        return None
    parts = host.rstrip(".").split(".")
    if not all(_IPV4_PART.fullmatch(p) for p in parts):
        raise ValueError(f"{host!r} is not a valid IPv4 address.")
    values = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            values.append(int(part, 8))
        else:
            values.append(int(part))
    # Each leading part is one byte; the last fills the bytes that remain.
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (4 - len(leading)):
        raise ValueError(f"{host!r} is not a valid IPv4 address.")
    number = last
    for index, value in enumerate(leading):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def parse_address(host: str) -> IPAddress | None:
    """Return the IP address HOST spells, in any form the resolver accepts; None for a name.

    Raise ValueError for a host that looks like an address but is not one.
    """
    host = unquote(host.strip()).strip("[]")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address.") from None
    return _legacy_ipv4(host)


def embedded_addresses(address: IPAddress) -> list[IPAddress]:
    """Return ADDRESS and every IPv4 address it carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    found: list[IPAddress] = [address]
    if not isinstance(address, ipaddress.IPv6Address):
        return found
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_TRANSLATED or any(address in net for net in _NAT64):
        found.append(low32)
    # ::a.b.c.d; :: and ::1 are themselves, not 0.0.0.0 and 0.0.0.1.
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        found.append(low32)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def address_problem(address: IPAddress) -> str | None:
    """Return why ADDRESS (or an IPv4 address it carries) may not be an upstream, or None."""
    networks = _networks([*ALWAYS_BLOCKED, *_setting("ECHO_UPSTREAM_BLOCK")])
    for candidate in embedded_addresses(address):
        for network in networks:
            if candidate.version == network.version and candidate in network:
                shown = f"{address}" if candidate == address else f"{address} (that is {candidate})"
                return f"{shown} is in a blocked range ({network})."
    return None


def _name_problem(name: str) -> str | None:
    labels = name.split(".")
    if name in METADATA_HOSTS or (labels[0] in _METADATA_LABELS and labels[-1] == "internal"):
        return f"Host {name!r} is a cloud metadata service."
    return None


def _allowed(host: str, address: IPAddress | None) -> bool:
    allow = _setting("ECHO_UPSTREAM_ALLOW")
    if not allow:
        return True
    for entry in allow:
        if address is not None:
            for network in _networks([entry]):
                if address.version == network.version and address in network:
                    return True
        if fnmatch.fnmatch(host, entry.lower()):
            return True
    return False


def host_problem(host: str) -> str | None:
    """Return why HOST (a name or an address in any spelling) may not be an upstream, or None.

    Names are compared without case and without the trailing dot, as the
    resolver treats them.
    """
    host = host.strip().lower()
    name = host.rstrip(".")
    if not name:
        return "Must name a host."
    try:
        address = parse_address(name)
    except ValueError as exc:
        return str(exc)
    if address is not None:
        problem = address_problem(address)
    else:
        problem = _name_problem(name)
    if problem:
        return problem
    if not _allowed(name, address):
        return f"Host {name!r} is not in ECHO_UPSTREAM_ALLOW."
    return None


def base_url_problem(url: str) -> str | None:
    """Return why URL may not be a provider's base URL, or None when it may.

    The URL is read with httpx's parser, the one that later connects: a URL
    that another parser reads differently is judged by where it would go.
    """
    try:
        parsed = httpx.URL(url)
        parsed.port  # noqa: B018 - raises on a bad port
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        return f"Not a valid URL: {exc}."
    if parsed.scheme not in ("http", "https"):
        return "Must start with http:// or https://."
    if parsed.userinfo:
        return "Must not contain credentials; set the key in its own setting."
    host = parsed.raw_host.decode("ascii", "replace")
    if not host:
        return "Must name a host."
    return host_problem(host)


def connection_problem(host: str, addresses: list[str]) -> str | None:
    """Return why a connection to HOST, resolved to ADDRESSES, may not be opened, or None.

    Every address must pass: a resolver that answers with one good and one
    blocked address (DNS rebinding) is refused outright.
    """
    problem = host_problem(host)
    if problem:
        return problem
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return f"Host {host!r} resolves to {text!r}, which is not an IP address."
        if problem := address_problem(address):
            return f"Host {host!r} resolves to an address that may not be reached: {problem}"
    return None
