"""Hot reload across worker processes: PostgreSQL + the Redis channel layer, for real.

Two daphne workers share a scratch PostgreSQL database and Redis. A change
committed by a third process (as the admin or an import would make it) must
reach both workers with no restart.
"""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest

from tests.migrated_databases import migrated_postgres_database
from tests.server_processes import django_shell, start_daphne, stop_all
from tests.services import require_redis

# Slow: daphne workers in processes of their own, on PostgreSQL and Redis.
pytestmark = pytest.mark.slow


def chat(url: str, key: str) -> str:
    response = httpx.post(
        f"{url}/chat", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["content"]


def wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (httpx.HTTPError, AssertionError):
            pass
        time.sleep(0.1)
    return False


@pytest.fixture
def shared_env(tmp_path):
    redis_url = require_redis()
    with migrated_postgres_database() as database_url:
        env = {
            **os.environ,
            "ECHO_ENV": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ECHO_CHANNEL_PREFIX": f"echo-test-{uuid.uuid4().hex[:8]}",
            "ECHO_VAR_DIR": str(tmp_path),
            "SECRET_KEY": "multi-worker-test",
        }
        yield env


def test_a_change_in_one_process_reloads_every_worker(shared_env) -> None:
    key = (
        django_shell(
            shared_env,
            "from providers.config.services import provider_config_create as c;"
            "c(name='echo', plugin='echo', settings={'prefix': 'Before: '}, is_default=True);"
            "from plugins_api.access.key_changes import client_key_issue as k;"
            "print(k(name='mw', scope='chat')[1])",
        )
        .strip()
        .splitlines()[-1]
    )

    workers = []
    try:
        for _ in range(2):
            port, proc = start_daphne(shared_env)
            workers.append((f"http://127.0.0.1:{port}", proc))
        for url, proc in workers:
            assert wait_until(lambda url=url: chat(url, key) == "Before: hi"), (
                proc.poll(),
                proc.stderr.read1() if proc.poll() is not None else "",
            )

        django_shell(
            shared_env,
            "from providers.models import ProviderConfig as P;"
            "from providers.config.services import provider_config_update as u;"
            "u(config=P.objects.get(name='echo'), changes={'settings': {'prefix': 'After: '}})",
        )
        for url, _ in workers:
            assert wait_until(lambda url=url: chat(url, key) == "After: hi", timeout=10), url

        # Disabling is broadcast too: no worker serves the provider any more.
        django_shell(
            shared_env,
            "from providers.models import ProviderConfig as P;"
            "from providers.config.services import provider_config_update as u;"
            "u(config=P.objects.get(name='echo'), changes={'enabled': False})",
        )

        def gone(url: str) -> bool:
            response = httpx.post(
                f"{url}/chat", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {key}"}
            )
            return response.status_code == 404

        for url, _ in workers:
            assert wait_until(lambda url=url: gone(url), timeout=10), url
    finally:
        stop_all([proc for _, proc in workers])
