"""HealthMonitor: check rounds, their rows and pruning, the breakers they feed, the background task.

The monitor's ORM calls are async; sync tests drive it through
``async_to_sync``, which runs those calls back on the test's thread, inside
its transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from providers.base import AbstractAIProvider, PluginMetadata
from providers.config.services import provider_config_create
from providers.health.monitor import (
    RECORD_LOCK_KEY,
    HealthMonitor,
    ProcessRoundLease,
    health_check_rows_record,
)
from providers.models import HealthCheck, ProviderConfig
from providers.runtime import process as runtime
from providers.runtime.manager import ModelManager
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatRequest, ChatResponse, HealthStatus


class SwitchProvider(AbstractAIProvider):
    """A provider whose health its settings decide: ``healthy`` and a ``delay`` in seconds."""

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(name="Switch", version="0.1")

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "healthy": {"type": "boolean", "default": True},
                "delay": {"type": "number", "minimum": 0, "default": 0},
            },
        }

    async def initialize(self) -> None:
        pass

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="ok", model="switch-1", provider=self.name)

    async def health_check(self) -> HealthStatus:
        await asyncio.sleep(self.config["delay"])
        if not self.config["healthy"]:
            return HealthStatus(available=False, error="the upstream answered 503")
        return HealthStatus(available=True, models=["switch-1", "switch-2"])

    async def list_models(self) -> list[str]:
        return ["switch-1", "switch-2"]


def load(name: str) -> None:
    """Bring provider NAME live from its row, as a serving worker does."""
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, name) is None


def set_health(name: str, **settings: Any) -> None:
    ProviderConfig.objects.filter(name=name).update(settings=settings)
    load(name)


def check(health_monitor: HealthMonitor, **options: Any) -> dict[str, Any]:
    return async_to_sync(health_monitor.check_all)(**{"timeout": 2.0, **options})


@pytest.fixture
def switch(db) -> ProviderConfig:
    """A live provider of the switch plugin, healthy."""
    runtime.registry.register(SwitchProvider, "switch")
    config = provider_config_create(name="switch", plugin="switch")
    load("switch")
    return config


@pytest.fixture
def fresh_monitor() -> HealthMonitor:
    """A monitor of the process registry, with a manager (and breakers) of its own."""
    return HealthMonitor(runtime.registry, ModelManager(runtime.registry))


# --- rows and pruning -----------------------------------------------------------


def test_a_round_records_each_enabled_provider_and_prunes_old_rows(
    fresh_monitor, switch, echo_config, settings
):
    settings.ECHO_HEALTH_RETENTION_DAYS = 7
    load("echo")
    off = provider_config_create(name="off", plugin="echo", enabled=False)
    now = timezone.now()
    old = HealthCheck.objects.create(
        provider=switch, available=True, checked_at=now - dt.timedelta(days=8)
    )
    kept = HealthCheck.objects.create(
        provider=switch, available=True, checked_at=now - dt.timedelta(days=6)
    )

    results = check(fresh_monitor)

    assert sorted(results) == ["echo", "off", "switch"]
    assert results["switch"].available is True
    assert results["switch"].models == ["switch-1", "switch-2"]
    assert results["off"].available is False and results["off"].error == "Disabled."
    assert not HealthCheck.objects.filter(pk=old.pk).exists()
    assert HealthCheck.objects.filter(pk=kept.pk).exists()
    new = HealthCheck.objects.filter(checked_at__gte=now)
    assert sorted(new.values_list("provider__name", flat=True)) == ["echo", "switch"]
    assert not HealthCheck.objects.filter(provider=off).exists()  # down on purpose: no outage
    assert fresh_monitor.latest()["switch"].checked_at >= now

    # Pruning is at most hourly: a second round leaves the next old row for later.
    older = HealthCheck.objects.create(
        provider=switch, available=True, checked_at=now - dt.timedelta(days=30)
    )
    check(fresh_monitor)
    assert HealthCheck.objects.filter(pk=older.pk).exists()


def test_a_retention_of_zero_keeps_every_row(fresh_monitor, switch, settings):
    settings.ECHO_HEALTH_RETENTION_DAYS = 0
    ancient = HealthCheck.objects.create(
        provider=switch, available=True, checked_at=timezone.now() - dt.timedelta(days=400)
    )
    check(fresh_monitor)
    assert HealthCheck.objects.filter(pk=ancient.pk).exists()


def test_periodic_rounds_of_several_workers_record_a_provider_once_per_gap(switch):
    workers = [HealthMonitor(runtime.registry, ModelManager(runtime.registry)) for _ in range(3)]
    for worker in workers:
        check(worker, min_gap=30)
    assert HealthCheck.objects.filter(provider=switch).count() == 1
    # Every worker still knows the result of its own check.
    assert all(worker.latest()["switch"].available for worker in workers)
    # A check someone asked for is always recorded.
    check(workers[0])
    assert HealthCheck.objects.filter(provider=switch).count() == 2


def waiting_for_the_record_lock() -> int:
    """Return how many connections wait for the periodic recorders' advisory lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid::bigint = %s",
            [RECORD_LOCK_KEY],
        )
        return cursor.fetchone()[0]


def test_two_workers_recording_at_once_take_turns_on_postgresql(transactional_db):
    """Two workers' periodic recorders, in two connections at the same moment, write one row.

    The first writes its row and keeps its transaction open; the second must
    wait for it (on ``pg_advisory_xact_lock``), then find that row and write
    none. Without the lock it would find no committed row and write a second.
    """
    config = provider_config_create(name="echo", plugin="echo")
    first_wrote, finish_first = threading.Event(), threading.Event()

    def record() -> list[HealthCheck]:
        row = HealthCheck(provider=config, available=True, checked_at=timezone.now())
        return health_check_rows_record(rows=[row], min_gap=30)

    def first_worker() -> list[HealthCheck]:
        try:
            with transaction.atomic():  # the lock is held until this commits
                saved = record()
                first_wrote.set()
                finish_first.wait(10)
            return saved
        finally:
            connection.close()

    def second_worker() -> list[HealthCheck]:
        try:
            return record()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            first = pool.submit(first_worker)
            assert first_wrote.wait(10)
            second = pool.submit(second_worker)
            assert wait_for(lambda: waiting_for_the_record_lock() == 1, timeout=5), (
                "the second recorder did not wait for the first"
            )
            assert not second.done()
        finally:
            finish_first.set()
        assert len(first.result(timeout=10)) == 1
        assert second.result(timeout=10) == []
    assert HealthCheck.objects.filter(provider=config).count() == 1


def test_a_slow_provider_times_out_without_holding_up_the_others(fresh_monitor, switch):
    provider_config_create(name="stuck", plugin="switch", settings={"delay": 5})
    load("stuck")
    started = time.monotonic()
    results = check(fresh_monitor, timeout=0.2)
    assert time.monotonic() - started < 2
    assert results["switch"].available is True
    assert results["stuck"].available is False
    assert "timed out" in results["stuck"].error


def test_health_checks_never_spend_tokens(fresh_monitor, db):
    with FakeOpenAI() as fake:
        provider_config_create(
            name="openai",
            plugin="openai",
            settings={"base_url": fake.base_url},
            secrets={"api_key": "sk-fake-health-0000000000"},
        )
        load("openai")
        results = check(fresh_monitor)
        runtime.run_in_serving_loop(runtime.registry.shutdown_all)
    assert results["openai"].available is True
    assert "gpt-4o-mini" in results["openai"].models
    assert fake.usage.completions == 0
    assert fake.usage.prompt_tokens == 0 and fake.usage.completion_tokens == 0
    assert fake.requests_to("/v1/models")
    assert not fake.requests_to("/v1/chat/completions")


# --- the breaker ------------------------------------------------------------------


def test_failed_checks_open_the_breaker_and_a_good_one_closes_it(fresh_monitor, switch):
    breaker = fresh_monitor.manager.breaker("switch")
    set_health("switch", healthy=False)

    check(fresh_monitor)
    assert breaker.consecutive_failures == 1
    assert "the upstream answered 503" in breaker.last_failure
    for _ in range(20):  # up to the threshold, whatever the provider's settings make it
        if breaker.state == "open":
            break
        check(fresh_monitor)
    assert breaker.state == "open"

    set_health("switch", healthy=True)
    check(fresh_monitor)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0


def test_a_good_check_leaves_a_closed_breakers_failures_counted(fresh_monitor, switch):
    """Requests may fail where the cheap check does not: a good check must not hide that."""
    breaker = fresh_monitor.manager.breaker("switch")
    breaker.record_failure("a chat request failed")
    check(fresh_monitor)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 1


def test_a_provider_that_is_not_live_feeds_no_breaker(fresh_monitor, db):
    provider_config_create(name="ghost", plugin="echo")  # configured, never loaded
    results = check(fresh_monitor)
    assert results["ghost"].available is False
    assert fresh_monitor.manager.breaker("ghost").consecutive_failures == 0
    assert HealthCheck.objects.get(provider__name="ghost").error == "Not loaded."


# --- the loop and the background task -------------------------------------------


async def test_run_forever_survives_a_failing_round(monkeypatch, caplog):
    rounds: list[float] = []

    async def flaky_round(**options: Any) -> dict[str, Any]:
        rounds.append(options["min_gap"])
        if len(rounds) == 1:
            raise OperationalError("the database went away")
        return {}

    worker = HealthMonitor(
        runtime.registry, ModelManager(runtime.registry), lease=ProcessRoundLease()
    )
    monkeypatch.setattr(worker, "check_all", flaky_round)
    monkeypatch.setattr("providers.health.monitor.release_connections", lambda: None)
    task = asyncio.create_task(worker.run_forever(interval=0.05, timeout=1))
    for _ in range(100):
        if len(rounds) >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(rounds) >= 3
    assert rounds[0] == pytest.approx(0.025)  # periodic rounds record once per half interval
    assert "health check round failed" in caplog.text


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def monitor_runs(monkeypatch) -> list[threading.Event]:
    """The background check loops started from now on: one event each, set when it ends."""
    runs: list[threading.Event] = []
    run_forever = HealthMonitor.run_forever

    async def recorded(self: HealthMonitor, **options: Any) -> None:
        runs.append(ended := threading.Event())
        try:
            await run_forever(self, **options)
        finally:
            ended.set()

    monkeypatch.setattr(HealthMonitor, "run_forever", recorded)
    return runs


@pytest.fixture
def fast_health_checks(settings) -> None:
    """Check every 0.2 s in the live server started after this fixture."""
    settings.ECHO_HEALTH_INTERVAL_SECONDS = 0.2
    settings.ECHO_HEALTH_TIMEOUT_SECONDS = 1


@pytest.mark.slow
def test_the_background_checks_start_with_the_asgi_app(
    fast_health_checks, monitor_runs, echo_config, admin_key, live_echo
):
    def echo_rows() -> int:
        return HealthCheck.objects.filter(provider__name="echo").count()

    assert wait_for(lambda: echo_rows() >= 3), "the background checks wrote no rows"
    auth = {"Authorization": f"Bearer {admin_key[1]}"}
    body = httpx.get(f"{live_echo.url}/plugins/health", headers=auth, timeout=10).json()
    assert body["echo"]["available"] is True
    assert body["echo"]["checked_at"] is not None
    assert body["echo"]["breaker"]["state"] == "closed"

    live_echo.stop()
    # The task ended with the server (no row can follow), not merely went quiet.
    assert [run.is_set() for run in monitor_runs] == [True]


@pytest.mark.slow
def test_a_server_restarted_in_the_same_process_checks_again(
    fast_health_checks, echo_config, transactional_db
):
    from tests.conftest import LiveEcho

    for _ in range(2):
        before = HealthCheck.objects.count()
        server = LiveEcho().start()
        try:
            assert wait_for(lambda before=before: HealthCheck.objects.count() > before + 1)
        finally:
            server.stop()


@pytest.fixture
def no_health_checks(settings) -> None:
    """Turn the background checks off in the live server started after this fixture."""
    settings.ECHO_HEALTH_INTERVAL_SECONDS = 0


@pytest.mark.slow
def test_no_background_checks_when_the_interval_is_zero(
    no_health_checks, monitor_runs, echo_config, live_echo
):
    # The server has started: its lifespan start-up, which would start the task, is over.
    assert monitor_runs == []
    assert HealthCheck.objects.count() == 0
