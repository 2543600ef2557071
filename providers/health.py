"""Provider health: run the checks, report the providers that are not serving, keep the history.

The live providers are checked concurrently on the serving loop, each within
its own timeout, so one slow upstream cannot hold the others' results. A
configured provider that is not live (disabled, or its load failed) is
reported unavailable with the reason. Every enabled, configured provider
checked gets one ``HealthCheck`` row; disabled providers are reported but not
recorded, since "down on purpose" is not an outage.

The public summary for load balancers caches each live instance's result for
a few seconds, so frequent probes do not reach paid upstream APIs each time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from providers.errors import ProviderNotFoundError
from providers.masking import redact
from providers.models import HealthCheck, ProviderConfig
from providers.runtime import registry, run_in_serving_loop
from providers.selectors import provider_last_error, provider_secret_values, timestamp_datetime
from providers.types import HealthStatus

DEFAULT_TIMEOUT = 5.0
PUBLIC_TIMEOUT = 2.0
PUBLIC_CACHE_SECONDS = 5.0

# (name, generation, loaded_at) of a live instance -> (expires at, available).
_public_cache: dict[tuple[str, Any, Any], tuple[float, bool]] = {}


@dataclass(slots=True)
class ProviderHealth:
    """The health of one provider as the API reports it.

    ERROR is what this check found; LAST_ERROR is the provider's last load
    or reload error, or why it is disabled.
    """

    name: str
    available: bool
    models: list[str] = field(default_factory=list)
    response_time_ms: float | None = None
    error: str | None = None
    last_error: str | None = None
    checked_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(tz=dt.UTC))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "available": self.available,
            "models": list(self.models),
            "response_time_ms": self.response_time_ms,
            "error": self.error,
            "last_error": self.last_error,
            "checked_at": self.checked_at,
        }


def health_check_record(*, provider: ProviderConfig, health: ProviderHealth) -> HealthCheck:
    """Record HEALTH as one row of PROVIDER's health time series."""
    return HealthCheck.objects.create(**_row_values(provider, health))


def _row_values(provider: ProviderConfig, health: ProviderHealth) -> dict[str, Any]:
    return {
        "provider": provider,
        "available": health.available,
        "response_time_ms": health.response_time_ms,
        "models": list(health.models),
        "error": health.error or "",
        "checked_at": health.checked_at,
    }


def _from_status(name: str, status: HealthStatus, config: ProviderConfig | None) -> ProviderHealth:
    secrets = provider_secret_values(name=name, config=config)
    last_error = provider_last_error(config) if config else registry.last_error(name)
    return ProviderHealth(
        name=name,
        available=status.available,
        models=list(status.models),
        response_time_ms=status.response_time_ms,
        error=redact(status.error, secrets) if status.error else None,
        last_error=redact(last_error, secrets) if last_error else None,
        checked_at=timestamp_datetime(status.checked_at) or dt.datetime.now(tz=dt.UTC),
    )


def _not_serving(config: ProviderConfig) -> ProviderHealth:
    reason = provider_last_error(config) or "Not loaded."
    return ProviderHealth(name=config.name, available=False, error=reason, last_error=reason)


async def _check(names: list[str], timeout: float) -> dict[str, HealthStatus]:
    results = await asyncio.gather(*(registry.health_check(n, timeout=timeout) for n in names))
    return dict(zip(names, results, strict=True))


def provider_health_check_all(
    *, timeout: float | None = None, record: bool = True
) -> dict[str, ProviderHealth]:
    """Check every configured or live provider; return each one's health by name.

    Each live provider gets TIMEOUT seconds (``DEFAULT_TIMEOUT`` when None).
    With RECORD, write one ``HealthCheck`` row per enabled configured provider.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    configs = {row.name: row for row in ProviderConfig.objects.all()}
    live = registry.names()
    statuses = run_in_serving_loop(_check, live, timeout) if live else {}
    results: dict[str, ProviderHealth] = {}
    for name in sorted(set(configs) | set(statuses)):
        config = configs.get(name)
        if name in statuses:
            results[name] = _from_status(name, statuses[name], config)
        elif config is not None:
            results[name] = _not_serving(config)
    if record:
        HealthCheck.objects.bulk_create(
            HealthCheck(**_row_values(configs[name], health))
            for name, health in results.items()
            if name in configs and configs[name].enabled
        )
    return results


def provider_health_check(
    *, name: str, timeout: float | None = None, record: bool = True
) -> ProviderHealth:
    """Check provider NAME now; raise ``ProviderNotFoundError`` when it is neither configured nor live.

    With RECORD, write a ``HealthCheck`` row when it is an enabled configured provider.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    config = ProviderConfig.objects.filter(name=name).first()
    if name in registry:
        status = run_in_serving_loop(_check, [name], timeout)[name]
        health = _from_status(name, status, config)
    elif config is not None:
        health = _not_serving(config)
    else:
        raise ProviderNotFoundError(f"No provider named {name!r}.", provider=name)
    if record and config is not None and config.enabled:
        health_check_record(provider=config, health=health)
    return health


def health_summary(*, timeout: float | None = None, max_age: float | None = None) -> dict[str, Any]:
    """Return the minimal public health: ``{"status", "providers": {name: available}}``.

    STATUS is ``ok`` when every enabled provider is available, ``down`` when
    none is (or none is configured), ``degraded`` in between. Results of a
    live instance are reused for MAX_AGE seconds; nothing is recorded.
    """
    timeout = PUBLIC_TIMEOUT if timeout is None else timeout
    max_age = PUBLIC_CACHE_SECONDS if max_age is None else max_age
    enabled = set(ProviderConfig.objects.filter(enabled=True).values_list("name", flat=True))
    names = sorted(enabled | set(registry.names()))
    now = time.monotonic()
    for key, (expires, _) in list(_public_cache.items()):  # a copy: probes run in threads
        if expires <= now:
            _public_cache.pop(key, None)
    providers: dict[str, bool] = {}
    stale: dict[str, tuple[str, Any, Any]] = {}
    for name in names:
        if name not in registry:
            providers[name] = False
            continue
        key = _instance_key(name)
        cached = _public_cache.get(key)
        if cached is not None:
            providers[name] = cached[1]
        else:
            stale[name] = key  # taken before the check: a swap meanwhile must not inherit it
    if stale:
        for name, status in run_in_serving_loop(_check, list(stale), timeout).items():
            providers[name] = status.available
            _public_cache[stale[name]] = (now + max_age, status.available)
    up = sum(providers.values())
    if up and up == len(providers):
        overall = "ok"
    elif up:
        overall = "degraded"
    else:
        overall = "down"
    return {"status": overall, "providers": dict(sorted(providers.items()))}


def _instance_key(name: str) -> tuple[str, Any, Any]:
    """Return a key that changes whenever provider NAME's live instance is replaced."""
    status = registry.status(name)
    return (name, status.get("generation"), status.get("loaded_at"))
