"""Start and stop the provider runtime inside a serving process.

``start`` runs once per process on its event loop, before the first request
(or at ASGI lifespan startup where the server supports it): it discovers
plugins, loads every configured provider from the database and starts
listening for changes made by other workers.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from providers import broadcast, runtime

logger = logging.getLogger(__name__)


class ProviderLifecycle:
    """Start the provider runtime once, on the serving loop; stop it at shutdown."""

    def __init__(self) -> None:
        self._started = False
        self._starting: asyncio.Future[None] | None = None
        self._listener: asyncio.Task[None] | None = None

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
        self._starting.set_result(None)

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        runtime.set_serving_loop(loop)
        for directory in settings.ECHO_PLUGIN_DIRS:
            if directory.is_dir():
                for result in await runtime.registry.discover_plugins(directory):
                    if result.status == "failed":
                        logger.error("plugin %s not loaded: %s", result.origin, result.error)
        for result in await runtime.registry.discover_entry_points():
            if result.status == "failed":
                logger.error("plugin %s not loaded: %s", result.origin, result.error)
        errors = await runtime.load_all_from_database()
        for name, error in errors.items():
            if error:
                logger.warning("provider %s is not serving: %s", name, error)
        self._listener = loop.create_task(broadcast.listen_for_provider_changes())

    async def stop(self) -> None:
        """Stop listening and shut every provider down."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await runtime.registry.shutdown_all()
        runtime.set_serving_loop(None)
        # The start-up queries left a connection open in the ORM's thread.
        await sync_to_async(connections.close_all)()
        self._started = False


lifecycle = ProviderLifecycle()
