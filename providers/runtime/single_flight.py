"""SingleFlight: callers that want the same thing at the same time share one call.

Public endpoints that would otherwise call an upstream once per request
(``GET /v1/models``, the public ``/health`` probe) and admin refreshes go
through one: the first caller for a key starts the call, the others await
the same task. Calls are per event loop, since a task belongs to its loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Run at most one call per key at a time; concurrent callers share its result."""

    def __init__(self) -> None:
        self._running: dict[tuple[Hashable, asyncio.AbstractEventLoop], asyncio.Task[T]] = {}

    def running(self) -> int:
        """Return how many calls are in flight."""
        return len(self._running)

    async def run(
        self, key: Hashable, call: Callable[[], Awaitable[T]], *, starter_waits: bool = False
    ) -> T:
        """Return the result of CALL, or of the call for KEY already running.

        The call runs in a copy of the context of the caller that started it.
        With STARTER_WAITS, that caller, cancelled, still waits for the call to
        end before it leaves: a call whose sync code runs in the starter's
        thread-sensitive context (the ORM) must not outlive that context,
        or asgiref would make the context a thread that nothing ever closes.
        """
        loop = asyncio.get_running_loop()
        slot = (key, loop)
        task = self._running.get(slot)
        started = task is None
        if task is None:
            task = loop.create_task(_await(call))
            self._running[slot] = task
            task.add_done_callback(lambda done: self._finished(slot, done))
        # Shielded: one caller going away (a client hanging up) must not cancel
        # the call the others are waiting for.
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if started and starter_waits and not task.done():
                await asyncio.wait({task})
            raise

    def _finished(
        self, slot: tuple[Hashable, asyncio.AbstractEventLoop], task: asyncio.Task[T]
    ) -> None:
        if self._running.get(slot) is task:
            del self._running[slot]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning when every caller left


async def _await(call: Callable[[], Awaitable[T]]) -> T:
    return await call()
