"""Start and stop the provider runtime inside a serving process.

``start`` runs once per process on its event loop, before the first request
(or at ASGI lifespan startup where the server supports it): it discovers
plugins, loads every configured provider from the database, starts
listening for changes made by other workers, starts the configuration
repair pass (every ``ECHO_CONFIG_REPAIR_SECONDS``) and, when
``ECHO_HEALTH_INTERVAL_SECONDS`` is above 0, starts the periodic health
checks. Their first round runs in the background: start-up, and so the
first request, never waits on an upstream.

Graceful shutdown (``drain``): a worker told to go (SIGTERM, caught by
``catch_sigterm`` under uvicorn) is ``draining`` at once, so readiness says
no and new requests and sockets are refused; the streams in flight run on
for ``ECHO_DRAIN_SECONDS``. Each stream waits for its next chunk inside a
``stream_limit``, which expires at the drain's deadline: the stream then
ends with its ``shutting_down`` event. Open websockets (``DrainableSocket``)
finish the answer under way, or are interrupted at the deadline, and close
with 1001. Only then is the server's own exit handler called: it closes the
listening sockets and runs the lifespan shutdown, which calls ``stop`` (the
usage rows are written there).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from providers.runtime import broadcast, config_sync, shared_breakers
from providers.runtime import process as runtime
from providers.runtime.orm_threads import orm_threads
from providers.runtime.registry import DiscoveryResult, ProviderRegistry

if TYPE_CHECKING:
    from providers.runtime.process_runtime import EchoRuntime

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long past the drain's deadline requests get to write their last event
#: before they are cancelled (a request stuck on a non-streaming upstream call).
DRAIN_GRACE_SECONDS = 1.0


class DrainableSocket(Protocol):
    """An open connection that a drain closes properly (the chat websocket)."""

    async def shut_down(self, deadline: float) -> None:
        """Let the work under way finish until DEADLINE (loop time), then end it and close."""


class StreamLimit:
    """One stream's waits for its next chunk, ended by the drain's deadline: ``await limit.next(chunks)``.

    Made once per stream, in the task that reads it. ``next`` returns the
    next chunk (None at the end) or raises ``TimeoutError`` when the drain's
    deadline passes first; ``expired`` then says it was the drain.

    While the worker is not draining (nearly always), a wait costs a set's
    add and discard: the waits under way are known to the lifecycle, whose
    drain, when it begins, sets a timer that ends every wait still under way
    at the deadline (``expire``: the task is cancelled, and the cancellation
    becomes the ``TimeoutError``, as ``asyncio.timeout`` does it). A wait
    begun while draining is an ``asyncio.timeout_at`` the deadline. An
    ``asyncio.timeout`` for every wait cost each chunk of every stream a
    timeout and four coroutines more.
    """

    __slots__ = ("_lifecycle", "_task", "_cancelling", "expired")

    def __init__(self, lifecycle: ProviderLifecycle) -> None:
        self._lifecycle = lifecycle
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a stream limit is made in the task that reads the stream")
        self._task = task
        self._cancelling = task.cancelling()
        self.expired = False

    async def next(self, chunks: AsyncIterator[T]) -> T | None:
        """Return the next of CHUNKS, None at their end; raise TimeoutError at the drain's deadline."""
        deadline = self._lifecycle._drain_deadline
        if deadline is not None:
            timeout = asyncio.timeout_at(deadline)
            try:
                async with timeout:
                    return await anext(chunks, None)
            except TimeoutError:
                self.expired = timeout.expired()
                raise
        waits = self._lifecycle._waits
        waits.add(self)
        try:
            return await anext(chunks, None)
        except asyncio.CancelledError:
            # The drain's deadline, unless someone else cancelled the task too.
            if self.expired and self._task.uncancel() <= self._cancelling:
                raise TimeoutError from None
            raise
        finally:
            waits.discard(self)

    def expire(self) -> None:
        """End the wait under way: the drain's deadline has come."""
        if not self.expired:
            self.expired = True
            self._task.cancel()


class ServingRequest:
    """The current task counted in REQUESTS while inside: ``with lifecycle.serving_request()``.

    A class rather than a generator's context manager: every request enters one.
    """

    __slots__ = ("_requests", "_task")

    def __init__(self, requests: set[asyncio.Task[Any]]) -> None:
        self._requests = requests
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        self._task = asyncio.current_task()
        if self._task is not None:
            self._requests.add(self._task)

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._requests.discard(self._task)
            self._task = None


class ProviderLifecycle:
    """Start RUNTIME once, on the serving loop; stop it at shutdown.

    Providers load through ``process.load_all_from_database``, which serves
    the current runtime: start the one installed.
    """

    def __init__(self, runtime: EchoRuntime) -> None:
        self._runtime = runtime
        self._started = False
        self._starting: asyncio.Future[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._repair: asyncio.Task[None] | None = None
        self._breakers: asyncio.Task[None] | None = None
        self._draining = False
        self._drain_deadline: float | None = None
        self._drain_task: asyncio.Task[None] | None = None
        #: The streams' waits under way begun while not draining (``StreamLimit``).
        self._waits: set[StreamLimit] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        self._requests: set[asyncio.Task[Any]] = set()
        self._sigterm_handler: Callable[[int, FrameType | None], Any] | None = None
        self._sigterm_previous: Any = None

    @property
    def started(self) -> bool:
        return self._started

    @property
    def draining(self) -> bool:
        """Whether this worker is shutting down: not ready, refusing new requests and sockets."""
        return self._draining

    @property
    def drain_deadline(self) -> float | None:
        """When (loop time) the streams still running are ended; None while not draining."""
        return self._drain_deadline

    def stream_limit(self) -> StreamLimit:
        """Return the limit a stream's waits for its next chunk go through (see ``StreamLimit``)."""
        return StreamLimit(self)

    def _expire_waits(self) -> None:
        """End every stream's wait still under way: the drain's deadline has come."""
        self._expiry = None
        for limit in list(self._waits):
            limit.expire()

    def add_socket(self, socket: DrainableSocket) -> None:
        """Have a drain close SOCKET properly (held weakly: a socket gone is forgotten)."""
        self._sockets.add(socket)

    def discard_socket(self, socket: DrainableSocket) -> None:
        self._sockets.discard(socket)

    def serving_request(self) -> ServingRequest:
        """Count the current task as a request in flight, which a drain waits for (``with``)."""
        return ServingRequest(self._requests)

    def begin_drain(self) -> None:
        """Stop being ready now, and end the streams still running in ECHO_DRAIN_SECONDS."""
        if self._draining:
            return
        self._draining = True
        loop = asyncio.get_running_loop()
        self._drain_deadline = loop.time() + settings.ECHO_DRAIN_SECONDS
        self._expiry = loop.call_at(self._drain_deadline, self._expire_waits)
        logger.warning(
            "draining: %d requests and %d sockets get up to %d s to finish",
            len(self._requests),
            len(self._sockets),
            settings.ECHO_DRAIN_SECONDS,
        )

    async def drain(self) -> None:
        """Drain this worker (see the module docstring); return when nothing is in flight.

        Sockets close once their answer is over, or interrupted at the
        deadline; requests end by the deadline (a stream with its
        ``shutting_down`` event), and any still running a moment after it
        are cancelled.
        """
        self.begin_drain()
        assert self._drain_deadline is not None
        deadline = self._drain_deadline
        sockets = list(self._sockets)
        results = await asyncio.gather(
            *(socket.shut_down(deadline) for socket in sockets), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                logger.error("a socket could not be closed properly: %r", result)
        loop = asyncio.get_running_loop()
        running = self._requests - {asyncio.current_task()}
        if running:
            wait = max(0.0, deadline + DRAIN_GRACE_SECONDS - loop.time())
            await asyncio.wait(running, timeout=wait)
        stuck = [task for task in running if not task.done()]
        if stuck:
            logger.error("cancelling %d requests still running after the drain", len(stuck))
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    def catch_sigterm(self) -> None:
        """Drain on SIGTERM before the server's own handler runs (it closes websockets at once).

        Installed over the server's handler (uvicorn's), which is called once
        the drain is over; a second SIGTERM calls it at once. Only the main
        thread can catch signals: elsewhere (a server in a test's thread)
        nothing is installed.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self._drain_task is not None:
                _call_handler(previous, signum, frame)
                return
            try:
                loop.call_soon_threadsafe(self._start_drain, previous, signum)
            except RuntimeError:  # the loop is closed: nothing left to drain
                _call_handler(previous, signum, frame)

        self._sigterm_previous = previous
        self._sigterm_handler = on_sigterm
        signal.signal(signal.SIGTERM, on_sigterm)

    def _start_drain(self, previous: Any, signum: int) -> None:
        async def drain_then_exit() -> None:
            try:
                await self.drain()
            finally:
                _call_handler(previous, signum, None)

        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(
                drain_then_exit(), name="echo-drain", context=contextvars.Context()
            )

    def _release_sigterm(self) -> None:
        handler, self._sigterm_handler = self._sigterm_handler, None
        if handler is None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, self._sigterm_previous)
        self._sigterm_previous = None

    async def ensure_started(self) -> None:
        """Start the runtime if this process has not yet; concurrent callers wait for it."""
        if self._started:
            return
        if self._starting is not None:
            await asyncio.shield(self._starting)
            return
        loop = asyncio.get_running_loop()
        self._starting = loop.create_future()
        try:
            await self._start(loop)
        except BaseException as exc:
            self._starting.set_exception(exc)
            self._starting = None
            raise
        self._started = True
        # Cleared, so that a start after ``stop`` (a server restarted in the
        # same process, as the tests do) starts again instead of finding the
        # old, finished start.
        starting, self._starting = self._starting, None
        starting.set_result(None)

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._runtime.serving_loop = loop
        for result in await discover_all_plugins(self._runtime.registry):
            if result.status == "failed":
                logger.error("plugin %s not loaded: %s", result.origin, result.error)
        errors = await runtime.load_all_from_database()
        for name, error in errors.items():
            if error:
                logger.warning("provider %s is not serving: %s", name, error)
        # Empty contexts, for the reason given for the health monitor below.
        self._listener = loop.create_task(
            broadcast.listen_for_provider_changes(),
            name="echo-provider-listener",
            context=contextvars.Context(),
        )
        self._repair = loop.create_task(
            config_sync.repair_forever(settings.ECHO_CONFIG_REPAIR_SECONDS),
            name="echo-config-repair",
            context=contextvars.Context(),
        )
        self._breakers = loop.create_task(
            shared_breakers.share_breakers(self._runtime.manager),
            name="echo-shared-breakers",
            context=contextvars.Context(),
        )
        interval = settings.ECHO_HEALTH_INTERVAL_SECONDS
        if interval > 0:
            monitor = self._runtime.monitor
            monitor.reset()
            # An empty context: started by the first request (daphne has no
            # lifespan), the task would otherwise keep that request's context
            # for good, and asgiref would send its ORM calls to that request's thread.
            self._monitor = loop.create_task(
                monitor.run_forever(
                    interval=interval, timeout=settings.ECHO_HEALTH_TIMEOUT_SECONDS
                ),
                name="echo-health-monitor",
                context=contextvars.Context(),
            )

    async def stop(self) -> None:
        """Stop the health checks, the repair pass and listening; shut every provider down."""
        for task in (self._monitor, self._repair, self._listener, self._breakers):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._monitor = None
        self._repair = None
        self._listener = None
        self._breakers = None
        try:
            await self._runtime.usage_recorder.stop()
        except Exception:
            logger.exception("usage rows could not be written at shutdown")
        await self._runtime.registry.shutdown_all()
        self._runtime.config_sync_state.forget_all()
        self._runtime.manager.out_of_service.clear()
        self._runtime.serving_loop = None
        # The start-up queries left a connection open in the ORM's thread; the
        # request path's ORM threads keep one each.
        await sync_to_async(connections.close_all)()
        await sync_to_async(orm_threads.shutdown, thread_sensitive=False)()
        self._started = False
        self._release_sigterm()
        self._draining = False
        self._drain_deadline = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._drain_task = None


def _call_handler(handler: Any, signum: int, frame: FrameType | None) -> None:
    """Call the signal HANDLER that was installed before Echo's, as the signal would have."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


async def discover_all_plugins(registry: ProviderRegistry) -> list[DiscoveryResult]:
    """Register in REGISTRY the plugins of the ECHO_PLUGIN_DIRS directories and the entry points; report each."""
    results: list[DiscoveryResult] = []
    for directory in settings.ECHO_PLUGIN_DIRS:
        if directory.is_dir():
            results += await registry.discover_plugins(directory)
    results += await registry.discover_entry_points()
    return results
