"""This process's registry and model manager, and keeping them in step with the database.

The registry lives in the process that serves requests, on its event loop.
Code that runs outside that loop (the admin, management commands, signal
handlers in worker threads) reaches it through ``run_in_serving_loop``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.utils.module_loading import import_string

from providers.errors import ProviderError
from providers.plugins import BUILTIN_PLUGINS
from providers.runtime.manager import ModelManager
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.secrets.masking import redact

logger = logging.getLogger(__name__)

T = TypeVar("T")

registry = ProviderRegistry()
manager = ModelManager(registry)

_serving_loop: asyncio.AbstractEventLoop | None = None


def register_builtin_plugins(target: ProviderRegistry | None = None) -> None:
    """Register the built-in plugin classes in TARGET (the process registry by default)."""
    target = target or registry
    for name, path in BUILTIN_PLUGINS.items():
        try:
            cls = import_string(path)
        except ImportError as exc:
            raise ImportError(f"Built-in plugin {name!r} ({path}) failed to import: {exc}") from exc
        target.register(cls, name, source="builtin", origin=path)


def set_serving_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Remember LOOP as the loop the registry's providers serve on."""
    global _serving_loop
    _serving_loop = loop


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """Return the loop this process serves requests on, if it is serving."""
    return _serving_loop


def run_in_serving_loop(func: Callable[..., Awaitable[T]], *args: Any, timeout: float = 120.0) -> T:
    """Run the coroutine function FUNC from sync code and return its result.

    Inside a serving process it runs on the serving loop, so that provider
    instances and their HTTP clients stay on the loop that uses them; past
    TIMEOUT seconds the caller gets ``TimeoutError`` while FUNC goes on.
    Elsewhere (a management command, a sync test) it runs on a loop of its own.
    """
    loop = _serving_loop
    if loop is not None and loop.is_running() and not loop.is_closed():
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not loop:
            # Scheduled from an empty context: the caller's context would tell
            # asgiref to run the coroutine's ORM calls on the caller's own
            # thread, which is blocked right here waiting for the result.
            future = contextvars.Context().run(asyncio.run_coroutine_threadsafe, func(*args), loop)
            return future.result(timeout=timeout)
    return async_to_sync(func)(*args)


async def apply_config_state(name: str, spec: ProviderSpec | None, reason: str = "") -> str | None:
    """Make provider NAME live with SPEC, or take it out of service when SPEC is None.

    Return the error that kept it from loading, or None. Never raises: the
    database change that led here has already committed, and one plugin's
    bug must not stop the others from loading.
    """
    try:
        if spec is None:
            await registry.unregister(name, reason=reason or None)
            return reason or None
        await registry.apply(spec)
    except ProviderError as exc:
        logger.warning("provider %s was not (re)loaded: %s", name, exc.message)
        return exc.message
    except Exception as exc:
        # Any string of the config may be a secret: the plugin's schema, which
        # says which are, may be the very code that raised.
        values = spec.config.values() if spec is not None else ()
        message = redact(f"{type(exc).__name__}: {exc}", [v for v in values if isinstance(v, str)])
        logger.error("provider %s was not (re)loaded: %s", name, message)
        return message
    # A new configuration (a fixed key, say) deserves traffic at once, not
    # after the breaker's cooldown for the old one.
    manager.breaker(name).reset()
    return None


async def load_provider_from_database(name: str) -> str | None:
    """Rebuild provider NAME from its row in the database (or remove it); return its load error."""
    from providers.runtime import config_sync

    return await config_sync.sync_provider(name, force=True)


async def load_all_from_database() -> dict[str, str | None]:
    """Rebuild every configured provider, remove the others; return each one's load error."""
    from providers.models import ProviderConfig
    from providers.runtime import config_sync

    names = [name async for name in ProviderConfig.objects.values_list("name", flat=True)]
    results = {name: await config_sync.sync_provider(name, force=True) for name in names}
    for stale in set(registry.names()) - set(names):
        await config_sync.sync_provider(stale)
    return results
