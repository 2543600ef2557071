"""This process's runtime: which one is current, its serving loop, and loading it from the database.

One ``EchoRuntime`` (``providers.runtime.process_runtime``) holds everything
the process keeps in memory to serve. ``current()`` returns it, built with
the built-in plugins on first use (``ProvidersConfig.ready`` asks first);
``install`` replaces it, as the tests do with a fresh one each. The parts are
read through this module: ``runtime.registry``, ``runtime.manager``,
``runtime.monitor`` ... always answer the current runtime's, so code that
keeps ``from providers.runtime import process as runtime`` never holds on to
a replaced one. Reading them is a plain attribute read: no lock, no context
variable.

The registry lives in the process that serves requests, on its event loop.
Code that runs outside that loop (the admin, management commands, signal
handlers in worker threads) reaches it through ``run_in_serving_loop``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import operator
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import async_to_sync
from django.utils.module_loading import import_string

from providers.errors import ProviderError
from providers.plugins import BUILTIN_PLUGINS
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.secrets.masking import redact

if TYPE_CHECKING:
    from providers.health.monitor import HealthMonitor
    from providers.health.status import HealthProbes
    from providers.runtime.config_sync import ConfigSyncState
    from providers.runtime.lifecycle import ProviderLifecycle
    from providers.runtime.manager import ModelManager
    from providers.runtime.model_lists import ModelListCache
    from providers.runtime.process_runtime import EchoRuntime
    from providers.usage.metric_labels import MetricLabels
    from providers.usage.recorder import UsageRecorder

    # Properties of this module's type (``_ProcessModule``), never module globals.
    registry: ProviderRegistry
    manager: ModelManager
    monitor: HealthMonitor
    usage_recorder: UsageRecorder
    metric_labels: MetricLabels
    model_lists: ModelListCache
    config_sync_state: ConfigSyncState
    key_cache: dict[str, tuple[float, Any]]
    unknown_key_cache: dict[str, tuple[float, Any]]
    key_digests: Any
    health_probes: HealthProbes
    lifecycle: ProviderLifecycle

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The runtime's parts this module answers for the current runtime.
RUNTIME_PARTS = frozenset(
    {
        "registry",
        "manager",
        "monitor",
        "usage_recorder",
        "metric_labels",
        "model_lists",
        "config_sync_state",
        "key_cache",
        "unknown_key_cache",
        "key_digests",
        "health_probes",
        "lifecycle",
    }
)

_current: EchoRuntime | None = None
# Taken only by the first use: two threads must not build two runtimes.
_building = threading.RLock()
_building_now = False


def current() -> EchoRuntime:
    """Return this process's runtime, building it on first use."""
    found = _current
    if found is None:
        found = _build_first()
    return found


def _build_first() -> EchoRuntime:
    global _current, _building_now
    with _building:
        if _current is None:
            if _building_now:
                raise RuntimeError(
                    "the runtime was asked for while it was being built: a module imported"
                    " by providers.runtime.process_runtime reads runtime.<part> at import time"
                )
            _building_now = True
            try:
                _current = build_runtime()
            finally:
                _building_now = False
        return _current


def build_runtime(**parts: Any) -> EchoRuntime:
    """Return a new runtime with the built-in plugins registered (PARTS: ``EchoRuntime``'s)."""
    from providers.runtime.process_runtime import EchoRuntime

    built = EchoRuntime(**parts)
    register_builtin_plugins(built.registry)
    return built


def install(runtime: EchoRuntime | None) -> EchoRuntime | None:
    """Make RUNTIME this process's runtime; return the one it replaces.

    None drops the current one: the next ``current()`` builds a new one.
    """
    global _current
    previous, _current = _current, runtime
    return previous


@contextmanager
def installed(runtime: EchoRuntime) -> Iterator[EchoRuntime]:
    """Serve with RUNTIME inside the block; put the previous runtime back after it."""
    previous = install(runtime)
    try:
        yield runtime
    finally:
        install(previous)


class _ProcessModule(types.ModuleType):
    """This module's type: each of RUNTIME_PARTS is a property that reads the current runtime's.

    A property, not a module ``__getattr__``: reading one stays a plain
    attribute read (a module ``__getattr__`` runs only after a failed lookup,
    ten times slower), and no assignment can turn it into a stale global.
    """


def _current_part(part: str) -> property:
    read = operator.attrgetter(part)
    return property(lambda _module: read(current()), doc=f"The current runtime's ``{part}``.")


for _part in RUNTIME_PARTS:
    setattr(_ProcessModule, _part, _current_part(_part))
del _part
sys.modules[__name__].__class__ = _ProcessModule


def register_builtin_plugins(target: ProviderRegistry) -> None:
    """Register the built-in plugin classes in TARGET."""
    for name, path in BUILTIN_PLUGINS.items():
        try:
            cls = import_string(path)
        except ImportError as exc:
            raise ImportError(f"Built-in plugin {name!r} ({path}) failed to import: {exc}") from exc
        target.register(cls, name, source="builtin", origin=path)


def set_serving_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Remember LOOP as the loop the current runtime's providers serve on."""
    current().serving_loop = loop


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """Return the loop this process serves requests on, if it is serving."""
    return current().serving_loop


def run_in_serving_loop(func: Callable[..., Awaitable[T]], *args: Any, timeout: float = 120.0) -> T:
    """Run the coroutine function FUNC from sync code and return its result.

    Inside a serving process it runs on the serving loop, so that provider
    instances and their HTTP clients stay on the loop that uses them; past
    TIMEOUT seconds the caller gets ``TimeoutError`` while FUNC goes on.
    Elsewhere (a management command, a sync test) it runs on a loop of its own.
    """
    loop = current().serving_loop
    if loop is not None and loop.is_running() and not loop.is_closed():
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
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
    runtime = current()
    try:
        if spec is None:
            await runtime.registry.unregister(name, reason=reason or None)
            return reason or None
        await runtime.registry.apply(spec)
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
    runtime.manager.breaker(name).reset()
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
    for stale in set(current().registry.names()) - set(names):
        await config_sync.sync_provider(stale)
    return results
