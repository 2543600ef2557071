"""The address of the client behind a request, as the throttles count it.

``REMOTE_ADDR`` (an ASGI scope's ``client``), unless
``ECHO_TRUSTED_PROXY_COUNT`` proxies stand in front: each appends the
address it saw to ``X-Forwarded-For``, so the client is the entry that many
places from the right. The entries left of it were written by the client and
prove nothing. The login throttle (``login_throttle``) reads it from a Django
request; the unknown-key throttle (``unknown_keys``) from the ASGI scope,
before Django has made a request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from django.conf import settings
from django.http import HttpRequest


def client_address_from(remote: str | None, forwarded_for: str) -> str | None:
    """Return the client's address from the connection's REMOTE and the X-Forwarded-For header.

    Normalised (``ipaddress``); what is no IP address (a test client, a unix
    socket) is kept, cut to 64 characters: still one bucket, bounded.
    """
    address = remote or None
    hops = settings.ECHO_TRUSTED_PROXY_COUNT
    if hops:
        forwarded = [part.strip() for part in forwarded_for.split(",")]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= hops:
            address = forwarded[-hops]
    if address is None:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address[:64]


def request_client_address(request: HttpRequest | None) -> str | None:
    """Return the address of the client behind REQUEST, a Django request, or None when it has none."""
    if request is None:
        return None
    return client_address_from(
        request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR", "")
    )


def scope_client_address(scope: Mapping[str, object]) -> str | None:
    """Return the address of the client behind an ASGI SCOPE (HTTP or websocket), or None."""
    client = scope.get("client")
    remote = str(client[0]) if isinstance(client, (list, tuple)) and client else None
    forwarded = ""
    if settings.ECHO_TRUSTED_PROXY_COUNT:
        headers: Iterable[tuple[bytes, bytes]] = scope.get("headers") or ()  # type: ignore[assignment]
        # Sent twice, the header's values are one list (RFC 9110, 5.3).
        forwarded = ",".join(
            value.decode("latin-1") for name, value in headers if name == b"x-forwarded-for"
        )
    return client_address_from(remote, forwarded)
