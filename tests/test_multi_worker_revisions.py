"""Three real workers on PostgreSQL and Redis serve exactly the database's revision.

Each worker is a uvicorn process of its own. Saves race through all three
at once; a worker that never hears the broadcast, and rows changed by SQL
behind every worker's back, converge through the repair pass. What a worker
serves is read from ``GET /plugins/{name}/status`` (``revision.serving``)
and, end to end, from what its echo provider answers.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.migrated_databases import migrated_postgres_database
from tests.server_processes import django_shell, start_uvicorn, stop_all
from tests.services import require_redis

# Slow: daphne workers in processes of their own, on PostgreSQL and Redis.
pytestmark = pytest.mark.slow

ROUNDS = 50
CONVERGE_SECONDS = 2.0


@dataclass
class Worker:
    url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client

    def status(self) -> dict:
        response = self.client.get(f"{self.url}/plugins/echo/status")
        assert response.status_code == 200, response.text
        return response.json()

    def served_revision(self) -> int | None:
        return self.status()["revision"]["serving"]

    def answer(self) -> str:
        response = self.client.post(f"{self.url}/chat", json={"prompt": "hi", "provider": "echo"})
        assert response.status_code == 200, response.text
        return response.json()["content"]

    def put_prefix(self, value: str) -> httpx.Response:
        return self.client.put(f"{self.url}/plugins/echo/config", json={"prefix": value})


@dataclass
class Deployment:
    env: dict[str, str]
    database_url: str
    key: str

    def row(self) -> tuple[int, str]:
        """Return the database's (revision, prefix) of the echo provider."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            revision, settings = conn.execute(
                "SELECT revision, settings FROM providers_providerconfig WHERE name = 'echo'"
            ).fetchone()
        return revision, settings["prefix"]

    def sql(self, statement: str, *params: object) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(statement, params)

    @contextmanager
    def workers(self, prefixes: list[str]) -> Iterator[list[Worker]]:
        """Start one uvicorn worker per channel prefix in PREFIXES; stop them afterwards."""
        workers: list[Worker] = []
        try:
            for prefix in prefixes:
                port, process = start_uvicorn({**self.env, "ECHO_CHANNEL_PREFIX": prefix})
                client = httpx.Client(headers={"Authorization": f"Bearer {self.key}"}, timeout=10)
                workers.append(Worker(f"http://127.0.0.1:{port}", process, client))
            deadline = time.monotonic() + 30
            for worker in workers:
                while True:
                    assert worker.process.poll() is None, worker.process.stderr.read().decode()
                    assert time.monotonic() < deadline, "a worker did not start"
                    try:
                        if worker.served_revision() is not None:
                            break
                    except (httpx.HTTPError, AssertionError):
                        pass
                    time.sleep(0.05)
            yield workers
        finally:
            for worker in workers:
                worker.client.close()
            stop_all([worker.process for worker in workers])


def deployment(tmp_path: Path, *, repair_seconds: int) -> Iterator[Deployment]:
    redis_url = require_redis()
    with migrated_postgres_database() as database_url:
        env = {
            **os.environ,
            "ECHO_ENV": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ECHO_CHANNEL_PREFIX": f"echo-rev-{uuid.uuid4().hex[:8]}",
            "ECHO_CACHE_PREFIX": f"echo-rev-{uuid.uuid4().hex[:8]}",
            "ECHO_CONFIG_REPAIR_SECONDS": str(repair_seconds),
            "ECHO_VAR_DIR": str(tmp_path),
            "SECRET_KEY": "multi-worker-revisions",
        }
        key = (
            django_shell(
                env,
                "from providers.config.services import provider_config_create as c;"
                "c(name='echo', plugin='echo', settings={'prefix': 'start: '}, is_default=True);"
                "from plugins_api.access.key_changes import client_key_issue as k;"
                "print(k(name='mw', scope='admin')[1])",
            )
            .strip()
            .splitlines()[-1]
        )
        yield Deployment(env, database_url, key)


def converged(workers: list[Worker], deploy: Deployment, timeout: float = CONVERGE_SECONDS) -> None:
    """Assert every worker serves the database's revision and content within TIMEOUT."""
    deadline = time.monotonic() + timeout
    revision, prefix = deploy.row()
    pending = list(workers)
    while pending:
        pending = [w for w in pending if w.served_revision() != revision]
        if pending:
            assert time.monotonic() < deadline, (
                f"database at revision {revision}; still serving "
                f"{[w.status()['revision'] for w in pending]}"
            )
            time.sleep(0.02)
    for worker in workers:
        assert worker.answer() == f"{prefix}hi", worker.url


def save_at_once(
    start: threading.Barrier, worker: Worker, value: str, responses: list[httpx.Response]
) -> None:
    """Save VALUE through WORKER as soon as every other saver is ready too."""
    start.wait()
    responses.append(worker.put_prefix(value))


@pytest.fixture
def slow_repair(tmp_path) -> Iterator[Deployment]:
    # A repair pass that never comes within a round: messages alone must converge.
    yield from deployment(tmp_path, repair_seconds=3600)


@pytest.fixture
def fast_repair(tmp_path) -> Iterator[Deployment]:
    yield from deployment(tmp_path, repair_seconds=1)


def test_concurrent_saves_through_three_workers_leave_every_worker_on_the_database_revision(
    slow_repair,
) -> None:
    deploy = slow_repair
    with deploy.workers([deploy.env["ECHO_CHANNEL_PREFIX"]] * 3) as workers:
        converged(workers, deploy)
        for round_number in range(ROUNDS):
            start = threading.Barrier(len(workers))
            responses: list[httpx.Response] = []
            threads = [
                threading.Thread(
                    target=save_at_once,
                    args=(start, worker, f"round {round_number} w{i}: ", responses),
                )
                for i, worker in enumerate(workers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert [r.status_code for r in responses] == [200] * len(workers), [
                r.text for r in responses
            ]
            converged(workers, deploy)
        revision, _ = deploy.row()
        assert revision == 1 + ROUNDS * len(workers)


def test_a_worker_cut_off_the_broadcast_and_sql_changes_converge_by_repair(fast_repair) -> None:
    deploy = fast_repair
    shared = deploy.env["ECHO_CHANNEL_PREFIX"]
    # The third worker listens on a channel no one publishes to: it never gets a message.
    with deploy.workers([shared, shared, f"{shared}-cut"]) as workers:
        converged(workers, deploy)

        assert workers[0].put_prefix("saved: ").status_code == 200
        converged(workers, deploy, timeout=2.5)

        deploy.sql(
            "UPDATE providers_providerconfig SET settings = %s, revision = revision + 1"
            " WHERE name = 'echo'",
            Jsonb({"prefix": "by sql: "}),
        )
        converged(workers, deploy, timeout=2.5)

        # A restore from a backup: an older revision, older content.
        deploy.sql(
            "UPDATE providers_providerconfig SET settings = %s, revision = 2 WHERE name = 'echo'",
            Jsonb({"prefix": "restored: "}),
        )
        converged(workers, deploy, timeout=2.5)
