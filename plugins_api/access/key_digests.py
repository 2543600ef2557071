"""Which digests open a client key: each worker's index of them, so that a made-up key costs no query.

A key the cache does not hold is looked up in the database (``client_keys``).
For a real key that happens once per ``CACHE_SECONDS``; a client sending
endless made-up keys would make every one of them a query, on the ORM
threads that refresh the real keys' entries. So each worker keeps the
digests that can open a key (every key not revoked: its secret's, and a
rotated key's former one while its grace period lasts) in memory, read in
one query, and looks up only a digest the index holds.

A digest the index lacks may be a key made since the index was read (in
another worker, or one whose change message was lost): the index is read
again, at most once a ``REFRESH_SECONDS``, and the digest looked for once
more. An async caller whose digest is missing from an index read less than
that long ago waits for the next read (all such callers share it); a sync
caller (DRF's views, in a thread) is told the key is unknown rather than
hold its thread. So a flood of made-up keys, from however many addresses,
costs each worker one read of the index a second, whatever its size; each
made-up key waits up to a second for its 401, and a real key made a moment
ago is found. A key made, changed or revoked in this worker
(``key_changes``), or a change message for a key whose sockets it holds
(``revoked_key_sockets``), marks the index stale: the next miss reads it
at once.

The index holds each digest once, as text (a hundred thousand keys: about
15 MB a worker), and is per runtime (``runtime.key_digests``), made on
first use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from django.utils import timezone

from plugins_api.models import ClientAPIKey
from providers.runtime import process as runtime
from providers.runtime.orm_threads import orm_threads
from providers.runtime.single_flight import SingleFlight

#: The least time between two reads of the index for digests it lacks.
REFRESH_SECONDS = 1.0


def stored_digests() -> frozenset[str]:
    """Return every digest that opens a key now: not revoked; a former secret in its grace period."""
    now = timezone.now()
    rows = ClientAPIKey.objects.filter(revoked_at__isnull=True).values_list(
        "key_hash", "previous_key_hash", "previous_key_expires_at"
    )
    digests: set[str] = set()
    for key_hash, previous, previous_until in rows:
        digests.add(key_hash)
        if previous and previous_until is not None and previous_until > now:
            digests.add(previous)
    return frozenset(digests)


class KeyDigests:
    """One worker's index of the digests that open a key (see the module's text)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._digests: frozenset[str] = frozenset()
        #: When (clock) the index was last read, and the generation it was read for.
        self._read_at: float | None = None
        self._read_for = -1
        #: Bumped by ``invalidate``: an index read for an older one is stale.
        self._generation = 0
        self._reads: SingleFlight[None] = SingleFlight()
        #: How many times the index was read (for tests and the curious).
        self.reads = 0

    def invalidate(self) -> None:
        """Mark the index stale (a key was made, changed or revoked): the next miss reads it at once."""
        self._generation += 1

    def _wait_before_read(self) -> float:
        """Return how long before the index may be read again (0: now)."""
        if self._read_at is None or self._read_for != self._generation:
            return 0.0
        return max(0.0, self._read_at + REFRESH_SECONDS - self._clock())

    def _install(self, digests: frozenset[str], generation: int, read_at: float) -> None:
        self._digests = digests
        self._read_at = read_at
        self._read_for = generation
        self.reads += 1

    async def may_open(self, digest: str) -> bool:
        """Return whether DIGEST may open a key: in the index, or in it once read again (async)."""
        if digest in self._digests:
            return True
        seen = self._read_at
        wait = self._wait_before_read()
        if wait > 0:
            await asyncio.sleep(wait)
        generation = self._generation
        await self._reads.run(
            (generation, seen), lambda: self._read(generation, seen), starter_waits=True
        )
        return digest in self._digests

    async def _read(self, generation: int, seen: float | None) -> None:
        """Read the index for GENERATION, unless another caller has since the index SEEN was read."""
        if self._read_at != seen and self._read_for == generation:
            return
        started = self._clock()
        digests = await orm_threads.run(stored_digests)
        self._install(digests, generation, started)

    def may_open_sync(self, digest: str) -> bool:
        """Return whether DIGEST may open a key (sync: read again only if a read is due, never waits)."""
        if digest in self._digests:
            return True
        if self._wait_before_read() > 0:
            return False
        generation, started = self._generation, self._clock()
        self._install(stored_digests(), generation, started)
        return digest in self._digests


def key_digests() -> KeyDigests:
    """Return this runtime's index, made on first use."""
    current = runtime.current()
    index = current.key_digests
    if index is None:
        index = current.key_digests = KeyDigests()
    return index
