"""Deployment checks of the security middleware, which Echo installs under its own names.

Django's own deploy checks look for SecurityMiddleware, CsrfViewMiddleware
and XFrameOptionsMiddleware by their dotted paths in ``MIDDLEWARE``. Echo
runs Security and X-Frame-Options as subclasses whose hooks run on the event
loop (in ``MIDDLEWARE``, see ``echo_site.middleware``) and CSRF from
``ECHO_BROWSER_MIDDLEWARE``, so those checks (``security.W001``-``W003``) are
silenced in the settings, and with them Django would skip the HSTS and
HTTPS-redirect checks that depend on them. This check puts both back,
looking for each middleware, or a subclass of it, where Echo installs it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.module_loading import import_string


def _installed(middleware: type) -> bool:
    """Return whether MIDDLEWARE, or a subclass, is in MIDDLEWARE or ECHO_BROWSER_MIDDLEWARE."""
    for path in [*settings.MIDDLEWARE, *getattr(settings, "ECHO_BROWSER_MIDDLEWARE", [])]:
        try:
            found = import_string(path)
        except ImportError:
            continue  # Django's own check names the path that does not import
        if isinstance(found, type) and issubclass(found, middleware):
            return True
    return False


def check_browser_security(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Return a warning for each browser protection a production deployment lacks."""
    installed: dict[type, bool] = {}
    found: list[checks.CheckMessage] = []
    for number, (middleware, what) in enumerate(
        [
            (SecurityMiddleware, "HSTS and the HTTPS redirect"),
            (CsrfViewMiddleware, "CSRF protection"),
            (XFrameOptionsMiddleware, "X-Frame-Options"),
        ],
        start=1,
    ):
        installed[middleware] = _installed(middleware)
        if not installed[middleware]:
            path = f"{middleware.__module__}.{middleware.__qualname__}"
            found.append(
                checks.Warning(
                    f"Neither {path} nor a subclass is in MIDDLEWARE or ECHO_BROWSER_MIDDLEWARE:"
                    f" browsers get no {what}.",
                    id=f"echo_site.W00{number}",
                )
            )
    if installed[SecurityMiddleware]:
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
    if (
        installed[XFrameOptionsMiddleware]
        and getattr(settings, "X_FRAME_OPTIONS", "DENY") != "DENY"
    ):
        found.append(checks.Warning("X_FRAME_OPTIONS is not 'DENY'.", id="echo_site.W019"))
    return found
