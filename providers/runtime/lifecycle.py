"""Start and stop the provider runtime inside a serving process.

``start`` runs once per process on its event loop, before the first request
(or at ASGI lifespan startup where the server supports it): it discovers
plugins, loads every configured provider from the database, starts
listening for changes made by other workers, starts the configuration
repair pass (every ``ECHO_CONFIG_REPAIR_SECONDS``) and, when
``ECHO_HEALTH_INTERVAL_SECONDS`` is above 0, starts the periodic health
checks. Their first round runs in the background: start-up, and so the
first request, never waits on an upstream.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from providers.runtime import broadcast, config_sync
from providers.runtime import process as runtime
from providers.runtime.registry import DiscoveryResult, ProviderRegistry

if TYPE_CHECKING:
    from providers.runtime.process_runtime import EchoRuntime

logger = logging.getLogger(__name__)


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

    @property
    def started(self) -> bool:
        return self._started

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
        for task in (self._monitor, self._repair, self._listener):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._monitor = None
        self._repair = None
        self._listener = None
        try:
            await self._runtime.usage_recorder.stop()
        except Exception:
            logger.exception("usage rows could not be written at shutdown")
        await self._runtime.registry.shutdown_all()
        self._runtime.config_sync_state.forget_all()
        self._runtime.serving_loop = None
        # The start-up queries left a connection open in the ORM's thread.
        await sync_to_async(connections.close_all)()
        self._started = False


async def discover_all_plugins(registry: ProviderRegistry) -> list[DiscoveryResult]:
    """Register in REGISTRY the plugins of the ECHO_PLUGIN_DIRS directories and the entry points; report each."""
    results: list[DiscoveryResult] = []
    for directory in settings.ECHO_PLUGIN_DIRS:
        if directory.is_dir():
            results += await registry.discover_plugins(directory)
    results += await registry.discover_entry_points()
    return results
