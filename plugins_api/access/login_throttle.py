"""Login throttling: refuse password guessing at ``/admin/login/`` and ``/accounts/login/``.

The guard sits in the authentication backend (``ThrottledModelBackend``, the
only entry of ``AUTHENTICATION_BACKENDS``), so every password login goes
through it whatever view or form asked. Each attempt is counted before the
password is checked, per username and per client address, in Django's
default cache: Redis when ``REDIS_URL`` is set, so that every worker sees
the same counts. A successful login takes its attempt back. When a count
passes its limit (``ECHO_LOGIN_FAILURES_PER_USERNAME`` /
``ECHO_LOGIN_FAILURES_PER_ADDRESS`` within ``ECHO_LOGIN_WINDOW_SECONDS``),
that username or address is locked for ``ECHO_LOGIN_LOCKOUT_SECONDS``: every
attempt is refused without looking at the password, the right one included.

Counting before checking, with the cache's atomic increment, means a burst of
parallel guesses cannot all slip through before the first failure is counted.

The login views are wrapped (``login_view``, ``admin_login_view``) only to
say so: the form shows why it refused and when to try again, and the answer
is HTTP 429 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

# Where the backend leaves its refusal for the form and the view to report.
REFUSAL_ATTRIBUTE = "echo_login_refusal"
KEY_PREFIX = "login-throttle"


@dataclass(frozen=True, slots=True)
class LoginRefusal:
    """Why a login attempt was refused without checking the password, and for how long."""

    retry_after: int
    message: str


def client_address(request: HttpRequest | None) -> str | None:
    """Return the address of the client behind REQUEST, or None when it has none.

    ``REMOTE_ADDR``, unless ``ECHO_TRUSTED_PROXY_COUNT`` proxies stand in front:
    each appends the address it saw to ``X-Forwarded-For``, so the client is
    the entry that many places from the right. The entries left of it were
    written by the client and prove nothing.
    """
    if request is None:
        return None
    address = request.META.get("REMOTE_ADDR") or None
    hops = settings.ECHO_TRUSTED_PROXY_COUNT
    if hops:
        forwarded = [
            part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        ]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= hops:
            address = forwarded[-hops]
    if address is None:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address[:64]  # a test client or a unix socket: still one bucket, bounded


def _key(kind: str, value: str) -> str:
    # Hashed: a username may hold characters or a length no cache key may.
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{KEY_PREFIX}:{kind}:{digest}"


@dataclass(frozen=True, slots=True)
class _Bucket:
    kind: str
    value: str
    limit: int

    @property
    def count_key(self) -> str:
        return _key(f"{self.kind}-count", self.value)

    @property
    def lock_key(self) -> str:
        return _key(f"{self.kind}-lock", self.value)


def _buckets(username: str, address: str | None) -> list[_Bucket]:
    # Case-folded: a database with case-insensitive usernames must not give
    # "Admin" and "admin" separate allowances.
    buckets = [_Bucket("username", username.casefold(), settings.ECHO_LOGIN_FAILURES_PER_USERNAME)]
    if address is not None:
        buckets.append(_Bucket("address", address, settings.ECHO_LOGIN_FAILURES_PER_ADDRESS))
    return buckets


def _refusal(unlock_at: float) -> LoginRefusal:
    retry_after = max(1, math.ceil(unlock_at - time.time()))
    minutes = math.ceil(retry_after / 60)
    wait = f"{minutes} minute{'s' if minutes != 1 else ''}"
    return LoginRefusal(
        retry_after=retry_after,
        message=(
            "Too many failed login attempts for this account or from this address. "
            f"Try again in {wait}."
        ),
    )


def _count_attempt(bucket: _Bucket) -> int:
    """Add one attempt to BUCKET's count in the current window; return the new count."""
    window = settings.ECHO_LOGIN_WINDOW_SECONDS
    for _ in range(2):
        cache.add(bucket.count_key, 0, timeout=window)  # starts the window; no-op if running
        try:
            return cache.incr(bucket.count_key)
        except ValueError:
            continue  # the window expired between the two calls: start a new one
    return 1


def _lock(bucket: _Bucket) -> float:
    """Lock BUCKET for the lockout period (unless it already is); return when it unlocks."""
    unlock_at = time.time() + settings.ECHO_LOGIN_LOCKOUT_SECONDS
    if not cache.add(bucket.lock_key, unlock_at, timeout=settings.ECHO_LOGIN_LOCKOUT_SECONDS):
        unlock_at = cache.get(bucket.lock_key, unlock_at)
    # Counting starts afresh once the lockout ends.
    cache.delete(bucket.count_key)
    logger.warning("login locked for a %s after too many failed attempts", bucket.kind)
    return unlock_at


def login_attempt_admit(*, username: str, address: str | None) -> LoginRefusal | None:
    """Count a login attempt for USERNAME from ADDRESS; return a refusal if it may not proceed."""
    buckets = _buckets(username, address)
    locks = cache.get_many([b.lock_key for b in buckets])
    if locks:
        return _refusal(max(locks.values()))
    for bucket in buckets:
        if _count_attempt(bucket) > bucket.limit:
            return _refusal(_lock(bucket))
    return None


def login_attempt_succeeded(*, username: str, address: str | None) -> None:
    """Take back the attempt of a successful login, so that only failures count."""
    for bucket in _buckets(username, address):
        if bucket.kind == "username":
            cache.delete(bucket.count_key)  # the owner knows the password: start afresh
            continue
        # Not cleared: an attacker who owns one account must not reset the address count.
        try:
            if cache.decr(bucket.count_key) < 0:
                cache.delete(bucket.count_key)
        except ValueError:
            pass  # the window ended meanwhile


class ThrottledModelBackend(ModelBackend):
    """Django's ModelBackend behind the login throttle.

    While a username or address is locked, ``authenticate`` raises
    ``PermissionDenied``, which stops Django's backend chain: no password is
    checked, so the right one does not get in either.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if username is None:
            username = kwargs.get(self._username_field())
        if username is None or password is None:
            return None
        address = client_address(request)
        try:
            refusal = login_attempt_admit(username=str(username), address=address)
        except Exception:
            # Without the shared counts nothing can be throttled: refuse, never guess.
            logger.exception("the login throttle's cache failed; refusing the login")
            refusal = LoginRefusal(
                retry_after=60, message="Logging in is unavailable right now. Try again later."
            )
        if refusal is not None:
            if request is not None:
                setattr(request, REFUSAL_ATTRIBUTE, refusal)
            raise PermissionDenied(refusal.message)
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            try:
                login_attempt_succeeded(username=str(username), address=address)
            except Exception:  # the attempt stays counted: stricter, never looser
                logger.exception("the login throttle's cache failed after a good login")
        return user

    @staticmethod
    def _username_field() -> str:
        from django.contrib.auth import get_user_model

        return get_user_model().USERNAME_FIELD


def login_refusal(request: HttpRequest | None) -> LoginRefusal | None:
    """Return the refusal the throttle left on REQUEST, if it refused."""
    return getattr(request, REFUSAL_ATTRIBUTE, None)


class _RefusalMessageMixin:
    """Say why the login was refused when the throttle refused it, not "wrong password"."""

    request: HttpRequest | None

    def get_invalid_login_error(self) -> ValidationError:
        refusal = login_refusal(self.request)
        if refusal is not None:
            return ValidationError(refusal.message, code="too_many_attempts")
        return super().get_invalid_login_error()  # type: ignore[misc]


class ThrottledAuthenticationForm(_RefusalMessageMixin, AuthenticationForm):
    """The chat login form."""


class ThrottledAdminAuthenticationForm(_RefusalMessageMixin, AdminAuthenticationForm):
    """The admin login form."""


def answer_refusals(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap login VIEW: a refused attempt gets HTTP 429 with ``Retry-After``."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        refusal = login_refusal(request)
        if refusal is not None and response.status_code == 200:
            response.status_code = 429
            response["Retry-After"] = str(refusal.retry_after)
        return response

    return wrapped


login_view = answer_refusals(LoginView.as_view(authentication_form=ThrottledAuthenticationForm))


# The admin's own view, with its context; echo_site/urls.py gives it the form above.
admin_login_view = answer_refusals(admin.site.login)
