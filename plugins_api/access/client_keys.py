"""Issue, revoke and verify client API keys, with a small in-process cache.

Verification sits on every request, so it must not cost a database query
each time: a verified key is cached for ``CACHE_SECONDS``; a key saved or
revoked in this process drops out of the cache at once (other workers see a
revocation within ``CACHE_SECONDS``). Open chat websockets of a key that is
revoked, deleted or loses its chat scope are closed in every worker
(``client_key_push``, on any save of the row). ``last_used_at`` is written at
most once a minute per key, off the request's path.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from plugins_api.models import ClientAPIKey

KEY_PREFIX = "echo-"
CACHE_SECONDS = 10.0
LAST_USED_EVERY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who is calling: the key's name and scope."""

    key_id: int
    name: str
    scope: str

    @property
    def is_admin(self) -> bool:
        return self.scope == ClientAPIKey.SCOPE_ADMIN

    def allows(self, scope: str) -> bool:
        """Return whether this client may act in SCOPE (admin keys may do everything)."""
        return self.is_admin or self.scope == scope


_cache: dict[str, tuple[float, ClientIdentity | None]] = {}
_last_used_written: dict[int, float] = {}
_background: set[asyncio.Task[None]] = set()


def hash_key(raw_key: str) -> str:
    """Return the stored form of RAW_KEY."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def client_key_issue(*, name: str, scope: str) -> tuple[ClientAPIKey, str]:
    """Create a key called NAME with SCOPE; return the row and the key, shown only now."""
    if scope not in dict(ClientAPIKey.SCOPES):
        raise ValueError(f"scope must be one of: {', '.join(dict(ClientAPIKey.SCOPES))}.")
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ClientAPIKey.objects.create(
        name=name, scope=scope, prefix=raw_key[: len(KEY_PREFIX) + 6], key_hash=hash_key(raw_key)
    )
    return row, raw_key


@transaction.atomic
def client_key_revoke(*, name: str) -> ClientAPIKey:
    """Revoke the key called NAME; it stops working at once in this process.

    Once committed, the save closes the key's open chat sockets in every worker.
    """
    row = ClientAPIKey.objects.select_for_update().get(name=name)
    if row.revoked_at is None:
        row.revoked_at = timezone.now()
        row.save(update_fields=["revoked_at"])
    forget_cached_keys()
    # Again after commit: a verification in between still read the key as valid.
    transaction.on_commit(forget_cached_keys)
    return row


def forget_cached_keys() -> None:
    """Drop every cached verification (after a key changes)."""
    _cache.clear()


def _identity(row: ClientAPIKey | None) -> ClientIdentity | None:
    if row is None or row.revoked_at is not None:
        return None
    return ClientIdentity(key_id=row.pk, name=row.name, scope=row.scope)


def _cached(digest: str) -> tuple[bool, ClientIdentity | None]:
    hit = _cache.get(digest)
    if hit and hit[0] > time.monotonic():
        return True, hit[1]
    return False, None


def verify_key(raw_key: str) -> ClientIdentity | None:
    """Return the identity behind RAW_KEY, or None for an unknown or revoked key (sync)."""
    digest = hash_key(raw_key)
    found, identity = _cached(digest)
    if not found:
        identity = _identity(ClientAPIKey.objects.filter(key_hash=digest).first())
        _cache[digest] = (time.monotonic() + CACHE_SECONDS, identity)
    if identity is not None:
        _note_use_sync(identity.key_id)
    return identity


async def averify_key(raw_key: str) -> ClientIdentity | None:
    """Return the identity behind RAW_KEY, or None (async; cached, so usually no query)."""
    digest = hash_key(raw_key)
    found, identity = _cached(digest)
    if not found:
        identity = _identity(await ClientAPIKey.objects.filter(key_hash=digest).afirst())
        _cache[digest] = (time.monotonic() + CACHE_SECONDS, identity)
    if identity is not None and _due(identity.key_id):
        task = asyncio.get_running_loop().create_task(_write_last_used(identity.key_id))
        _background.add(task)
        task.add_done_callback(_background.discard)
    return identity


def _due(key_id: int) -> bool:
    now = time.monotonic()
    if now - _last_used_written.get(key_id, -LAST_USED_EVERY_SECONDS) < LAST_USED_EVERY_SECONDS:
        return False
    _last_used_written[key_id] = now
    return True


def _note_use_sync(key_id: int) -> None:
    if _due(key_id):
        ClientAPIKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())


async def _write_last_used(key_id: int) -> None:
    await ClientAPIKey.objects.filter(pk=key_id).aupdate(last_used_at=timezone.now())


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
