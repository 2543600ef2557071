"""Deployment checks of the browser security middleware, which Echo runs from BrowserMiddleware.

Django's own deploy checks look for SecurityMiddleware, CsrfViewMiddleware and
XFrameOptionsMiddleware in ``MIDDLEWARE``; Echo runs them from
``ECHO_BROWSER_MIDDLEWARE`` instead (see ``echo_site.middleware``), so those
checks (``security.W001``-``W003``) are silenced in the settings, and with
them Django would skip the HSTS and HTTPS-redirect checks that depend on
them. This check puts both back, looking where the middleware really is.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

SECURITY = "django.middleware.security.SecurityMiddleware"
CSRF = "django.middleware.csrf.CsrfViewMiddleware"
FRAMES = "django.middleware.clickjacking.XFrameOptionsMiddleware"


def check_browser_security(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Return a warning for each browser protection a production deployment lacks."""
    browser = list(getattr(settings, "ECHO_BROWSER_MIDDLEWARE", []))
    found: list[checks.CheckMessage] = []
    for number, (path, what) in enumerate(
        [
            (SECURITY, "HSTS and the HTTPS redirect"),
            (CSRF, "CSRF protection"),
            (FRAMES, "X-Frame-Options"),
        ],
        start=1,
    ):
        if path not in browser:
            found.append(
                checks.Warning(
                    f"{path} is not in ECHO_BROWSER_MIDDLEWARE: browsers get no {what}.",
                    id=f"echo_site.W00{number}",
                )
            )
    if SECURITY in browser:
        if not settings.SECURE_HSTS_SECONDS:
            found.append(
                checks.Warning(
                    "SECURE_HSTS_SECONDS is 0: browsers are not told to keep to HTTPS.",
                    hint="Set SECURE_HSTS_SECONDS (production's default is a year).",
                    id="echo_site.W004",
                )
            )
        elif not settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            found.append(
                checks.Warning("SECURE_HSTS_INCLUDE_SUBDOMAINS is off.", id="echo_site.W005")
            )
        if not settings.SECURE_SSL_REDIRECT:
            found.append(
                checks.Warning(
                    "SECURE_SSL_REDIRECT is off: plain-HTTP pages are served, not redirected.",
                    hint="Behind a TLS proxy, set ECHO_PROXY_SETS_X_FORWARDED_PROTO=true instead.",
                    id="echo_site.W008",
                )
            )
    if FRAMES in browser and getattr(settings, "X_FRAME_OPTIONS", "DENY") != "DENY":
        found.append(checks.Warning("X_FRAME_OPTIONS is not 'DENY'.", id="echo_site.W019"))
    return found
