"""ProviderRegistry: plugin classes by name, and one live instance per provider.

Two maps are kept apart. *Plugins* are classes (``echo``, ``openai``, a
discovered ``custom``); *providers* are configured, initialized instances of
a plugin under a provider name (``openai``, ``openai-backup``). The guide's
``register(CustomProvider, "custom")`` registers a plugin; ``reload(name,
config)`` builds the provider.

Hot swap: a new instance is built and initialized before it replaces the old
one, so a bad config or a failing ``initialize`` leaves the old instance
serving and raises the reason. Requests hold a lease on the instance they
started on; a replaced instance is shut down when its last lease ends.

Plugin code runs only behind a guard. Whatever a plugin raises while it is
built, validated, described, initialized, checked or shut down (any
exception, not only ``ProviderError``) becomes that provider's error, its
secrets masked, and the registry raises only ``ProviderError`` kinds: one
broken plugin never stops start-up, a reload or the other providers. Plugin
files are imported in a worker thread, so that a slow import does not stall
the streams the event loop is serving.

Every change to what this process serves (a provider applied, replaced or
taken out of service) is announced to the callbacks given to ``subscribe``, on the
event loop: the chat pages' provider lists follow the registry itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import logging
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from providers.base import AbstractAIProvider, PluginMetadata, secret_fields
from providers.errors import (
    PluginError,
    PluginLoadError,
    ProviderConfigError,
    ProviderError,
    ProviderInitializationError,
    ProviderNotFoundError,
    ProviderTimeoutError,
)
from providers.secrets.masking import mask_config, redact
from providers.secrets.values import config_secret_values, schema_secret_names
from providers.types import HealthStatus

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "echo.providers"
PLUGIN_FILE_SUFFIX = "_provider.py"
# How long a plugin's ``shutdown`` may take before it is given up on: a
# plugin that hangs there must not hold a swap, a failed load or a stop.
SHUTDOWN_TIMEOUT_SECONDS = 10.0
# How long a plugin's initialize() may take: a write waits for it, and a
# plugin that hangs there must not hold the admin's save (or start-up) for good.
INITIALIZE_TIMEOUT_SECONDS = 30.0
# How long a failed load waits for its half-built instance to shut down
# before it answers; the shutdown goes on in the background after that.
FAILED_SHUTDOWN_WAIT_SECONDS = 1.0
# What a plugin may raise that the registry turns into the provider's error.
# SystemExit too: a plugin calling sys.exit() must not stop the server.
# CancelledError and KeyboardInterrupt are not a plugin's to swallow.
PLUGIN_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What a provider should be: its plugin, configuration and routing."""

    name: str
    plugin: str
    # Left out of repr: it holds the decrypted secrets, and reprs end up in logs.
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    fallbacks: tuple[str, ...] = ()
    is_default: bool = False


@dataclass(slots=True)
class PluginEntry:
    """A registered plugin class and where it came from."""

    cls: type[AbstractAIProvider]
    source: str  # "builtin", "manual", "file", "entry_point"
    origin: str = ""
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class ProviderChange:
    """What changed in this process's registry: provider NAME now serves, or not."""

    name: str
    serving: bool
    generation: int


ChangeCallback = Callable[[ProviderChange], object]


@dataclass(eq=False, slots=True)
class _Live:
    spec: ProviderSpec
    provider: AbstractAIProvider
    generation: int
    # Read from the plugin's schema once, behind the guard, when it was built.
    secret_names: frozenset[str] = frozenset()
    loaded_at: float = field(default_factory=time.time)
    active: int = 0
    retired: bool = False


class Lease:
    """A hold on a live provider for one request or stream: ``async with registry.lease(name)``.

    A class rather than a generator's context manager: every chat call takes
    one, and a generator's costs several calls more to enter and leave.
    """

    __slots__ = ("_live", "_name", "_registry")

    def __init__(self, registry: ProviderRegistry, name: str) -> None:
        self._registry = registry
        self._name = name
        self._live: _Live | None = None

    async def __aenter__(self) -> AbstractAIProvider:
        if self._live is not None:
            raise RuntimeError("a lease is held once")
        self._live = self._registry._take(self._name)
        return self._live.provider

    async def __aexit__(self, *exc_info: object) -> None:
        live, self._live = self._live, None
        if live is not None:
            self._registry._give_back(live)


@dataclass(slots=True)
class DiscoveryResult:
    """What discovery did with one plugin file or entry point."""

    name: str
    origin: str
    status: str  # "registered", "updated", "unchanged", "failed"
    error: str | None = None
    class_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin,
            "status": self.status,
            "error": self.error,
            "class": self.class_name,
        }


def plugin_class_name(name: str) -> str:
    """Return the class name the convention expects for plugin NAME (``custom_ai`` -> ``CustomAiProvider``)."""
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Provider"


def _find_provider_class(module: Any, name: str) -> type[AbstractAIProvider]:
    """Return the ``{Name}Provider`` class of MODULE, matched without regard to case.

    A class defined in MODULE wins over one it imports: ``open_ai_provider.py``
    defining ``OpenAiProvider(OpenAIProvider)`` holds two matching names, and
    the imported base class comes first.
    """
    wanted = plugin_class_name(name).lower()
    matches = [
        value
        for attr, value in vars(module).items()
        if attr.lower() == wanted and inspect.isclass(value)
    ]
    own = [cls for cls in matches if cls.__module__ == module.__name__]
    if own or matches:
        return (own or matches)[0]
    raise PluginLoadError(
        f"{module.__file__}: no class {plugin_class_name(name)} (expected by the file name)."
    )


class ProviderRegistry:
    """Plugin classes and the live provider instances built from them."""

    def __init__(self) -> None:
        self._plugins: dict[str, PluginEntry] = {}
        self._live: dict[str, _Live] = {}
        # Every live instance's secrets, for log redaction (every record), as of _live_changes.
        self._live_changes = 0
        self._all_secrets: tuple[int, tuple[str, ...]] = (-1, ())
        self._pending: dict[str, ProviderSpec] = {}
        self._errors: dict[str, str] = {}
        self._generation: dict[str, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._subscribers: list[Callable[[], ChangeCallback | None]] = []
        self._callback_tasks: set[asyncio.Future[Any]] = set()
        self.shutdown_timeout = SHUTDOWN_TIMEOUT_SECONDS
        self.initialize_timeout = INITIALIZE_TIMEOUT_SECONDS

    # --- plugins ----------------------------------------------------------

    def register(
        self,
        cls: type[AbstractAIProvider],
        name: str,
        *,
        source: str = "manual",
        origin: str = "",
        fingerprint: str = "",
    ) -> None:
        """Register plugin class CLS under NAME.

        Raise ``PluginLoadError`` when CLS is not a complete
        ``AbstractAIProvider``, or when a discovered plugin would take the
        name of a built-in one.
        """
        if not (inspect.isclass(cls) and issubclass(cls, AbstractAIProvider)):
            raise PluginLoadError(f"{cls!r} does not extend AbstractAIProvider.")
        missing = sorted(cls.__abstractmethods__)
        if not cls.declares_config_schema():
            missing.append("config_json_schema (or get_config_schema)")
        if missing:
            raise PluginLoadError(f"{cls.__name__} does not implement: {', '.join(missing)}.")
        current = self._plugins.get(name)
        if (
            current
            and current.source == "builtin"
            and source != "builtin"
            and current.cls is not cls
        ):
            raise PluginLoadError(f"Plugin name {name!r} is taken by a built-in provider.")
        self._plugins[name] = PluginEntry(cls, source, origin, fingerprint)

    def plugin(self, name: str) -> type[AbstractAIProvider]:
        """Return the plugin class registered under NAME."""
        try:
            return self._plugins[name].cls
        except KeyError:
            raise ProviderNotFoundError(f"No plugin named {name!r} is installed.") from None

    def plugins(self) -> dict[str, PluginEntry]:
        """Return the registered plugins by name."""
        return dict(self._plugins)

    # --- live providers ---------------------------------------------------

    def get(self, name: str) -> AbstractAIProvider:
        """Return the live provider NAME, or raise ``ProviderNotFoundError``."""
        try:
            return self._live[name].provider
        except KeyError:
            raise ProviderNotFoundError(f"No provider named {name!r}.", provider=name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._live

    def names(self) -> list[str]:
        """Return the names of the live providers, sorted."""
        return sorted(self._live)

    def spec(self, name: str) -> ProviderSpec:
        """Return the spec the live provider NAME was built from."""
        try:
            return self._live[name].spec
        except KeyError:
            raise ProviderNotFoundError(f"No provider named {name!r}.", provider=name) from None

    @property
    def changes(self) -> int:
        """Return how many times the live providers changed (applied, replaced, removed, stopped).

        A reader that derives something from them (the model catalogue) compares
        this count instead of the providers themselves.
        """
        return self._live_changes

    @property
    def default_name(self) -> str | None:
        """Return the name of the default provider, if one is live."""
        for name, live in self._live.items():
            if live.spec.is_default:
                return name
        return None

    def last_error(self, name: str) -> str | None:
        """Return the last load or reload error of provider NAME, if it has one."""
        return self._errors.get(name)

    def lease(self, name: str) -> Lease:
        """Hold the live provider NAME for one request or stream (``async with``).

        An instance replaced while leased finishes the request and is shut
        down when its last lease ends.
        """
        return Lease(self, name)

    def _take(self, name: str) -> _Live:
        """Count one more lease of the live provider NAME; raise if there is none."""
        live = self._live.get(name)
        if live is None:
            raise ProviderNotFoundError(f"No provider named {name!r}.", provider=name)
        live.active += 1
        return live

    def _give_back(self, live: _Live) -> None:
        """Count one lease of LIVE less; shut a replaced instance down with its last lease."""
        live.active -= 1
        if live.retired and live.active == 0:
            self._close_later(live)

    async def apply(self, spec: ProviderSpec) -> AbstractAIProvider:
        """Build provider SPEC.name from SPEC and swap it in.

        Raise ``ProviderNotFoundError`` (no such plugin), ``ProviderConfigError``
        (per-field errors) or ``ProviderInitializationError`` (whatever the
        plugin raised, masked); nothing else. Either way the old instance, if
        any, keeps serving and the error is the provider's ``last_error``.
        """
        generation = self._generation.get(spec.name, 0) + 1
        self._generation[spec.name] = generation
        try:
            provider, secret_names = await self._build(spec)
        except ProviderNotFoundError as exc:
            self._pending[spec.name] = spec
            self._errors[spec.name] = exc.message
            raise
        except ProviderError as exc:
            self._errors[spec.name] = exc.message
            raise
        if self._generation.get(spec.name) != generation:
            # A newer apply for this name started while we initialized: it wins.
            self._close_in_background(provider)
            return self._live[spec.name].provider if spec.name in self._live else provider
        if spec.is_default:
            self._clear_default(except_name=spec.name)
        old = self._live.get(spec.name)
        self._live[spec.name] = _Live(
            spec=spec, provider=provider, generation=generation, secret_names=secret_names
        )
        self._live_changes += 1
        self._pending.pop(spec.name, None)
        self._errors.pop(spec.name, None)
        if old is not None:
            self._retire(old)
        logger.info(
            "provider %s loaded (plugin %s, generation %s)", spec.name, spec.plugin, generation
        )
        self._notify(ProviderChange(spec.name, serving=True, generation=generation))
        return provider

    async def build_candidate(self, spec: ProviderSpec) -> AbstractAIProvider:
        """Build and initialize provider SPEC without swapping it in; the registry is left as it was.

        For a write that must know a configuration works before it is saved.
        Raise ``ProviderNotFoundError``, ``ProviderConfigError`` or
        ``ProviderInitializationError`` (whatever the plugin raised, masked),
        as ``apply`` does. Give the instance back to ``discard`` when done.
        """
        provider, _ = await self._build(spec)
        return provider

    async def discard(self, provider: AbstractAIProvider) -> None:
        """Shut down PROVIDER, an instance that will not serve: never raises, never waits past the shutdown timeout."""
        await _quiet_shutdown(provider, self.shutdown_timeout)

    async def _build(self, spec: ProviderSpec) -> tuple[AbstractAIProvider, frozenset[str]]:
        """Return a validated, described and initialized instance of SPEC and its secret setting names.

        Every call into the plugin is guarded: what it raises becomes a
        ``ProviderInitializationError`` naming the step, secrets masked.
        """
        cls = self.plugin(spec.plugin)
        secrets = config_secret_values(spec.config, schema_secret_names(cls.config_schema))

        def failed(step: str, exc: BaseException) -> ProviderInitializationError:
            message = redact(f"{step}: {plugin_failure_text(exc)}", secrets)
            return ProviderInitializationError(message, provider=spec.name)

        try:
            provider = cls(spec.config, name=spec.name)
        except PLUGIN_FAILURES as exc:
            raise failed(f"The plugin {cls.__name__} could not be built", exc) from None
        try:
            errors = provider.get_config_errors(spec.config)
            if not errors and _overrides(provider, "validate_config"):
                if not provider.validate_config(spec.config):
                    errors = {
                        "config": ["The plugin's validate_config refused this configuration."]
                    }
            errors = {
                str(field): [redact(str(msg), secrets) for msg in msgs]
                for field, msgs in dict(errors).items()
            }
        except PLUGIN_FAILURES as exc:
            raise failed("Validating the configuration failed", exc) from None
        if errors:
            message = "Invalid configuration: " + "; ".join(
                f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()
            )
            raise ProviderConfigError(message, errors=errors, provider=spec.name)
        try:
            secret_names = frozenset(secret_fields(provider.get_config_schema()))
        except PLUGIN_FAILURES as exc:
            raise failed("get_config_schema failed", exc) from None
        try:
            metadata = provider.metadata
            if not isinstance(metadata, PluginMetadata):
                raise TypeError(f"metadata is a {type(metadata).__name__}, not a PluginMetadata")
            metadata.as_dict()
        except PLUGIN_FAILURES as exc:
            raise failed("metadata failed", exc) from None
        # The plugin must describe its own default model: a get_model_info
        # that raises there would fail each of its requests' accounting.
        model = provider.config.get("default_model") or next(iter(metadata.models), None)
        if isinstance(model, str) and model:
            try:
                provider.get_model_info(model)
            except PLUGIN_FAILURES as exc:
                raise failed(f"get_model_info({model!r}) failed", exc) from None
        try:
            async with asyncio.timeout(self.initialize_timeout):
                await provider.initialize()
        except PLUGIN_FAILURES as exc:
            # Waited for briefly, then left in the background: a plugin that
            # hangs in shutdown must not hold the answer.
            closing = self._close_in_background(provider)
            if closing is not None:
                await asyncio.wait({closing}, timeout=FAILED_SHUTDOWN_WAIT_SECONDS)
            error = failed("Initialization failed", exc)
            # A plugin's own error may name the setting at fault (a base_url whose
            # host resolves to a blocked address): kept, for the form to show it there.
            error.field = exc.field if isinstance(exc, ProviderError) else None
            raise error from None
        return provider, secret_names

    async def reload(self, name: str, config: dict[str, Any] | None = None) -> AbstractAIProvider:
        """Rebuild provider NAME with CONFIG (its current config when None).

        A name with no live provider is built from the plugin of the same
        name, as in the guide's ``registry.reload("openai", {...})``.
        """
        live = self._live.get(name)
        if live is not None:
            spec = live.spec
        else:
            spec = self._pending.get(name) or ProviderSpec(name=name, plugin=name)
        new_config = dict(spec.config) if config is None else dict(config)
        return await self.apply(
            ProviderSpec(spec.name, spec.plugin, new_config, spec.fallbacks, spec.is_default)
        )

    async def update_provider_config(
        self, name: str, partial: dict[str, Any]
    ) -> AbstractAIProvider:
        """Merge PARTIAL into provider NAME's config and hot-swap it in."""
        merged = {**self.spec(name).config, **partial}
        return await self.reload(name, merged)

    async def unregister(self, name: str, *, reason: str | None = None) -> bool:
        """Take provider NAME out of service; return whether it was live.

        REASON (a disabled config, say) is kept as its last error.
        """
        self._generation[name] = self._generation.get(name, 0) + 1
        self._pending.pop(name, None)
        if reason:
            self._errors[name] = reason
        else:
            self._errors.pop(name, None)
        live = self._live.pop(name, None)
        if live is None:
            return False
        self._live_changes += 1
        self._retire(live)
        self._notify(ProviderChange(name, serving=False, generation=self._generation[name]))
        return True

    def _clear_default(self, *, except_name: str) -> None:
        for name, live in self._live.items():
            if name != except_name and live.spec.is_default:
                s = live.spec
                live.spec = ProviderSpec(s.name, s.plugin, s.config, s.fallbacks, False)

    def _retire(self, live: _Live) -> None:
        live.retired = True
        if live.active == 0:
            self._close_later(live)

    def _close_later(self, live: _Live) -> None:
        self._close_in_background(live.provider)

    def _close_in_background(self, provider: AbstractAIProvider) -> asyncio.Task[None] | None:
        """Shut PROVIDER down in a task of its own (bounded by the shutdown timeout); return it."""
        try:
            task = asyncio.get_running_loop().create_task(
                _quiet_shutdown(provider, self.shutdown_timeout)
            )
        except RuntimeError:
            return None
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    async def wait_closed(self) -> None:
        """Wait until every retired instance has been shut down."""
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def shutdown_all(self) -> None:
        """Shut every live provider down and forget it."""
        lives = list(self._live.items())
        self._live.clear()
        self._live_changes += 1
        for _, live in lives:
            live.retired = True
        for name, live in lives:
            self._notify(ProviderChange(name, serving=False, generation=live.generation))
        await asyncio.gather(
            *(_quiet_shutdown(live.provider, self.shutdown_timeout) for _, live in lives)
        )
        await self.wait_closed()

    # --- change events ----------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> None:
        """Call CALLBACK(change) on the event loop whenever a provider is applied, replaced or removed.

        CHANGE is a ``ProviderChange``. A bound method is held weakly (an
        object that is gone stops being called); anything else until
        ``unsubscribe``. A callback that fails is logged; one returning an
        awaitable has it run as a task. Callbacks must not block.
        """
        if inspect.ismethod(callback):
            ref: Callable[[], ChangeCallback | None] = weakref.WeakMethod(callback)
        else:

            def ref(callback: ChangeCallback = callback) -> ChangeCallback:
                return callback

        self._subscribers.append(ref)

    def unsubscribe(self, callback: ChangeCallback) -> None:
        """Stop calling CALLBACK; unknown callbacks are ignored."""
        self._subscribers = [
            ref for ref in self._subscribers if (held := ref()) is not None and held != callback
        ]

    def subscriber_count(self) -> int:
        """Return how many callbacks are subscribed (those whose object is gone not counted)."""
        return sum(1 for ref in self._subscribers if ref() is not None)

    def _notify(self, change: ProviderChange) -> None:
        """Tell every subscriber about CHANGE; none of them can fail the change itself."""
        for ref in list(self._subscribers):
            callback = ref()
            if callback is None:
                continue
            try:
                result = callback(change)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._callback_tasks.add(task)
                    task.add_done_callback(self._callback_done)
            except Exception:
                logger.exception("a registry change callback failed (provider %s)", change.name)
        # Subscribers added meanwhile are kept; only those whose object is gone go.
        self._subscribers = [ref for ref in self._subscribers if ref() is not None]

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a registry change callback failed", exc_info=task.exception())

    # --- status and health ------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        """Return what the registry knows of provider NAME, secrets masked; plugin code is not called."""
        live = self._live.get(name)
        if live is None:
            pending = self._pending.get(name)
            return {
                "name": name,
                "loaded": False,
                "plugin": pending.plugin if pending else None,
                "last_error": self._errors.get(name),
            }
        config = live.provider.config
        return {
            "name": name,
            "loaded": True,
            "plugin": live.spec.plugin,
            "is_default": live.spec.is_default,
            "fallbacks": list(live.spec.fallbacks),
            "config": mask_config(config if isinstance(config, dict) else {}, live.secret_names),
            "loaded_at": live.loaded_at,
            "generation": live.generation,
            "active_requests": live.active,
            "last_error": self._errors.get(name),
        }

    def all_secret_values(self) -> tuple[str, ...]:
        """Return the configured secrets of every live provider (see ``secret_values``).

        Kept until a provider is loaded, replaced or taken out of service:
        every log record is redacted with them.
        """
        changes = self._live_changes
        kept_at, found = self._all_secrets
        if kept_at != changes:
            # Kept under the count read before: if a change lands meanwhile (a log
            # record read in another thread), the next record reads them again.
            values = {v for live in list(self._live.values()) for v in self._live_secrets(live)}
            found = tuple(sorted(values))
            self._all_secrets = (changes, found)
        return found

    def _live_secrets(self, live: _Live) -> list[str]:
        return config_secret_values(live.provider.config, live.secret_names)

    def secret_values(self, name: str) -> list[str]:
        """Return the configured secrets of live provider NAME, to mask them; never raises.

        By the secret names read when the instance was built: asking the plugin
        again could raise, and turn a masked message into a failure.
        """
        live = self._live.get(name)
        return self._live_secrets(live) if live else []

    def _plugin_failed(self, name: str, step: str, exc: BaseException) -> PluginError:
        """Record that live provider NAME's plugin raised EXC in STEP; return it as a ``PluginError``."""
        message = redact(f"{step}: {plugin_failure_text(exc)}", self.secret_values(name))
        logger.warning("provider %s: %s", name, message)
        self._errors[name] = message
        return PluginError(message, provider=name)

    def metadata(self, name: str) -> PluginMetadata:
        """Return live provider NAME's metadata.

        Raise ``ProviderNotFoundError``, or ``PluginError`` when the plugin
        raises (recorded as the provider's ``last_error``).
        """
        provider = self.get(name)
        try:
            metadata = provider.metadata
            if not isinstance(metadata, PluginMetadata):
                raise TypeError(f"metadata is a {type(metadata).__name__}, not a PluginMetadata")
            return metadata
        except PLUGIN_FAILURES as exc:
            raise self._plugin_failed(name, "metadata failed", exc) from None

    def model_info(self, name: str, model: str) -> dict[str, Any] | None:
        """Return what live provider NAME knows of MODEL, or None.

        Raise ``ProviderNotFoundError``, or ``PluginError`` when the plugin
        raises (recorded as the provider's ``last_error``).
        """
        provider = self.get(name)
        try:
            info = provider.get_model_info(model)
        except PLUGIN_FAILURES as exc:
            raise self._plugin_failed(name, f"get_model_info({model!r}) failed", exc) from None
        if info is not None and not isinstance(info, dict):
            error = TypeError(f"get_model_info returned a {type(info).__name__}, not a dict")
            raise self._plugin_failed(name, f"get_model_info({model!r}) failed", error)
        return info

    async def list_models(self, name: str, *, timeout: float = 10.0) -> list[str]:
        """Return the models live provider NAME offers (it may ask its upstream).

        Raise the plugin's ``ProviderError``, a ``ProviderTimeoutError`` after
        TIMEOUT seconds, or ``PluginError`` when it raises anything else.
        """
        async with self.lease(name) as provider:
            try:
                async with asyncio.timeout(timeout):
                    models = await provider.list_models()
                return [str(model) for model in models]
            except ProviderError:
                raise
            except TimeoutError:
                raise ProviderTimeoutError(
                    f"list_models timed out after {timeout:g}s.", provider=name
                ) from None
            except PLUGIN_FAILURES as exc:
                raise self._plugin_failed(name, "list_models failed", exc) from None

    async def health_check(self, name: str, *, timeout: float = 10.0) -> HealthStatus:
        """Run provider NAME's health check, turning every failure into a status, secrets masked."""
        started = time.perf_counter()
        try:
            async with self.lease(name) as provider:
                status = await asyncio.wait_for(provider.health_check(), timeout)
            if not isinstance(status, HealthStatus):
                raise TypeError(f"health_check returned a {type(status).__name__}")
        except TimeoutError:
            status = HealthStatus(
                available=False, error=f"Health check timed out after {timeout:g}s."
            )
        except ProviderError as exc:
            status = HealthStatus(available=False, error=exc.message)
        except PLUGIN_FAILURES as exc:  # a plugin bug must not break the others' checks
            status = HealthStatus(available=False, error=plugin_failure_text(exc))
        if status.error:
            # Plugins must keep their keys out of messages; this catches those that do not.
            status.error = redact(str(status.error), self.secret_values(name))
        if status.response_time_ms is None:
            status.response_time_ms = round((time.perf_counter() - started) * 1000, 3)
        return status

    async def health_check_all(self, *, timeout: float = 10.0) -> dict[str, HealthStatus]:
        """Check every live provider concurrently; return each one's status by name."""
        names = self.names()
        results = await asyncio.gather(*(self.health_check(n, timeout=timeout) for n in names))
        return dict(zip(names, results, strict=True))

    # --- discovery --------------------------------------------------------

    async def discover_plugins(self, path: Path | str) -> list[DiscoveryResult]:
        """Load every ``{name}_provider.py`` in PATH and register its ``{Name}Provider``.

        A changed file is imported again and its class swapped in: live
        providers built from it are rebuilt, requests in flight finish on the
        old instances. A broken file is reported, never raised.
        """
        directory = Path(path)
        results: list[DiscoveryResult] = []
        if not directory.is_dir():
            return [
                DiscoveryResult(
                    name="", origin=str(directory), status="failed", error="Not a directory."
                )
            ]
        for file in sorted(directory.glob(f"*{PLUGIN_FILE_SUFFIX}")):
            results.append(await self._discover_file(file))
        return results

    async def _discover_file(self, file: Path) -> DiscoveryResult:
        name = file.name[: -len(PLUGIN_FILE_SUFFIX)]
        origin = str(file)
        try:
            source = await asyncio.to_thread(file.read_bytes)
        except OSError as exc:
            return DiscoveryResult(name, origin, "failed", f"Cannot read file: {exc}")
        fingerprint = hashlib.sha256(source).hexdigest()
        current = self._plugins.get(name)
        if current and current.origin == origin and current.fingerprint == fingerprint:
            return DiscoveryResult(name, origin, "unchanged", class_name=current.cls.__name__)
        if current and current.source in ("file", "entry_point") and current.origin != origin:
            # Two sources for one name would replace each other on every
            # discovery; the first one loaded keeps it until the process restarts.
            return DiscoveryResult(
                name, origin, "failed", f"Plugin name {name!r} is taken by {current.origin}."
            )
        # Imported in a worker thread: a plugin's module code (a slow import,
        # a blocking call) must not stall the streams this loop serves.
        # Registered back here, on the loop, where the registry lives.
        loaded = await asyncio.to_thread(_import_guarded, _load_plugin_file, file, name, source)
        try:
            if isinstance(loaded, BaseException):
                raise loaded
            cls = loaded
            self.register(cls, name, source="file", origin=origin, fingerprint=fingerprint)
        except PluginLoadError as exc:
            return DiscoveryResult(name, origin, "failed", exc.message)
        except SyntaxError as exc:
            return DiscoveryResult(
                name, origin, "failed", f"Syntax error at line {exc.lineno}: {exc.msg}"
            )
        except PLUGIN_FAILURES as exc:
            # SystemExit too: a plugin that calls sys.exit() on import must not
            # stop the server or the discovery of the other plugins.
            return DiscoveryResult(name, origin, "failed", plugin_failure_text(exc))
        await self._rebuild_plugin_users(name)
        return DiscoveryResult(
            name, origin, "updated" if current else "registered", class_name=cls.__name__
        )

    async def discover_entry_points(self) -> list[DiscoveryResult]:
        """Register the plugins that installed packages declare in ``echo.providers``."""
        results = []
        # Reading the installed packages' metadata and importing their modules
        # happen in a worker thread, as for plugin files.
        for ep in await asyncio.to_thread(entry_points, group=ENTRY_POINT_GROUP):
            origin = f"entry point {ep.value}"
            current = self._plugins.get(ep.name)
            if current and current.source == "file":
                results.append(
                    DiscoveryResult(
                        ep.name,
                        origin,
                        "failed",
                        f"Plugin name {ep.name!r} is taken by {current.origin}.",
                    )
                )
                continue
            try:
                loaded = await asyncio.to_thread(_import_guarded, ep.load)
                if isinstance(loaded, BaseException):
                    raise loaded
                cls = loaded
                if current and current.cls is cls:
                    results.append(
                        DiscoveryResult(ep.name, origin, "unchanged", class_name=cls.__name__)
                    )
                    continue
                self.register(cls, ep.name, source="entry_point", origin=origin)
            except PluginLoadError as exc:
                results.append(DiscoveryResult(ep.name, origin, "failed", exc.message))
                continue
            except PLUGIN_FAILURES as exc:
                results.append(DiscoveryResult(ep.name, origin, "failed", plugin_failure_text(exc)))
                continue
            await self._rebuild_plugin_users(ep.name)
            results.append(
                DiscoveryResult(
                    ep.name, origin, "updated" if current else "registered", class_name=cls.__name__
                )
            )
        return results

    async def _rebuild_plugin_users(self, plugin: str) -> None:
        """Rebuild live providers of PLUGIN with its new class, and start pending ones."""
        specs = [entry.spec for entry in self._live.values() if entry.spec.plugin == plugin]
        specs += [s for s in self._pending.values() if s.plugin == plugin]
        for spec in specs:
            try:
                await self.apply(spec)
            except ProviderError as exc:
                logger.warning(
                    "provider %s not rebuilt after discovery: %s", spec.name, exc.message
                )


def plugin_name_of(file: Path | str) -> str:
    """Return the plugin name of a plugin FILE (``custom_ai_provider.py`` -> ``custom_ai``)."""
    filename = Path(file).name
    if not filename.endswith(PLUGIN_FILE_SUFFIX):
        raise PluginLoadError(f"{filename}: a plugin file is named {{name}}{PLUGIN_FILE_SUFFIX}.")
    return filename[: -len(PLUGIN_FILE_SUFFIX)]


def load_plugin_file(file: Path | str) -> type[AbstractAIProvider]:
    """Import the plugin FILE as discovery does and return its ``{Name}Provider`` class.

    For a plugin's own tests: they get the class discovery would register,
    wherever the plugin directory is, without it being on ``sys.path``.
    """
    file = Path(file)
    return _load_plugin_file(file, plugin_name_of(file), file.read_bytes())


def _load_plugin_file(file: Path, name: str, source: bytes) -> type[AbstractAIProvider]:
    """Run SOURCE, the content read from FILE, as a fresh module; return its provider class.

    The bytes run are the bytes fingerprinted: not the file read again (it may
    have changed since), nor Python's bytecode cache, which knows a source by
    its size and modification time to the second and so runs an edit of the
    same size made within the same second as the code before it.
    """
    fingerprint = hashlib.sha256(source).hexdigest()
    module_name = f"echo_plugins.{name}_{fingerprint[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None:
        raise PluginLoadError(f"{file}: cannot be imported.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        code = compile(source, str(file), "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - a plugin file is code the admin installed
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return _find_provider_class(module, name)


def _import_guarded(load: Callable[..., Any], *args: Any) -> Any:
    """Return LOAD(*ARGS), or what it raised (a plugin's failure), for a worker thread to hand back."""
    try:
        return load(*args)
    except PLUGIN_FAILURES as exc:
        return exc


def plugin_failure_text(exc: BaseException) -> str:
    """Return what EXC, raised by plugin code, says: a ``ProviderError``'s message, else its type and text.

    Not masked: the caller knows the secrets to mask.
    """
    if isinstance(exc, ProviderError):
        return str(exc.message)
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises is a plugin bug too
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _overrides(provider: AbstractAIProvider, method: str) -> bool:
    """Return whether PROVIDER's class defines METHOD itself rather than inheriting the base's."""
    return getattr(type(provider), method, None) is not getattr(AbstractAIProvider, method)


async def _quiet_shutdown(
    provider: AbstractAIProvider, timeout: float = SHUTDOWN_TIMEOUT_SECONDS
) -> None:
    """Shut PROVIDER down; what it raises is logged, and after TIMEOUT seconds it is given up on."""
    name = getattr(provider, "name", type(provider).__name__)
    try:
        async with asyncio.timeout(timeout):
            await provider.shutdown()
    except TimeoutError:
        logger.error("provider %s did not shut down within %gs; given up on", name, timeout)
    except PLUGIN_FAILURES as exc:
        logger.error("provider %s failed to shut down cleanly: %s", name, type(exc).__name__)
