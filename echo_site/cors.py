"""CORS: which other origins' pages may call Echo's API from a browser (``ECHO_CORS_ORIGINS``).

Off by default: with no origin configured the application is served as it
is, and a browser keeps other sites' pages from reading Echo's answers. With
origins configured, Starlette's ``CORSMiddleware`` (pure ASGI) answers
preflights (``OPTIONS`` with ``Access-Control-Request-Method``) itself and
adds ``Access-Control-Allow-Origin`` to the answers of an allowed origin.

It wraps the whole HTTP application, outside ``RequestBodyLimit``: the
refusals made before Django runs (401 before the body is read, 413) carry
the headers too, so that a browser app can read why it was refused.
Credentials are never allowed cross-origin: a page on another origin sends
a client key (``Authorization: Bearer`` or ``x-api-key``), never the admin's
session cookie. Every request header is allowed (the SDKs' ``x-stainless-*``
and ``anthropic-*`` included), and the headers a client acts on are exposed:
the request id, the answering provider, ``Retry-After`` and the rate-limit
counters of both APIs.
"""

from __future__ import annotations

import re

from django.conf import settings
from starlette.middleware.cors import CORSMiddleware

from echo_site.request_body_limit import ASGIApp

#: The methods of Echo's API.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: The response headers a browser app may read besides the safelisted ones.
EXPOSED_HEADERS = (
    "x-request-id",
    "x-echo-provider",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    *(
        f"x-ratelimit-{field}-{kind}"
        for kind in ("requests", "tokens")
        for field in ("limit", "remaining", "reset")
    ),
    *(
        f"anthropic-ratelimit-{kind}-{field}"
        for kind in ("requests", "tokens")
        for field in ("limit", "remaining", "reset")
    ),
)


def origin_rules(origins: list[str]) -> tuple[list[str], str | None]:
    """Split ORIGINS into exact origins and one regular expression for the ``*.`` ones."""
    exact = [origin for origin in origins if "*." not in origin]
    wildcards = [origin for origin in origins if "*." in origin]
    if not wildcards:
        return exact, None
    patterns = []
    for origin in wildcards:
        scheme, _, host = origin.partition("://*.")
        # One or more labels before the domain: https://*.example.com is not https://example.com.
        patterns.append(re.escape(scheme) + r"://([A-Za-z0-9-]+\.)+" + re.escape(host))
    return exact, "|".join(f"(?:{pattern})" for pattern in patterns)


def with_cors(app: ASGIApp) -> ASGIApp:
    """Return APP behind the CORS policy of ``ECHO_CORS_ORIGINS``; APP itself when it is empty."""
    origins = list(settings.ECHO_CORS_ORIGINS)
    if not origins:
        return app
    exact, wildcard = origin_rules(origins)
    return CORSMiddleware(
        app,
        allow_origins=exact,
        allow_origin_regex=wildcard,
        allow_methods=METHODS,
        allow_headers=["*"],
        allow_credentials=False,
        expose_headers=EXPOSED_HEADERS,
        max_age=settings.ECHO_CORS_MAX_AGE,
    )
