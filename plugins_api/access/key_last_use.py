"""When each client key was last used: stamped at most once a minute per key, off the request's path.

A verification notes the key's use, which costs a dictionary lookup. In a
serving process one background task on the serving loop writes the stamps
in batches: one UPDATE for every key used since the last batch, written
``BATCH_SECONDS`` after the first of them. No request waits on that write,
whether its key was verified on the loop or in one of DRF's threads.

A process that serves nothing (a management command, a sync test client, a
WSGI server) has no loop to hand the write to: there the call that notes the
use writes it. A loop that is not the serving one (a test's) leaves the
stamps to ``flush``.

Bounded: at most ``MAX_PENDING`` keys wait to be written. A batch the
background writer cannot write is logged and dropped: the key is stamped
again at its next use, a minute on. The stamps still waiting when a worker
stops are written by its lifespan's shutdown (``stop``), before the
database connections close: a key used once just before a deploy is not
left looking unused to whoever decides to revoke it.
``last_used_at`` tells when a key was last used to the minute, not to the request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time

from asgiref.sync import sync_to_async
from django.utils import timezone

from plugins_api.models import ClientAPIKey
from providers.runtime.loop_tasks import cancel_on_its_loop
from providers.runtime.process import serving_loop

logger = logging.getLogger(__name__)

EVERY_SECONDS = 60.0
BATCH_SECONDS = 1.0
MAX_PENDING = 10_000


def client_keys_mark_used(*, key_ids: list[int]) -> int:
    """Set ``last_used_at`` of the keys KEY_IDS to now; return how many rows were stamped."""
    return ClientAPIKey.objects.filter(pk__in=key_ids).update(last_used_at=timezone.now())


class KeyLastUse:
    """Note each key's use; write the stamps in batches from the serving loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Key id -> when (monotonic) its last stamp was taken.
        self._stamped: dict[int, float] = {}
        self._pending: set[int] = set()
        self._writer: asyncio.Task[None] | None = None
        self._failing = False

    def reset(self) -> None:
        """Forget every stamp taken and every stamp waiting (ids repeat across rolled-back tests)."""
        with self._lock:
            self._stamped.clear()
            self._pending.clear()

    def note(self, key_id: int) -> None:
        """Note a use of KEY_ID; its stamp is written if the last one is a minute old or more."""
        now = time.monotonic()
        # The common case, a key stamped this minute, takes no lock.
        if now - self._stamped.get(key_id, -EVERY_SECONDS) < EVERY_SECONDS:
            return
        with self._lock:
            if now - self._stamped.get(key_id, -EVERY_SECONDS) < EVERY_SECONDS:
                return
            if len(self._pending) >= MAX_PENDING:
                return  # not marked as stamped: a later use tries again
            self._stamped[key_id] = now
            self._pending.add(key_id)
        self._schedule()

    def _take(self) -> list[int]:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        return batch

    def _schedule(self) -> None:
        loop = serving_loop()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop is not None and loop.is_running():
            if current is loop:
                self._start_writer()
                return
            try:
                loop.call_soon_threadsafe(self._start_writer)
            except RuntimeError:
                pass  # the loop closed meanwhile: the process is stopping
            return
        if current is None:
            self._write_now()

    def _write_now(self) -> None:
        batch = self._take()
        if batch:
            client_keys_mark_used(key_ids=batch)

    def _start_writer(self) -> None:
        """Start the batch writer on the running (serving) loop, unless it is running there."""
        loop = asyncio.get_running_loop()
        writer = self._writer
        if writer is not None and not writer.done():
            if writer.get_loop() is loop:
                return
            # A writer left on a loop that stopped (a server restarted in this process)
            # never ends: this loop's writer takes its stamps.
            cancel_on_its_loop(writer)
        # An empty context: the task outlives the request that starts it, whose
        # context would send its ORM calls to that request's thread.
        self._writer = loop.create_task(
            self._write_batches(), name="echo-key-last-use", context=contextvars.Context()
        )

    async def _write_batches(self) -> None:
        # Notes arriving meanwhile find this task running and only queue their key.
        while self._pending:
            await asyncio.sleep(BATCH_SECONDS)
            try:
                await self.flush()
            except Exception as exc:  # whatever the database says, the writer goes on
                if not self._failing:
                    logger.warning(
                        "client keys' last use was not written (%s); stamped again at their"
                        " next use",
                        type(exc).__name__,
                    )
                self._failing = True
            else:
                self._failing = False

    async def stop(self) -> int:
        """Stop the batch writer and write the stamps still waiting (a worker's shutdown); return how many.

        A database that refuses the write is logged (its kind only), not raised:
        the shutdown goes on.
        """
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            if writer.get_loop() is asyncio.get_running_loop():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            else:  # left by a server that ran in this process before: the flush writes its stamps
                cancel_on_its_loop(writer)
        try:
            return await self.flush()
        except Exception as exc:
            logger.warning(
                "client keys' last use was not written at shutdown (%s)", type(exc).__name__
            )
            return 0

    async def flush(self) -> int:
        """Write the waiting stamps now; return how many keys were stamped."""
        batch = self._take()
        if not batch:
            return 0
        return await sync_to_async(client_keys_mark_used)(key_ids=batch)


key_last_use = KeyLastUse()
