"""Made-up keys: each costs a query once, and a client that sends many is refused before they cost more.

A key this worker has not cached costs a database query (``client_keys``),
on the few ORM threads (``providers.runtime.orm_threads``) that also
refresh every real key's cache entry each ``CACHE_SECONDS``. A client
sending endless made-up keys (a scanner, a script looping over a leaked
list) would make each one a query, hold those threads, and push real keys
out of a cache they shared. ``UnknownKeyGuard`` keeps that cost its own:

- **Unknown keys are cached apart** from known ones (``client_keys``), each
  cache bounded on its own: made-up keys never push a real key out.
- **Per client address** (``client_address``; IPv6 by its /64, the block one
  host usually holds), the unknown keys that cost a query are counted in a
  window: ``ECHO_UNKNOWN_KEYS_PER_ADDRESS`` within
  ``ECHO_UNKNOWN_KEYS_WINDOW_SECONDS``. Past that, the address's keys this
  worker does not know are refused without a query (429
  ``too_many_unknown_keys``, ``Retry-After`` until its window ends). A key
  the worker knows (cached, even past its ``CACHE_SECONDS``) still passes:
  a neighbour's mistakes behind the same address lock no real key out. The
  table holds at most ``MAX_ADDRESSES`` addresses; past that the ended
  windows go, then the oldest.
- **Lookups of keys the worker does not know run a few at a time**: one
  fewer than the ORM threads (at least one; no gate without them), so that
  a refresh of a known key always finds a thread free, with at most ``MAX_WAITING`` waiting;
  past that a new key is refused at once (503 ``key_checks_busy``,
  ``Retry-After: 1``), from however many addresses the flood comes.

A refused request is not counted: a locked client's retries do not lengthen
its lock. The counts are per worker, in memory (no round trip to a shared
store on any request, and none at all for a cached key): with W workers an
address gets at most W times its limit. Nothing here sees a key, only the
address and how many keys it sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from django.conf import settings

from providers.runtime import process as runtime

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Addresses whose windows are kept at once (each a few dozen bytes).
MAX_ADDRESSES = 10_000
#: Lookups of keys the worker does not know that may wait for a turn: a worker just
#: started knows no key, and its first second may bring hundreds of real ones.
MAX_WAITING = 1_000
#: The block an IPv6 client is counted by.
IPV6_PREFIX = 64


class KeyLookupRefused(Exception):
    """A key refused before its lookup: STATUS (429 or 503), Echo's error KIND, MESSAGE, RETRY_AFTER seconds."""

    def __init__(self, status: int, kind: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


def address_bucket(address: str) -> str:
    """Return what ADDRESS is counted as: an IPv6 address's /64, anything else itself."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_PREFIX}", strict=False))
    return str(parsed)


class UnknownKeyGuard:
    """One worker's counts of unknown keys per address, and its gate on lookups (see the module)."""

    def __init__(
        self,
        *,
        windows: Callable[
            [], dict[str, list[float]]
        ] = lambda: runtime.current().unknown_key_windows,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        #: Address bucket -> [when its window started, unknown keys counted in it]: the
        #: process runtime's (``unknown_key_windows``), so that a new runtime starts afresh.
        self._windows_of = windows
        self._clock = clock
        self._max_addresses = max_addresses
        self._max_waiting = max_waiting
        # Sync callers (DRF's views) count from threads.
        self._lock = threading.Lock()
        self._gate: asyncio.Semaphore | None = None
        self._gate_loop: asyncio.AbstractEventLoop | None = None
        self._waiting = 0

    # --- per address ----------------------------------------------------------

    def check(self, address: str) -> None:
        """Raise KeyLookupRefused if ADDRESS has sent its limit of unknown keys in its window."""
        bucket = address_bucket(address)
        with self._lock:
            window = self._windows_of().get(bucket)
            if window is None:
                return
            left = window[0] + settings.ECHO_UNKNOWN_KEYS_WINDOW_SECONDS - self._clock()
            if left <= 0 or window[1] < settings.ECHO_UNKNOWN_KEYS_PER_ADDRESS:
                return
        raise KeyLookupRefused(
            429,
            "too_many_unknown_keys",
            "Too many unknown or revoked API keys from this address; "
            f"try again in {math.ceil(left)} s with a valid key.",
            max(1, math.ceil(left)),
        )

    def failed(self, address: str) -> None:
        """Count one unknown key from ADDRESS, which cost a query."""
        bucket = address_bucket(address)
        limit = settings.ECHO_UNKNOWN_KEYS_PER_ADDRESS
        span = settings.ECHO_UNKNOWN_KEYS_WINDOW_SECONDS
        now = self._clock()
        with self._lock:
            windows = self._windows_of()
            window = windows.get(bucket)
            if window is None or window[0] + span <= now:
                self._make_room(windows, now, span)
                window = windows[bucket] = [now, 0]
            window[1] += 1
            locked = window[1] == limit
        if locked:
            logger.warning(
                "unknown API keys from %s: %d within %d s; its unknown keys are refused for the "
                "rest of the window",
                bucket,
                limit,
                span,
            )

    def _make_room(self, windows: dict[str, list[float]], now: float, span: float) -> None:
        if len(windows) < self._max_addresses:
            return
        for ended in [bucket for bucket, (start, _) in windows.items() if start + span <= now]:
            del windows[ended]
        while len(windows) >= self._max_addresses:
            del windows[next(iter(windows))]

    def addresses(self) -> int:
        """Return how many addresses have a window kept (bounded by ``MAX_ADDRESSES``)."""
        return len(self._windows_of())

    # --- the gate ---------------------------------------------------------------

    def _at_once(self) -> int:
        """Return how many lookups may run at once: one fewer than the ORM threads, at least one."""
        return max(1, settings.ECHO_ORM_THREADS - 1)

    def _gate_here(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate_loop is not loop:
            self._gate, self._gate_loop = asyncio.Semaphore(self._at_once()), loop
        return self._gate

    async def run_gated(self, lookup: Callable[[], Awaitable[T]]) -> T:
        """Return LOOKUP's answer once a turn is free; refuse at once when too many wait (503).

        Without ORM threads (``ECHO_ORM_THREADS=0``, the tests' setting) each
        lookup runs in its own request's context, no thread shared: no gate.
        """
        if not settings.ECHO_ORM_THREADS:
            return await lookup()
        gate = self._gate_here()
        if gate.locked():
            if self._waiting >= self._max_waiting:
                raise KeyLookupRefused(
                    503,
                    "key_checks_busy",
                    "Too many new API keys are being checked at once; try again in a second.",
                    1,
                )
            self._waiting += 1
            try:
                await gate.acquire()
            finally:
                self._waiting -= 1
        else:
            await gate.acquire()
        try:
            return await lookup()
        finally:
            gate.release()


#: This process's guard.
unknown_key_guard = UnknownKeyGuard()
