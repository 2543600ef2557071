"""HealthMonitor: check every provider on an interval, keep the latest state, record it, feed the breakers.

Each serving process runs one monitor, its runtime's ``monitor``
(``providers.runtime.lifecycle`` starts it when
``ECHO_HEALTH_INTERVAL_SECONDS`` is above 0); ``manage.py check_providers``
runs the same rounds from cron or a terminal. A round
checks the live providers concurrently through
``ProviderRegistry.health_check``, each within its own timeout and with
every failure turned into a status, so one hanging upstream holds up no
other. Health checks never spend tokens: a plugin's ``health_check`` lists
models or pings its server, it never asks for a completion.

What a round does with its results:

- keeps the latest per provider in memory, so that ``GET /plugins/health``
  answers at once, without waiting on any upstream;
- feeds each live provider's circuit breaker. A failed check counts as a
  failure. A successful check closes an open or half-open breaker: a health
  check is a free probe, and leaving the probe to a paying request would keep
  a recovered provider out of service for a whole cooldown, or for ever when
  the checks, each failing, kept restarting it. A successful check leaves a
  closed breaker's failure count alone: requests may fail where the cheap
  check does not (a model that errors while the model list answers), and the
  check must not hide that;
- records one ``HealthCheck`` row per enabled configured provider; a
  disabled one is reported but not recorded, since down on purpose is no
  outage;
- deletes the rows older than ``ECHO_HEALTH_RETENTION_DAYS``, at most once an
  hour per process (one indexed ``DELETE``).

Several workers, one checker. On PostgreSQL, a periodic round is run by
the worker that holds the round lease: a session advisory lock
(``pg_try_advisory_lock``) on a connection the monitor keeps for that alone
(``PostgresRoundLease``). Each interval every worker tries it; the one that
holds it keeps it, round after round, while its connection lives, and when
that worker stops (or its connection drops) the lock goes with it and
another worker takes the next round. The other workers check nothing: they
read each provider's newest ``HealthCheck`` row (``read_shared``), so their
``latest()`` is the checker's view, and a new row feeds their breakers as a
check of their own would. When the lease cannot be asked for (its
connection fails), a worker checks by itself, as on SQLite or any other
database, where every process checks (``ProcessRoundLease``).

The history stays one row per interval even then: periodic rounds record
with a minimum gap of half the interval. In one transaction, a provider's
row is written only when it has no row newer than the gap. That transaction
is serialized across processes (``pg_advisory_xact_lock`` on PostgreSQL;
``BEGIN IMMEDIATE``, the site's SQLite transaction mode, on SQLite), so two
workers checking at the same moment cannot both find "no recent row". Checks
someone asked for (``?refresh=1``, the status endpoints, ``check_providers``
without ``--watch``) always record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone

from providers.config.selectors import (
    provider_last_error,
    provider_secret_values,
    timestamp_datetime,
)
from providers.models import HealthCheck, ProviderConfig
from providers.runtime import process as runtime
from providers.runtime.circuit_breaker import CLOSED
from providers.runtime.manager import ModelManager
from providers.runtime.registry import ProviderRegistry
from providers.secrets.masking import redact
from providers.types import HealthStatus

logger = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 3600.0
# Any fixed 64-bit number: the PostgreSQL advisory lock the periodic recorders share.
RECORD_LOCK_KEY = zlib.crc32(b"echo.providers.health_checks.record")
# The session advisory lock held by the worker that runs the periodic rounds.
ROUND_LOCK_KEY = zlib.crc32(b"echo.providers.health_checks.round")


@dataclass(slots=True)
class ProviderHealth:
    """The health of one provider as the API reports it.

    ERROR is what the check found; LAST_ERROR is the provider's last load or
    reload error, or why it is disabled. AVAILABLE and CHECKED_AT are None
    for a provider this process has not checked yet.
    """

    name: str
    available: bool | None
    models: list[str] = field(default_factory=list)
    response_time_ms: float | None = None
    error: str | None = None
    last_error: str | None = None
    checked_at: dt.datetime | None = field(default_factory=lambda: dt.datetime.now(tz=dt.UTC))

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


def health_from_status(
    name: str, status: HealthStatus, config: ProviderConfig | None
) -> ProviderHealth:
    """Return the health of live provider NAME from its check STATUS, secrets masked."""
    # Plugins must keep secrets out of their messages; this catches the ones that do not.
    secrets = provider_secret_values(name=name, config=config)
    last_error = provider_last_error(config) if config else runtime.registry.last_error(name)
    return ProviderHealth(
        name=name,
        available=status.available,
        models=list(status.models),
        response_time_ms=status.response_time_ms,
        error=redact(status.error, secrets) if status.error else None,
        last_error=redact(last_error, secrets) if last_error else None,
        checked_at=timestamp_datetime(status.checked_at) or dt.datetime.now(tz=dt.UTC),
    )


def health_not_serving(
    config: ProviderConfig, *, checked_at: dt.datetime | None = None
) -> ProviderHealth:
    """Return the health of configured provider CONFIG that has no live instance: unavailable, with why.

    CHECKED_AT defaults to now; give None when the state is known without a check.
    """
    reason = provider_last_error(config) or "Not loaded."
    return ProviderHealth(
        name=config.name,
        available=False,
        error=reason,
        last_error=reason,
        checked_at=checked_at,
    )


def health_check_rows_record(
    *, rows: list[HealthCheck], min_gap: float | None = None
) -> list[HealthCheck]:
    """Save ROWS and return those saved.

    With MIN_GAP (seconds), skip the row of each provider that already has
    one newer than that: the periodic rounds of several workers then record
    a provider once, not once per worker. The read and the write share a
    transaction serialized across processes (see the module docstring).
    """
    if not rows:
        return []
    with transaction.atomic():
        if min_gap is not None:
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [RECORD_LOCK_KEY])
            cutoff = timezone.now() - dt.timedelta(seconds=min_gap)
            recent = set(
                HealthCheck.objects.filter(
                    provider_id__in=[row.provider_id for row in rows], checked_at__gt=cutoff
                ).values_list("provider_id", flat=True)
            )
            rows = [row for row in rows if row.provider_id not in recent]
        return HealthCheck.objects.bulk_create(rows)


def health_check_rows_prune(*, older_than: dt.datetime) -> int:
    """Delete the health checks made before OLDER_THAN; return how many went."""
    deleted, _ = HealthCheck.objects.filter(checked_at__lt=older_than).delete()
    return deleted


def release_connections() -> None:
    """Close this thread's database connections that are broken or past their age.

    A long-running loop has no request cycle to do it, and would otherwise
    hold one connection for ever, broken after a database restart. A
    connection inside a transaction (a test's) is left alone.
    """
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


class RoundLease(Protocol):
    """Who runs the next periodic round."""

    async def claim(self) -> bool:
        """Return whether this process runs the next round."""

    async def release(self) -> None:
        """Give the lease up (the loop ends)."""


class ProcessRoundLease:
    """Every process runs its own rounds: SQLite, or no database the workers share."""

    async def claim(self) -> bool:
        return True

    async def release(self) -> None:
        pass


class PostgresRoundLease:
    """The rounds of the worker holding a session advisory lock on a connection of its own.

    The connection is psycopg's async one, opened on the event loop with the
    settings of the ``default`` database; it holds nothing but the lock. When
    it cannot be opened or fails, ``claim`` says yes (a round run twice is
    better than none; the recording's minimum gap keeps one row) and the next
    claim opens a new one.
    """

    def __init__(self, *, key: int = ROUND_LOCK_KEY, connect_timeout: int = 5) -> None:
        self.key = key
        self.connect_timeout = connect_timeout
        self.held = False
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def claim(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self.held = False
                self._conn = await psycopg.AsyncConnection.connect(
                    **_lease_connection_params(),
                    autocommit=True,
                    connect_timeout=self.connect_timeout,
                )
            if self.held:
                await self._conn.execute("SELECT 1")  # still ours while the connection lives
                return True
            cursor = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key])
            row = await cursor.fetchone()
            self.held = bool(row and row[0])
            return self.held
        except psycopg.Error as exc:
            logger.warning("health round lease unavailable (%s); this worker checks by itself", exc)
            await self.release()
            return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        held, self.held = self.held, False
        if conn is not None and not conn.closed:
            try:
                if held:
                    # Unlocked now: the session's end would free it only once the
                    # server has noticed the closed connection, a moment later.
                    await conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
            except psycopg.Error:
                logger.debug("health round lease: unlocking failed", exc_info=True)
            try:
                await conn.close()  # the session lock goes with the session anyway
            except psycopg.Error:
                logger.debug("health round lease: closing its connection failed", exc_info=True)


def _lease_connection_params() -> dict[str, Any]:
    # Django's own parameters, minus its cursor class and adapters, which are
    # made for its synchronous connections.
    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    # Named for operators (and tests): pg_stat_activity shows which worker checks.
    params.setdefault("application_name", f"echo-health-lease-{os.getpid()}")
    return params


def round_lease() -> RoundLease:
    """Return the lease the periodic rounds of this process use: shared on PostgreSQL."""
    if connection.vendor == "postgresql":
        return PostgresRoundLease()
    return ProcessRoundLease()


class HealthMonitor:
    """Check REGISTRY's providers, remember the latest results, record them, feed MANAGER's breakers.

    CLOCK (monotonic seconds) times the pruning. Secrets are masked with the
    help of the current runtime's registry. LEASE decides which process runs
    the periodic rounds (default: ``round_lease()``, chosen when the loop starts).
    """

    def __init__(
        self,
        registry: ProviderRegistry,
        manager: ModelManager,
        *,
        clock: Callable[[], float] = time.monotonic,
        lease: RoundLease | None = None,
    ) -> None:
        self.registry = registry
        self.manager = manager
        self._clock = clock
        self._lease = lease
        self._latest: dict[str, ProviderHealth] = {}
        self._pruned_at: float | None = None
        self._fed_rows: dict[str, dt.datetime] = {}
        #: Whether this process ran the last periodic round (None: no round yet).
        self.checking: bool | None = None

    def latest(self) -> dict[str, ProviderHealth]:
        """Return the latest result of each provider checked in this process, by name."""
        return dict(self._latest)

    def reset(self) -> None:
        """Forget every result, and when the history was last pruned."""
        self._latest.clear()
        self._pruned_at = None
        self._fed_rows.clear()
        self.checking = None

    async def check_all(
        self,
        *,
        timeout: float,
        names: Iterable[str] | None = None,
        record: bool = True,
        min_gap: float | None = None,
    ) -> dict[str, ProviderHealth]:
        """Check providers now, concurrently; return each one's health by name.

        NAMES limits the round (default: every configured or live provider);
        a name that is neither is left out. A live provider gets TIMEOUT
        seconds; a configured one that is not live is reported unavailable
        with the reason, without a check. With RECORD, write a row per
        enabled configured provider (MIN_GAP: see ``health_check_rows_record``).
        """
        configs_query = ProviderConfig.objects.all()
        wanted: set[str] | None = None
        if names is not None:
            wanted = set(names)
            configs_query = configs_query.filter(name__in=wanted)
        configs = {row.name: row async for row in configs_query}
        live_names = set(self.registry.names())
        if wanted is None:
            wanted = set(configs) | live_names
        live = sorted(wanted & live_names)
        statuses = await asyncio.gather(
            *(self.registry.health_check(name, timeout=timeout) for name in live)
        )
        results: dict[str, ProviderHealth] = {}
        for name, status in zip(live, statuses, strict=True):
            results[name] = health_from_status(name, status, configs.get(name))
            self._feed_breaker(name, results[name])
        for name in wanted - set(live):
            if name in configs:
                results[name] = health_not_serving(configs[name], checked_at=timezone.now())
        results = dict(sorted(results.items()))
        self._latest.update(results)
        if record:
            rows = [
                _row(configs[name], health)
                for name, health in results.items()
                if name in configs and configs[name].enabled
            ]
            await sync_to_async(health_check_rows_record)(rows=rows, min_gap=min_gap)
        await self.prune_if_due()
        return results

    async def read_shared(self) -> dict[str, ProviderHealth]:
        """Take the checking worker's results as this process's latest; return them by name.

        Each enabled configured provider's newest ``HealthCheck`` row becomes
        its health; one without a row, or disabled, that this process does
        not serve is reported not serving. A row not seen before feeds the breaker of
        a provider served here, as this worker's own check would have.
        """
        configs = {row.pk: row async for row in ProviderConfig.objects.all()}
        newest = HealthCheck.objects.filter(provider_id__in=list(configs)).order_by(
            "provider_id", "-checked_at"
        )
        if connection.vendor == "postgresql":
            newest = newest.distinct("provider_id")
        rows: dict[int, HealthCheck] = {}
        async for row in newest:
            rows.setdefault(row.provider_id, row)
        live = set(self.registry.names())
        results: dict[str, ProviderHealth] = {}
        for pk, config in configs.items():
            row = rows.get(pk)
            if row is None or not config.enabled:
                # A disabled provider has no rows from now on: its last one would mislead.
                if config.name not in live:
                    results[config.name] = health_not_serving(config, checked_at=None)
                continue
            results[config.name] = health = _health_from_row(config, row)
            if config.name in live and self._fed_rows.get(config.name) != row.checked_at:
                self._fed_rows[config.name] = row.checked_at
                self._feed_breaker(config.name, health)
        results = dict(sorted(results.items()))
        self._latest.update(results)
        return results

    def _feed_breaker(self, name: str, health: ProviderHealth) -> None:
        """Count a failed check against NAME's breaker; let a good one close it (a free probe)."""
        breaker = self.manager.breaker(name)
        if not health.available:
            breaker.record_failure(f"Health check failed: {health.error or 'unavailable'}")
        elif breaker.state != CLOSED:
            breaker.record_success()

    async def prune_if_due(self) -> int:
        """Delete rows past the retention, unless this process did within the hour; return how many."""
        days = settings.ECHO_HEALTH_RETENTION_DAYS
        now = self._clock()
        if not days or (
            self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_SECONDS
        ):
            return 0
        self._pruned_at = now
        cutoff = timezone.now() - dt.timedelta(days=days)
        deleted = await sync_to_async(health_check_rows_prune)(older_than=cutoff)
        if deleted:
            logger.info("deleted %s health checks older than %s days", deleted, days)
        return deleted

    async def run_forever(self, *, interval: float, timeout: float) -> None:
        """Run a check round every INTERVAL seconds until cancelled.

        The first round starts at once. A round that fails (the database is
        away, say) is logged, and the next one comes on time.
        """
        loop = asyncio.get_running_loop()
        lease = self._lease or round_lease()
        try:
            while True:
                started = loop.time()
                try:
                    self.checking = await lease.claim()
                    if self.checking:
                        await self.check_all(timeout=timeout, min_gap=interval / 2)
                    else:
                        await self.read_shared()
                except Exception:
                    logger.exception("health check round failed; the next starts in %gs", interval)
                try:
                    await sync_to_async(release_connections)()
                except Exception:
                    logger.exception("could not release the health monitor's database connections")
                await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
        finally:
            await lease.release()


def _health_from_row(config: ProviderConfig, row: HealthCheck) -> ProviderHealth:
    # The row's error was redacted when it was written; the last error is read now.
    last_error = provider_last_error(config)
    if last_error:
        last_error = redact(last_error, provider_secret_values(name=config.name, config=config))
    return ProviderHealth(
        name=config.name,
        available=row.available,
        models=list(row.models),
        response_time_ms=row.response_time_ms,
        error=row.error or None,
        last_error=last_error or None,
        checked_at=row.checked_at,
    )


def _row(config: ProviderConfig, health: ProviderHealth) -> HealthCheck:
    # Redacted where every stored row is made, whichever path built HEALTH (a
    # check, or why the provider is not serving): a row is kept for days.
    error = redact(health.error or "", provider_secret_values(name=config.name, config=config))
    return HealthCheck(
        provider=config,
        available=bool(health.available),
        response_time_ms=health.response_time_ms,
        models=list(health.models),
        error=error,
        checked_at=health.checked_at or timezone.now(),
    )
