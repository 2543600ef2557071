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
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from providers.base import AbstractAIProvider, secret_fields
from providers.errors import (
    PluginLoadError,
    ProviderConfigError,
    ProviderError,
    ProviderInitializationError,
    ProviderNotFoundError,
)
from providers.masking import mask_config
from providers.types import HealthStatus

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "echo.providers"
PLUGIN_FILE_SUFFIX = "_provider.py"


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


@dataclass(eq=False, slots=True)
class _Live:
    spec: ProviderSpec
    provider: AbstractAIProvider
    generation: int
    loaded_at: float = field(default_factory=time.time)
    active: int = 0
    retired: bool = False


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
        self._pending: dict[str, ProviderSpec] = {}
        self._errors: dict[str, str] = {}
        self._generation: dict[str, int] = {}
        self._closing: set[asyncio.Task[None]] = set()

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
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise PluginLoadError(f"{cls.__name__} does not implement: {missing}.")
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
    def default_name(self) -> str | None:
        """Return the name of the default provider, if one is live."""
        for name, live in self._live.items():
            if live.spec.is_default:
                return name
        return None

    def last_error(self, name: str) -> str | None:
        """Return the last load or reload error of provider NAME, if it has one."""
        return self._errors.get(name)

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[AbstractAIProvider]:
        """Hold the live provider NAME for one request or stream.

        An instance replaced while leased finishes the request and is shut
        down when its last lease ends.
        """
        live = self._live.get(name)
        if live is None:
            raise ProviderNotFoundError(f"No provider named {name!r}.", provider=name)
        live.active += 1
        try:
            yield live.provider
        finally:
            live.active -= 1
            if live.retired and live.active == 0:
                self._close_later(live)

    async def apply(self, spec: ProviderSpec) -> AbstractAIProvider:
        """Build provider SPEC.name from SPEC and swap it in.

        Raise ``ProviderConfigError`` (per-field errors) or
        ``ProviderInitializationError``; either way the old instance, if
        any, keeps serving.
        """
        generation = self._generation.get(spec.name, 0) + 1
        self._generation[spec.name] = generation
        try:
            cls = self.plugin(spec.plugin)
        except ProviderNotFoundError as exc:
            self._pending[spec.name] = spec
            self._errors[spec.name] = exc.message
            raise
        provider = cls(spec.config, name=spec.name)
        errors = provider.get_config_errors(spec.config)
        if errors:
            message = "Invalid configuration: " + "; ".join(
                f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()
            )
            self._errors[spec.name] = message
            raise ProviderConfigError(message, errors=errors, provider=spec.name)
        try:
            await provider.initialize()
        except Exception as exc:
            message = f"Initialization failed: {exc}"
            self._errors[spec.name] = message
            await _quiet_shutdown(provider)
            raise ProviderInitializationError(message, provider=spec.name) from exc
        if self._generation.get(spec.name) != generation:
            # A newer apply for this name started while we initialized: it wins.
            await _quiet_shutdown(provider)
            return self._live[spec.name].provider if spec.name in self._live else provider
        if spec.is_default:
            self._clear_default(except_name=spec.name)
        old = self._live.get(spec.name)
        self._live[spec.name] = _Live(spec=spec, provider=provider, generation=generation)
        self._pending.pop(spec.name, None)
        self._errors.pop(spec.name, None)
        if old is not None:
            self._retire(old)
        logger.info(
            "provider %s loaded (plugin %s, generation %s)", spec.name, spec.plugin, generation
        )
        return provider

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
        self._retire(live)
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
        try:
            task = asyncio.get_running_loop().create_task(_quiet_shutdown(live.provider))
        except RuntimeError:
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def wait_closed(self) -> None:
        """Wait until every retired instance has been shut down."""
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def shutdown_all(self) -> None:
        """Shut every live provider down and forget it."""
        lives = list(self._live.values())
        self._live.clear()
        for live in lives:
            live.retired = True
        await asyncio.gather(*(_quiet_shutdown(entry.provider) for entry in lives))
        await self.wait_closed()

    # --- status and health ------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        """Return what the registry knows of provider NAME, secrets masked."""
        live = self._live.get(name)
        if live is None:
            pending = self._pending.get(name)
            return {
                "name": name,
                "loaded": False,
                "plugin": pending.plugin if pending else None,
                "last_error": self._errors.get(name),
            }
        schema = live.provider.get_config_schema()
        return {
            "name": name,
            "loaded": True,
            "plugin": live.spec.plugin,
            "is_default": live.spec.is_default,
            "fallbacks": list(live.spec.fallbacks),
            "config": mask_config(live.provider.config, secret_fields(schema)),
            "loaded_at": live.loaded_at,
            "generation": live.generation,
            "active_requests": live.active,
            "last_error": self._errors.get(name),
        }

    async def health_check(self, name: str, *, timeout: float = 10.0) -> HealthStatus:
        """Run provider NAME's health check, turning every failure into a status."""
        started = time.perf_counter()
        try:
            async with self.lease(name) as provider:
                status = await asyncio.wait_for(provider.health_check(), timeout)
        except TimeoutError:
            status = HealthStatus(
                available=False, error=f"Health check timed out after {timeout:g}s."
            )
        except ProviderError as exc:
            status = HealthStatus(available=False, error=exc.message)
        except Exception as exc:  # a plugin bug must not break the others' checks
            status = HealthStatus(available=False, error=f"{type(exc).__name__}: {exc}")
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
        try:
            cls = _load_plugin_file(file, name, fingerprint)
            self.register(cls, name, source="file", origin=origin, fingerprint=fingerprint)
        except PluginLoadError as exc:
            return DiscoveryResult(name, origin, "failed", exc.message)
        except SyntaxError as exc:
            return DiscoveryResult(
                name, origin, "failed", f"Syntax error at line {exc.lineno}: {exc.msg}"
            )
        except (Exception, SystemExit) as exc:
            # SystemExit too: a plugin that calls sys.exit() on import must not
            # stop the server or the discovery of the other plugins.
            return DiscoveryResult(name, origin, "failed", f"{type(exc).__name__}: {exc}")
        await self._rebuild_plugin_users(name)
        return DiscoveryResult(
            name, origin, "updated" if current else "registered", class_name=cls.__name__
        )

    async def discover_entry_points(self) -> list[DiscoveryResult]:
        """Register the plugins that installed packages declare in ``echo.providers``."""
        results = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
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
                cls = ep.load()
                if current and current.cls is cls:
                    results.append(
                        DiscoveryResult(ep.name, origin, "unchanged", class_name=cls.__name__)
                    )
                    continue
                self.register(cls, ep.name, source="entry_point", origin=origin)
            except PluginLoadError as exc:
                results.append(DiscoveryResult(ep.name, origin, "failed", exc.message))
                continue
            except (Exception, SystemExit) as exc:
                results.append(
                    DiscoveryResult(ep.name, origin, "failed", f"{type(exc).__name__}: {exc}")
                )
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
    fingerprint = hashlib.sha256(file.read_bytes()).hexdigest()
    return _load_plugin_file(file, plugin_name_of(file), fingerprint)


def _load_plugin_file(file: Path, name: str, fingerprint: str) -> type[AbstractAIProvider]:
    """Import FILE as a fresh module and return its provider class."""
    module_name = f"echo_plugins.{name}_{fingerprint[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"{file}: cannot be imported.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return _find_provider_class(module, name)


async def _quiet_shutdown(provider: AbstractAIProvider) -> None:
    try:
        await provider.shutdown()
    except Exception:
        logger.exception("provider %s failed to shut down cleanly", provider.name)
