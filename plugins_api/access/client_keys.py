"""Verify client API keys, with a small in-process cache (keys change only through ``key_changes``).

Verification sits on every request, so it must not cost a database query
each time: a verified key is cached for ``CACHE_SECONDS`` (in the runtime's
``key_cache``); a key saved or revoked in this process drops out of the
cache at once (other workers see a revocation within ``CACHE_SECONDS``).
A key the cache does not hold is looked up only when its digest is in the
worker's index of the digests that open a key (``key_digests``): a made-up
key costs no query, whoever sends it and however many. Unknown keys are
cached too, apart from the known ones (``unknown_key_cache``): each cache
holds at most ``CACHE_MAX_KEYS`` entries, past which its expired entries go,
then its oldest, so a client sending endless random keys can neither grow
it nor push a real key out.
Open chat websockets of a key that is revoked, deleted or loses its chat
scope are closed in every worker (``client_key_push``, on any save of the
row). Each verified use is noted in ``key_last_use``, which writes
``last_used_at`` at most once a minute per key, off the request's path.
A key's identity carries its rate limits (``key_limits``) and its budget
(``key_budgets``); a change (``key_changes``) drops this process's cache at
once, the other workers' within ``CACHE_SECONDS``. It carries its model access too
(``key_model_access``) and its expiry: a cache entry holds ``expires_at``
and each use checks it against ``clock()`` (replaceable in tests), so a
cached key stops at the moment it expires, not ``CACHE_SECONDS`` later.
``verify_key`` answers None for an expired key like a revoked one;
``lookup_key`` returns it, so that the caller can say it expired.
A rotated key's former secret finds the key until its grace period ends:
its identity then expires at that moment (or the key's own expiry, if
sooner).

Concurrent requests with a key the cache does not hold (a worker just
started, an entry just expired) share one query (``SingleFlight``): a burst
of a thousand calls of one key costs one query, not a thousand. The query
runs on the process's ORM threads (``providers.runtime.orm_threads``),
whose connections are kept: a miss costs a query, not a thread and a
connection made for the request (on PostgreSQL a server process), and a
client sending endless unknown keys holds at most those threads'
connections, not one per request. The call that started a query waits for
it even when its own client leaves. A lookup that was under way when the
cache was dropped (a key saved or revoked) keeps nothing, and the calls
after the drop start a query of their own.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from plugins_api.access.key_digests import key_digests
from plugins_api.access.key_last_use import key_last_use
from plugins_api.access.key_limits import UNLIMITED, KeyLimits
from plugins_api.access.key_model_access import OPEN, ModelAccess, stored_access
from plugins_api.models import ClientAPIKey
from providers.runtime import process as runtime
from providers.runtime.orm_threads import orm_threads
from providers.runtime.single_flight import SingleFlight

KEY_PREFIX = "echo-"
#: An Echo key (its prefix and token) or a long enough part of one, as text may quote it:
#: masked wherever secrets are redacted, every log line included (``plugins_api.apps``).
KEY_SHAPE = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{16,}")
CACHE_SECONDS = 10.0
#: Entries of each cache: the known keys', and the unknown keys'.
CACHE_MAX_KEYS = 10_000

#: The wall clock keys expire by (tests replace it).
clock: Callable[[], datetime] = timezone.now


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who is calling: the key's name, scope, limits, model access and expiry (None: never)."""

    key_id: int
    name: str
    scope: str
    limits: KeyLimits = UNLIMITED
    access: ModelAccess = field(default=OPEN)
    expires_at: datetime | None = None
    budget_usd: Decimal | None = None
    budget_period: str = ClientAPIKey.PERIOD_MONTH

    def expired(self) -> bool:
        """Return whether the key has expired, by ``clock()`` now."""
        return self.expires_at is not None and clock() >= self.expires_at

    @property
    def is_admin(self) -> bool:
        return self.scope == ClientAPIKey.SCOPE_ADMIN

    def allows(self, scope: str) -> bool:
        """Return whether this client may act in SCOPE (admin keys may do everything)."""
        return self.is_admin or self.scope == scope


def hash_key(raw_key: str) -> str:
    """Return the stored form of RAW_KEY."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


#: How many times the cache was dropped: a lookup begun before a drop keeps nothing.
_drops = 0
#: The lookups under way, by (digest, drops when begun): concurrent ones share a query.
_lookups: SingleFlight[ClientIdentity | None] = SingleFlight()


def forget_cached_keys() -> None:
    """Drop every cached verification (after a key changes), and mark the digests' index stale."""
    global _drops
    _drops += 1
    current = runtime.current()
    current.key_cache.clear()
    current.unknown_key_cache.clear()
    key_digests().invalidate()


def _matching(digest: str) -> Q:
    """The rows RAW_KEY's DIGEST opens: the current secret, or a former one in its grace period."""
    return Q(key_hash=digest) | Q(previous_key_hash=digest, previous_key_expires_at__gt=clock())


def _identity(row: ClientAPIKey | None, digest: str) -> ClientIdentity | None:
    if row is None or row.revoked_at is not None:
        return None
    expires_at = row.expires_at
    if row.key_hash != digest:  # a former secret: valid to the end of its grace period
        grace_end = row.previous_key_expires_at
        expires_at = grace_end if expires_at is None else min(expires_at, grace_end)
    return ClientIdentity(
        key_id=row.pk,
        name=row.name,
        scope=row.scope,
        limits=key_limits_of(row),
        access=stored_access(row.allowed_models, row.default_model),
        expires_at=expires_at,
        budget_usd=row.budget_usd,
        budget_period=row.budget_period,
    )


def key_limits_of(row: ClientAPIKey) -> KeyLimits:
    """Return the limits stored on ROW (a 0 written past the validators is read as 1: fail closed)."""
    return KeyLimits(
        requests_per_minute=_at_least_one(row.requests_per_minute),
        tokens_per_minute=_at_least_one(row.tokens_per_minute),
        max_concurrent=_at_least_one(row.max_concurrent_requests),
    )


def _at_least_one(value: int | None) -> int | None:
    return None if value is None else max(1, value)


def _cached(digest: str) -> tuple[bool, ClientIdentity | None]:
    current = runtime.current()
    hit = current.key_cache.get(digest) or current.unknown_key_cache.get(digest)
    if hit and hit[0] > time.monotonic():
        return True, hit[1]
    return False, None


def _remember(digest: str, identity: ClientIdentity | None, drops: int) -> None:
    """Cache IDENTITY for DIGEST, read from the database when the cache had been dropped DROPS times.

    A known key in the known keys' cache, an unknown one in the other; each bounded on its own.
    """
    if drops != _drops:
        return  # read before the cache was dropped: it may say what a change has undone
    current = runtime.current()
    cache, other = (
        (current.key_cache, current.unknown_key_cache)
        if identity is not None
        else (current.unknown_key_cache, current.key_cache)
    )
    other.pop(digest, None)  # a key revoked meanwhile
    if len(cache) >= CACHE_MAX_KEYS and digest not in cache:
        now = time.monotonic()
        for stale in [d for d, (expires, _) in cache.items() if expires <= now]:
            del cache[stale]
        while len(cache) >= CACHE_MAX_KEYS:
            del cache[next(iter(cache))]
    cache[digest] = (time.monotonic() + CACHE_SECONDS, identity)


def lookup_key(raw_key: str) -> ClientIdentity | None:
    """Return the identity behind RAW_KEY, expired or not; None for an unknown or revoked key (sync)."""
    digest = hash_key(raw_key)
    found, identity = _cached(digest)
    if not found:
        drops = _drops
        identity = None
        if key_digests().may_open_sync(digest):
            identity = _identity(ClientAPIKey.objects.filter(_matching(digest)).first(), digest)
        _remember(digest, identity, drops)
    if identity is not None and not identity.expired():
        key_last_use.note(identity.key_id)
    return identity


async def alookup_key(raw_key: str) -> ClientIdentity | None:
    """Return the identity behind RAW_KEY, expired or not, or None (async; usually no query)."""
    digest = hash_key(raw_key)
    found, identity = _cached(digest)
    if not found:
        drops = _drops
        if await key_digests().may_open(digest):
            # The call that starts the query waits for it even when its client leaves
            # (``SingleFlight``): the others sharing it get its answer.
            identity = await _lookups.run(
                (digest, drops), lambda: _fetch(digest, drops), starter_waits=True
            )
        else:
            identity = None  # a made-up key: no query
            _remember(digest, None, drops)
    if identity is not None and not identity.expired():
        key_last_use.note(identity.key_id)
    return identity


async def _fetch(digest: str, drops: int) -> ClientIdentity | None:
    """Read DIGEST's identity from the database and cache it (see ``_remember``)."""
    identity = _identity(await stored_key_row(digest), digest)
    _remember(digest, identity, drops)
    return identity


async def stored_key_row(digest: str) -> ClientAPIKey | None:
    """Return the row DIGEST opens (its current secret or a former one in its grace period), or None.

    Read on the ORM threads' kept connections (see the module's docstring).
    """
    return await orm_threads.run(lambda: ClientAPIKey.objects.filter(_matching(digest)).first())


def _usable(identity: ClientIdentity | None) -> ClientIdentity | None:
    return None if identity is None or identity.expired() else identity


def verify_key(raw_key: str) -> ClientIdentity | None:
    """Return the identity behind RAW_KEY, or None for an unknown, revoked or expired key (sync)."""
    return _usable(lookup_key(raw_key))


async def averify_key(raw_key: str) -> ClientIdentity | None:
    """Return the identity behind RAW_KEY, or None for an unknown, revoked or expired key (async)."""
    return _usable(await alookup_key(raw_key))
