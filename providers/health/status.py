"""Provider health for the API: the latest state, checks on demand, and the public summary.

The periodic checks (``providers.health.monitor``) keep the latest result of
every provider in memory; ``provider_health_latest`` serves it without
waiting on any upstream. ``provider_health_check_all`` and
``provider_health_check`` check now, through the same monitor, so that an
asked-for check also updates the latest state, feeds the circuit breaker and
is recorded. Every report carries the provider's breaker state.

A configured provider that is not live (disabled, or its load failed) is
reported unavailable with the reason. Disabled providers are reported but
not recorded, since "down on purpose" is not an outage.

The public summary for load balancers (``ahealth_summary``, behind ``GET
/health``) never fans out upstream per request: it reads the periodic
checks' latest results when they are recent and about the instance now
serving; otherwise one probe per instance, shared by every concurrent
caller, is kept for a few seconds. Which providers it reports comes from
memory too: the enabled names the configuration sync keeps
(``providers.runtime.config_sync.enabled_providers``), and the registry's.
With that state warm it runs no query and hops to no thread; a probe it
needs is awaited on the serving loop. Asked-for checks are coalesced too:
concurrent refreshes share one round.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.conf import settings

from providers.config.selectors import provider_secret_values
from providers.errors import ProviderNotFoundError
from providers.health.monitor import (
    ProviderHealth,
    health_not_serving,
)
from providers.models import ProviderConfig
from providers.runtime import config_sync
from providers.runtime import process as runtime
from providers.runtime.process import run_in_serving_loop
from providers.runtime.single_flight import SingleFlight
from providers.secrets.masking import redact

T = TypeVar("T")

PUBLIC_TIMEOUT = 2.0
PUBLIC_CACHE_SECONDS = 5.0


class HealthProbes:
    """What one runtime remembers of health answers: recent public probes, and calls in flight."""

    def __init__(self) -> None:
        # (name, generation, loaded_at) of a live instance -> (expires at, available).
        self.public: dict[tuple[str, Any, Any], tuple[float, bool]] = {}
        # Concurrent probes of one instance, and concurrent check rounds, share one call.
        self.probes: SingleFlight[bool] = SingleFlight()
        self.rounds: SingleFlight[dict[str, ProviderHealth]] = SingleFlight()


def breaker_state(name: str, config: ProviderConfig | None = None) -> dict[str, Any]:
    """Return the circuit breaker state of provider NAME in this process, secrets masked."""
    state = runtime.manager.breaker(name).as_dict()
    # Its reasons may quote an upstream's message, which may quote the key.
    reasons = [key for key, value in state.items() if isinstance(value, str) and value]
    if reasons:
        secrets = provider_secret_values(name=name, config=config)
        for key in reasons:
            state[key] = redact(state[key], secrets)
    return state


def health_report(health: ProviderHealth, config: ProviderConfig | None) -> dict[str, Any]:
    """Return HEALTH as the API shows it: the check's fields and the breaker state."""
    return {**health.as_dict(), "breaker": breaker_state(health.name, config)}


def provider_health_latest() -> dict[str, dict[str, Any]]:
    """Return the latest known health of every configured or live provider, checking nothing.

    A disabled provider, or one with no live instance, is reported as it is
    now, with the reason; a live provider this process has not checked yet
    has ``available`` and ``checked_at`` None.
    """
    configs = {row.name: row for row in ProviderConfig.objects.all()}
    latest = runtime.monitor.latest()
    reports = {}
    for name in sorted(set(configs) | set(runtime.registry.names())):
        config = configs.get(name)
        if config is not None and (not config.enabled or name not in runtime.registry):
            # Known without a check: what it would find is why nothing serves.
            health = health_not_serving(config, checked_at=None)
        elif name in latest:
            health = latest[name]
        else:
            health = ProviderHealth(name=name, available=None, checked_at=None)
        reports[name] = health_report(health, config)
    return reports


async def _check(names: list[str] | None, timeout: float) -> dict[str, ProviderHealth]:
    """Check NAMES (all when None) through the monitor; concurrent asks for the same share a round."""
    key = tuple(sorted(names)) if names is not None else None
    return await runtime.health_probes.rounds.run(
        key, lambda: runtime.monitor.check_all(timeout=timeout, names=names)
    )


def provider_health_check_all(*, timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """Check every configured or live provider now, concurrently; record and return the results.

    Each live provider gets TIMEOUT seconds (``ECHO_HEALTH_TIMEOUT_SECONDS``
    when None). One ``HealthCheck`` row is written per enabled configured provider.
    """
    timeout = settings.ECHO_HEALTH_TIMEOUT_SECONDS if timeout is None else timeout
    results = run_in_serving_loop(_check, None, timeout)
    configs = {row.name: row for row in ProviderConfig.objects.filter(name__in=list(results))}
    return {name: health_report(health, configs.get(name)) for name, health in results.items()}


def provider_health_check(*, name: str, timeout: float | None = None) -> dict[str, Any]:
    """Check provider NAME now, record the result when it is enabled, and return it.

    Raise ``ProviderNotFoundError`` when NAME is neither configured nor live.
    """
    timeout = settings.ECHO_HEALTH_TIMEOUT_SECONDS if timeout is None else timeout
    config = ProviderConfig.objects.filter(name=name).first()
    if config is None and name not in runtime.registry:
        raise ProviderNotFoundError(f"No provider named {name!r}.", provider=name)
    results = run_in_serving_loop(_check, [name], timeout)
    health = results.get(name)
    if health is None:  # deleted and taken out of service meanwhile
        raise ProviderNotFoundError(f"No provider named {name!r}.", provider=name)
    return health_report(health, config)


def health_summary(*, timeout: float | None = None, max_age: float | None = None) -> dict[str, Any]:
    """Return ``ahealth_summary(TIMEOUT, MAX_AGE)`` to sync code (run on the serving loop)."""

    async def summary() -> dict[str, Any]:
        return await ahealth_summary(timeout=timeout, max_age=max_age)

    return run_in_serving_loop(summary)


async def ahealth_summary(
    *, timeout: float | None = None, max_age: float | None = None
) -> dict[str, Any]:
    """Return the minimal public health: ``{"status", "providers": {name: available}}``.

    The providers are the configured and enabled ones (an enabled one that
    cannot load, its secrets undecryptable say, is reported unavailable)
    and any other live one. STATUS is ``ok`` when every one is available,
    ``down`` when none is (or none is configured), ``degraded`` in between.
    A live instance's availability comes from the periodic checks when they
    saw this instance recently; otherwise from a probe of it, shared by
    concurrent callers and reused for MAX_AGE seconds, each within TIMEOUT.
    Nothing is recorded. Once this worker has read its configuration
    (``config_sync.enabled_providers``), a warm answer runs no query and
    hops to no thread.
    """
    timeout = PUBLIC_TIMEOUT if timeout is None else timeout
    max_age = PUBLIC_CACHE_SECONDS if max_age is None else max_age
    enabled = config_sync.enabled_providers()
    if enabled is None:
        # A process whose runtime has not read the configuration (a command, a
        # test without a serving worker): the database says.
        enabled = frozenset(
            [
                name
                async for name in ProviderConfig.objects.filter(enabled=True).values_list(
                    "name", flat=True
                )
            ]
        )
    names = sorted(enabled | set(runtime.registry.names()))
    probes = runtime.health_probes.public
    now = time.monotonic()
    for key, (expires, _) in list(probes.items()):  # a copy: a probe may end on another loop
        if expires <= now:
            probes.pop(key, None)
    latest = runtime.monitor.latest()
    trusted_for = _checks_trusted_for(max_age)
    providers: dict[str, bool] = {}
    unknown: dict[str, tuple[str, Any, Any]] = {}
    for name in names:
        if name not in runtime.registry:
            providers[name] = False
            continue
        key = _instance_key(name)  # taken before any check: a swap meanwhile must not inherit it
        checked = _recent_check(latest.get(name), key, trusted_for)
        cached = probes.get(key)
        if checked is not None:
            providers[name] = checked
        elif cached is not None:
            providers[name] = cached[1]
        else:
            unknown[name] = key
    if unknown:
        providers.update(await _on_serving_loop(_probe_all, unknown, timeout, max_age))
    up = sum(providers.values())
    if up and up == len(providers):
        overall = "ok"
    elif up:
        overall = "degraded"
    else:
        overall = "down"
    return {"status": overall, "providers": dict(sorted(providers.items()))}


async def _on_serving_loop(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await FUNC(*ARGS) on the serving loop, where the providers' clients live, without a thread.

    A request is served on that loop: FUNC runs right here. A caller on
    another loop (a test's, while a serving loop runs in a thread) has it
    run there and awaits the outcome; with no serving loop, it runs here.
    """
    loop = runtime.serving_loop()
    if loop is None or not loop.is_running() or loop.is_closed():
        return await func(*args)
    if loop is asyncio.get_running_loop():
        return await func(*args)
    # From an empty context, as ``run_in_serving_loop`` does: not this caller's.
    future = contextvars.Context().run(asyncio.run_coroutine_threadsafe, func(*args), loop)
    return await asyncio.wrap_future(future)


def _checks_trusted_for(max_age: float) -> float:
    """Return how old a periodic check may be and still answer the public probe.

    Two intervals and a timeout: one round late is normal, two is a stalled
    monitor, which then falls back to probes.
    """
    interval = settings.ECHO_HEALTH_INTERVAL_SECONDS
    if interval <= 0:
        return max_age  # only asked-for checks: as fresh as the probes' own results
    return max(max_age, 2 * interval + settings.ECHO_HEALTH_TIMEOUT_SECONDS)


def _recent_check(
    health: ProviderHealth | None, key: tuple[str, Any, Any], trusted_for: float
) -> bool | None:
    """Return what HEALTH says of the instance KEY, or None when it is too old or of another."""
    if health is None or health.available is None or health.checked_at is None:
        return None
    checked_at = health.checked_at.timestamp()
    loaded_at = key[2] or 0.0
    if checked_at < loaded_at or time.time() - checked_at > trusted_for:
        return None
    return bool(health.available)


async def _probe_all(
    unknown: dict[str, tuple[str, Any, Any]], timeout: float, max_age: float
) -> dict[str, bool]:
    """Probe the live instances UNKNOWN concurrently, each once however many callers ask."""
    names = list(unknown)
    results = await asyncio.gather(*(_probe(n, unknown[n], timeout, max_age) for n in names))
    return dict(zip(names, results, strict=True))


async def _probe(name: str, key: tuple[str, Any, Any], timeout: float, max_age: float) -> bool:
    cached = runtime.health_probes.public.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]  # a shared probe ended while this caller was on its way

    async def check() -> bool:
        status = await runtime.registry.health_check(name, timeout=timeout)
        runtime.health_probes.public[key] = (time.monotonic() + max_age, status.available)
        return status.available

    return await runtime.health_probes.probes.run(key, check)


def _instance_key(name: str) -> tuple[str, Any, Any]:
    """Return a key that changes whenever provider NAME's live instance is replaced."""
    status = runtime.registry.status(name)
    return (name, status.get("generation"), status.get("loaded_at"))
