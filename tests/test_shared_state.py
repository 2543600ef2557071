"""Shared state across workers: one health checker (a PostgreSQL lease), breakers shared through Redis.

The fast tests drive the pieces in one process: breakers' transitions, the
news a worker applies, two ``SharedBreakers`` on the real Redis (each test
its own prefix), the round lease on the test database, a follower's view of
the checker's rows. The slow ones start three uvicorn workers on a scratch
PostgreSQL database and Redis, as ``test_multi_worker_revisions`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from asgiref.sync import async_to_sync
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from providers.errors import ProviderNotFoundError
from providers.health.monitor import HealthMonitor, PostgresRoundLease
from providers.models import HealthCheck, ProviderConfig
from providers.runtime import process as runtime
from providers.runtime.circuit_breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from providers.runtime.manager import ModelManager
from providers.runtime.shared_breakers import SharedBreakers
from providers.testing.fake_openai import FakeOpenAI
from providers.testing.fake_server import Fault
from providers.usage import metrics
from tests.migrated_databases import migrated_postgres_database
from tests.server_processes import django_shell, free_port, start_uvicorn, stop_all
from tests.services import require_redis


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- a breaker's transitions ----------------------------------------------------


def test_a_breaker_reports_opening_and_closing_once_and_peer_news_reports_nothing() -> None:
    clock = Clock()
    heard: list[str] = []
    breaker = CircuitBreaker(
        failure_threshold=2, cooldown_seconds=10, clock=clock, on_transition=heard.append
    )
    breaker.record_failure("one")
    assert heard == []
    breaker.record_failure("two")
    breaker.record_failure("three")  # already open: the cooldown moves, no news
    assert (breaker.state, heard) == (OPEN, [OPEN])
    clock.now += 10
    assert breaker.state == HALF_OPEN and breaker.allow()
    breaker.record_failure("the probe failed")
    assert heard == [OPEN, OPEN]
    breaker.record_success()
    breaker.record_success()  # already closed: no news
    assert (breaker.state, heard) == (CLOSED, [OPEN, OPEN, CLOSED])

    breaker.open_from_peer(remaining=4, reason="peer saw 503")
    assert breaker.state == OPEN and breaker.retry_in() == pytest.approx(4)
    assert breaker.last_failure == "peer saw 503" and not breaker.allow()
    breaker.close_from_peer()
    assert breaker.state == CLOSED and breaker.consecutive_failures == 0
    assert heard == [OPEN, OPEN, CLOSED]


def test_peer_news_never_opens_for_longer_than_the_own_cooldown() -> None:
    breaker = CircuitBreaker(cooldown_seconds=5, clock=Clock())
    breaker.open_from_peer(remaining=3600)
    assert breaker.retry_in() == pytest.approx(5)


# --- the news a worker applies --------------------------------------------------


class Names:
    """A registry that serves NAMES (enough for a manager's breakers)."""

    def __init__(self, *names: str) -> None:
        self._names = list(names)

    def names(self) -> list[str]:
        return list(self._names)

    def get(self, name: str) -> Any:
        raise ProviderNotFoundError(name)


def worker(*, url: str = "redis://127.0.0.1:1/0", prefix: str = "echo", **options: Any):
    manager = ModelManager(Names("up"))  # type: ignore[arg-type]
    return manager, SharedBreakers(manager, url=url, prefix=prefix, **options)


def news(**fields: Any) -> str:
    return json.dumps({"origin": "another", "name": "up", **fields})


def test_news_from_another_worker_opens_and_closes_the_breaker() -> None:
    wall = Clock()
    manager, shared = worker(clock=wall)
    assert shared.apply(news(state=OPEN, until=wall.now + 7, reason="boom")) is True
    breaker = manager.breaker("up")
    assert breaker.state == OPEN and breaker.retry_in() == pytest.approx(7, abs=0.1)
    assert breaker.last_failure == "boom"
    assert shared.apply(news(state=CLOSED)) is True
    assert breaker.state == CLOSED


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        json.dumps({"name": "up", "state": OPEN}),  # no origin
        news(state=OPEN, until=999.0),  # over already
        news(state=OPEN),  # no end
        news(state=OPEN, until="soon"),
        news(state="melted", until=2000.0),
        news(name="unknown", state=OPEN, until=2000.0),  # not served here
        news(name=["up"], state=OPEN, until=2000.0),
        news(state=OPEN, until=2000.0, reason="x" * 10_000),  # too big
    ],
)
def test_bad_stale_or_foreign_news_changes_nothing(raw: str) -> None:
    manager, shared = worker(clock=Clock())
    assert shared.apply(raw) is False
    assert manager.breaker("up").state == CLOSED


def test_a_worker_ignores_its_own_news() -> None:
    wall = Clock()
    manager, shared = worker(clock=wall)
    own = json.dumps({"origin": shared.origin, "name": "up", "state": OPEN, "until": 2000.0})
    assert shared.apply(own) is False
    assert manager.breaker("up").state == CLOSED


async def test_without_redis_the_breakers_work_for_their_own_worker() -> None:
    # Port 1: nothing listens; every connection attempt fails at once.
    manager, shared = worker(reconnect_seconds=0.01)
    task = asyncio.create_task(shared.run())
    try:
        await asyncio.sleep(0.05)
        assert manager.shared_breakers is shared and not shared.connected
        breaker = manager.breaker("up")
        for _ in range(breaker.failure_threshold):
            breaker.record_failure("down")  # publishes: must neither block nor raise
        assert breaker.state == OPEN and not breaker.allow()
        breaker.record_success()
        assert breaker.state == CLOSED
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert manager.shared_breakers is None


# --- two workers on the real Redis ----------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@pytest.fixture
def redis_prefix() -> Iterator[tuple[str, str]]:
    url = require_redis()
    prefix = f"echo-test-breakers-{uuid.uuid4().hex[:8]}"
    yield url, prefix
    client = redis.Redis.from_url(url)
    client.delete(f"{prefix}:breakers:open")  # only this test's key
    client.close()


async def test_a_breaker_opened_in_one_worker_opens_in_the_other_and_a_late_one_learns_it(
    redis_prefix,
) -> None:
    url, prefix = redis_prefix
    (one, one_shared), (two, two_shared) = (worker(url=url, prefix=prefix) for _ in range(2))
    tasks = [asyncio.create_task(s.run()) for s in (one_shared, two_shared)]
    late_task: asyncio.Task[None] | None = None
    try:
        assert await wait_until(lambda: one_shared.connected and two_shared.connected)
        breaker = one.breaker("up")
        for _ in range(breaker.failure_threshold):
            breaker.record_failure("upstream 503")
        assert await wait_until(lambda: two.breaker("up").state == OPEN), "the news never came"
        assert two.breaker("up").retry_in() == pytest.approx(breaker.retry_in(), abs=1)
        assert two.breaker("up").last_failure == "upstream 503"

        # A worker that starts now reads the open breakers when it connects.
        late, late_shared = worker(url=url, prefix=prefix)
        late_task = asyncio.create_task(late_shared.run())
        assert await wait_until(lambda: late.breaker("up").state == OPEN)

        two.breaker("up").record_success()  # the other worker's probe succeeded
        assert await wait_until(lambda: breaker.state == CLOSED)
        assert await wait_until(lambda: late.breaker("up").state == CLOSED)
        client = redis.asyncio.from_url(url)
        assert await client.hgetall(f"{prefix}:breakers:open") == {}
        await client.aclose()
    finally:
        for task in [*tasks, late_task]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [*tasks, late_task] if t), return_exceptions=True)


@contextmanager
def own_redis() -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A redis-server of this test's own on a free port: (url, start, stop)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        process.append(
            subprocess.Popen(
                [server, "--port", str(port), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def stop() -> None:
        proc = process.pop()
        proc.kill()
        proc.wait(timeout=10)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", start, stop
    finally:
        while process:
            stop()


@pytest.mark.slow
async def test_news_made_while_redis_is_down_is_sent_when_it_returns() -> None:
    with own_redis() as (url, start, stop):
        (one, one_shared), (two, two_shared) = (
            worker(url=url, reconnect_seconds=0.05) for _ in range(2)
        )
        tasks = [asyncio.create_task(s.run()) for s in (one_shared, two_shared)]
        try:
            assert await wait_until(lambda: one_shared.connected and two_shared.connected)
            await asyncio.to_thread(stop)
            breaker = one.breaker("up")
            for _ in range(breaker.failure_threshold):
                breaker.record_failure("upstream 503")
            assert breaker.state == OPEN  # this worker is protected at once
            await asyncio.sleep(0.2)
            assert two.breaker("up").state == CLOSED
            await asyncio.to_thread(start)
            assert await wait_until(lambda: two.breaker("up").state == OPEN, timeout=5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# --- the round lease and a follower's view --------------------------------------


@pytest.mark.django_db
async def test_one_lease_holder_at_a_time_and_the_next_takes_over() -> None:
    key = random.randrange(1, 2**31)  # this test's own lock
    first, second = PostgresRoundLease(key=key), PostgresRoundLease(key=key)
    try:
        assert await first.claim() is True
        assert await second.claim() is False
        assert await first.claim() is True  # kept, round after round
        assert await second.claim() is False
        await first.release()
        assert await second.claim() is True
        assert await first.claim() is False
    finally:
        await first.release()
        await second.release()


async def test_a_lease_that_cannot_connect_lets_the_worker_check_by_itself(monkeypatch) -> None:
    monkeypatch.setattr(
        "providers.health.monitor._lease_connection_params",
        lambda: {"host": "127.0.0.1", "port": 1, "dbname": "nowhere"},
    )
    lease = PostgresRoundLease(connect_timeout=1)
    assert await lease.claim() is True
    assert lease.held is False


class NeverHeld:
    async def claim(self) -> bool:
        return False

    async def release(self) -> None:
        pass


@pytest.mark.django_db
def test_a_follower_shows_the_checkers_rows_and_feeds_its_breakers_once(echo_config) -> None:
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "echo") is None
    ProviderConfig.objects.create(name="off", plugin="echo", enabled=False)
    follower = HealthMonitor(runtime.registry, ModelManager(runtime.registry), lease=NeverHeld())
    assert async_to_sync(follower.read_shared)() == {
        "off": follower.latest()["off"]
    }  # echo has no row yet; off is not served
    assert follower.latest()["off"].available is False

    now = timezone.now()
    HealthCheck.objects.create(provider=echo_config, available=True, checked_at=now)
    HealthCheck.objects.create(
        provider=echo_config, available=False, error="upstream 503", checked_at=now
    )
    HealthCheck.objects.filter(available=True).update(
        checked_at=now - timezone.timedelta(seconds=5)
    )
    shared = async_to_sync(follower.read_shared)()
    assert shared["echo"].available is False and shared["echo"].error == "upstream 503"
    assert follower.latest()["echo"].checked_at == now
    breaker = follower.manager.breaker("echo")
    assert breaker.consecutive_failures == 1
    async_to_sync(follower.read_shared)()  # the same row again: not a new failure
    assert breaker.consecutive_failures == 1

    async def one_round() -> None:
        task = asyncio.create_task(follower.run_forever(interval=60, timeout=1))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    before = HealthCheck.objects.count()
    async_to_sync(one_round)()
    assert follower.checking is False
    assert HealthCheck.objects.count() == before  # a follower checks (and records) nothing


# --- metrics ----------------------------------------------------------------------


def test_every_exposed_series_carries_the_worker_label(monkeypatch) -> None:
    monkeypatch.setenv("ECHO_WORKER_ID", "web-2")
    metrics.USAGE_ROWS_DROPPED.labels(reason="refused").inc(0)
    text = metrics.exposition().decode()
    families = list(text_string_to_metric_families(text))
    assert families, text
    for family in families:
        for sample in family.samples:
            assert sample.labels.get("worker") == "web-2", sample
    # The series themselves keep their own labels (for code that reads them).
    assert (
        metrics.REGISTRY.get_sample_value("echo_usage_rows_dropped_total", {"reason": "refused"})
        is not None
    )


def test_the_worker_label_defaults_to_the_pid_and_refuses_a_bad_id(monkeypatch) -> None:
    monkeypatch.delenv("ECHO_WORKER_ID", raising=False)
    assert metrics.worker_id() == str(os.getpid())
    from django.core.exceptions import ImproperlyConfigured

    for bad in ("x" * 65, "two words", ""):
        monkeypatch.setenv("ECHO_WORKER_ID", bad)
        with pytest.raises(ImproperlyConfigured, match="ECHO_WORKER_ID"):
            metrics.worker_id()


# --- three workers ----------------------------------------------------------------


class Workers:
    """Three uvicorn workers of one deployment, with an admin key."""

    def __init__(self, env: dict[str, str], key: str) -> None:
        self.env = env
        self.key = key
        self.urls: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.client = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10)

    def start(self, count: int) -> None:
        for _ in range(count):
            port, process = start_uvicorn(self.env)
            self.processes.append(process)
            self.urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        for url, process in zip(self.urls, self.processes, strict=True):
            while True:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "a worker did not start"
                try:
                    if self.client.get(f"{url}/plugins/up/status").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)

    def breaker(self, url: str) -> dict[str, Any]:
        """Return provider up's breaker in the worker at URL (``/plugins/health`` checks nothing)."""
        response = self.client.get(f"{url}/plugins/health")
        assert response.status_code == 200, response.text
        return response.json()["up"]["breaker"]

    def chat(self, url: str) -> httpx.Response:
        return self.client.post(f"{url}/chat", json={"prompt": "hi", "provider": "up"})

    def stop(self) -> None:
        self.client.close()
        stop_all(self.processes)


@contextmanager
def three_workers(tmp_path: Path, **env: str) -> Iterator[tuple[Workers, FakeOpenAI, str]]:
    """Three workers serving provider ``up`` (a fake OpenAI) on a scratch database and Redis."""
    redis_url = require_redis()
    prefix = f"echo-shared-{uuid.uuid4().hex[:8]}"
    with FakeOpenAI() as fake, migrated_postgres_database() as database_url:
        full_env = {
            **os.environ,
            "ECHO_ENV": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ECHO_CHANNEL_PREFIX": prefix,
            "ECHO_CACHE_PREFIX": prefix,
            "ECHO_VAR_DIR": str(tmp_path),
            "SECRET_KEY": "shared-state",
            **env,
        }
        settings = {
            "base_url": fake.base_url,
            "breaker_failure_threshold": 3,
            "breaker_cooldown_seconds": 60,
            "max_retries": 0,
        }
        key = (
            django_shell(
                full_env,
                "from providers.config.services import provider_config_create as c;"
                f"c(name='up', plugin='openai', settings={settings!r}, secrets={{'api_key': 'sk-test'}},"
                " is_default=True);"
                "from plugins_api.access.key_changes import client_key_issue as k;"
                "print(k(name='shared', scope='admin')[1])",
            )
            .strip()
            .splitlines()[-1]
        )
        workers = Workers(full_env, key)
        try:
            workers.start(3)
            yield workers, fake, database_url
        finally:
            workers.stop()
            redis.Redis.from_url(redis_url).delete(f"{prefix}:breakers:open")


def health_checks_of(fake: FakeOpenAI) -> int:
    return sum(1 for r in list(fake.requests) if r.method == "GET" and r.path.endswith("/models"))


def chats_of(fake: FakeOpenAI) -> int:
    return sum(1 for r in list(fake.requests) if r.path.endswith("/chat/completions"))


@pytest.mark.slow
def test_three_workers_run_one_health_check_per_interval_and_all_show_it(tmp_path) -> None:
    with three_workers(
        tmp_path, ECHO_HEALTH_INTERVAL_SECONDS="1", ECHO_HEALTH_TIMEOUT_SECONDS="2"
    ) as (workers, fake, database_url):
        time.sleep(1.5)  # every worker has had its first round
        checks, started = health_checks_of(fake), time.monotonic()
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows_before = conn.execute("SELECT count(*) FROM providers_healthcheck").fetchone()[0]
        time.sleep(3)
        elapsed = time.monotonic() - started
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute("SELECT count(*) FROM providers_healthcheck").fetchone()[0]
        new_checks = health_checks_of(fake) - checks
        # One checker: about one check (and one row) a second, where three would make ~9.
        assert elapsed - 1.5 <= new_checks <= elapsed + 1.5, new_checks
        assert elapsed - 1.5 <= rows - rows_before <= elapsed + 1.5, rows - rows_before
        # Every worker shows the checker's latest result.
        for url in workers.urls:
            body = workers.client.get(f"{url}/plugins/health").json()
            assert body["up"]["available"] is True, body
            assert body["up"]["checked_at"] is not None

        # The checker stops: another worker takes the rounds over.
        checker_pid = leader_pid(database_url)
        index = [p.pid for p in workers.processes].index(checker_pid)
        workers.processes[index].terminate()
        workers.processes[index].wait(timeout=10)
        time.sleep(1.5)
        checks = health_checks_of(fake)
        time.sleep(2)
        assert 1 <= health_checks_of(fake) - checks <= 4  # one checker again, not two
        assert leader_pid(database_url) in {p.pid for p in workers.processes} - {checker_pid}


def leader_pid(database_url: str) -> int:
    """Return the pid of the worker whose lease connection holds the round lock."""
    from providers.health.monitor import ROUND_LOCK_KEY

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.objid::bigint = %s AND l.granted",
            [ROUND_LOCK_KEY],
        ).fetchone()
    assert row is not None, "no worker holds the round lease"
    return int(row[0].rsplit("-", 1)[1])


@pytest.mark.slow
def test_a_breaker_opened_by_one_workers_failures_stops_traffic_in_the_others(tmp_path) -> None:
    # No health checks: a good check would close the breaker (a free probe).
    with three_workers(tmp_path, ECHO_HEALTH_INTERVAL_SECONDS="0") as (workers, fake, _):
        first, *others = workers.urls
        assert workers.chat(first).status_code == 200
        fake.inject(Fault(status=503, path="/v1/chat/completions", times=1000))
        for _ in range(3):  # the breaker's threshold
            assert workers.chat(first).status_code >= 500
        assert workers.breaker(first)["state"] == "open"
        sent = chats_of(fake)
        deadline = time.monotonic() + 2
        for url in others:
            while True:
                breaker = workers.breaker(url)
                if breaker["state"] == "open":
                    break
                assert time.monotonic() < deadline, f"{url} never heard: {breaker}"
                time.sleep(0.02)
            response = workers.chat(url)
            assert response.status_code == 503, response.text
            assert "circuit breaker open" in response.text
            assert 1 <= int(response.headers["Retry-After"]) <= breaker["cooldown_seconds"] + 1
        assert chats_of(fake) == sent  # the other workers sent the upstream nothing
