"""Decide whether a websocket handshake's ``Origin`` may use the chat: scheme, host and port.

A browser sends its cookies with a websocket handshake whatever page opened
the socket, and sends that page's origin. An origin is accepted when it is
the site's own (the handshake's scheme and ``Host`` header, with that host in
``ALLOWED_HOSTS``: the chat page opens its socket at ``location.host``) or
one listed in ``ECHO_WS_ALLOWED_ORIGINS``. Scheme and port count: a page at
``http://127.0.0.1:9999`` is not Echo at ``http://127.0.0.1:8000``, and must
not chat as the person logged in there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}
# A websocket's scheme names the page scheme that pairs with it.
PAGE_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
# As Django answers an empty ALLOWED_HOSTS under DEBUG.
DEBUG_HOSTS = [".localhost", "127.0.0.1", "[::1]"]


@dataclass(frozen=True, slots=True)
class Origin:
    """A web origin: SCHEME (http or https), HOST (lower case, IPv6 without brackets), PORT."""

    scheme: str
    host: str
    port: int

    def matches(self, pattern: Origin) -> bool:
        """Return whether this origin is PATTERN, or (a host starting ``*.``) one of its subdomains."""
        if (self.scheme, self.port) != (pattern.scheme, pattern.port):
            return False
        if pattern.host.startswith("*."):
            return self.host.endswith(pattern.host[1:])
        return self.host == pattern.host


def parse_origin(text: str) -> Origin | None:
    """Return the origin TEXT (``scheme://host[:port]``) names, or None if it names none.

    ``null`` (sandboxed pages, ``file:``), other schemes, paths and user
    names are not origins a chat page can have.
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return Origin(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme])


def own_origin(scope: dict[str, Any]) -> Origin | None:
    """Return the origin the handshake in SCOPE was made to, or None (no Host, or not allowed).

    The ``Host`` header is what the browser connected to, port included; its
    host must be one of ``ALLOWED_HOSTS``, as Django requires of HTTP requests.
    """
    host = _header(scope, b"host")
    if not host:
        return None
    origin = parse_origin(f"{_page_scheme(scope)}://{host}")
    if origin is None:
        return None
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = DEBUG_HOSTS
    name = f"[{origin.host}]" if ":" in origin.host else origin.host
    return origin if validate_host(name, allowed) else None


def _page_scheme(scope: dict[str, Any]) -> str:
    """Return the scheme of the pages the handshake in SCOPE belongs with: http or https.

    Behind a proxy that ends TLS the server sees plain ``ws``: a proxy trusted
    through Django's ``SECURE_PROXY_SSL_HEADER`` says https, as it does for
    HTTP requests. (Daphne puts no scheme in the scope: ``ws`` is the ASGI default.)
    """
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, secure_value = proxy_header
        header = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")
        value = _header(scope, header)
        if value is not None:
            return "https" if value.split(",")[0].strip() == secure_value else "http"
    return PAGE_SCHEMES.get(str(scope.get("scheme", "ws")), "http")


def listed_origins(patterns: Iterable[str]) -> list[Origin]:
    """Return PATTERNS (``ECHO_WS_ALLOWED_ORIGINS``) parsed; patterns that name no origin drop out."""
    found = []
    for pattern in patterns:
        # "*." is kept in the host: urlsplit leaves it alone, and matches() reads it.
        origin = parse_origin(pattern)
        if origin is not None:
            found.append(origin)
    return found


def origin_allowed(origin_header: str, scope: dict[str, Any]) -> bool:
    """Return whether a page at ORIGIN_HEADER may open the chat socket of SCOPE."""
    origin = parse_origin(origin_header)
    if origin is None or "*" in origin.host:  # a pattern, never a page's origin
        return False
    if origin == own_origin(scope):
        return True
    return any(origin.matches(p) for p in listed_origins(settings.ECHO_WS_ALLOWED_ORIGINS))


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin1")
    return None
