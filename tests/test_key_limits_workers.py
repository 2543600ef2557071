"""Per-key rate limits across real uvicorn workers on PostgreSQL and Redis, and with Redis down.

Issue 17's test: a key issued with ``issue_api_key --rpm 5`` gets 429 with
``Retry-After`` on its 6th call within the minute while its calls alternate
between two workers (one count in Redis); another key is unaffected. With
Redis unreachable, each worker follows ``ECHO_KEY_LIMITS_WHEN_REDIS_DOWN``:
``local`` counts in its own memory, ``refuse`` answers 503; never unlimited.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.migrated_databases import migrated_postgres_database
from tests.server_processes import django_shell, manage, start_uvicorn, stop_all
from tests.services import require_redis

# Slow: uvicorn workers in processes of their own.
pytestmark = pytest.mark.slow

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there


@contextmanager
def deployment(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    """A scratch database with the echo provider; yield the workers' environment."""
    prefix = f"echo-limits-{uuid.uuid4().hex[:8]}"
    with migrated_postgres_database() as database_url:
        env = {
            **os.environ,
            "ECHO_ENV": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ECHO_CHANNEL_PREFIX": prefix,
            "ECHO_CACHE_PREFIX": prefix,
            "ECHO_VAR_DIR": str(tmp_path),
            "SECRET_KEY": "key-limits-workers",
        }
        django_shell(
            env,
            "from providers.config.services import provider_config_create as c;"
            "c(name='echo', plugin='echo', settings={'prefix': 'Echo: '}, is_default=True)",
        )
        yield env


def issue(env: dict[str, str], name: str, *limits: str) -> str:
    return manage(env, "issue_api_key", name, *limits).strip().splitlines()[-1]


@contextmanager
def workers(envs: list[dict[str, str]]) -> Iterator[list[str]]:
    """Start one uvicorn worker per environment; yield their URLs once each serves."""
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for env in envs:
            port, process = start_uvicorn(env)
            started.append((f"http://127.0.0.1:{port}", process))
        deadline = time.monotonic() + 30
        for url, process in started:
            while True:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "a worker did not start"
                try:
                    httpx.get(f"{url}/", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
        yield [url for url, _ in started]
    finally:
        stop_all([process for _, process in started])


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "echo/echo-1", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_a_key_limited_to_5_a_minute_is_refused_on_its_6th_call_across_two_workers(
    tmp_path: Path,
) -> None:
    with deployment(tmp_path, require_redis()) as env:
        limited = issue(env, "limited", "--rpm", "5")
        other = issue(env, "other", "--rpm", "5")
        with workers([env, env]) as urls:
            answers = [chat(urls[i % 2], limited) for i in range(6)]
            assert [a.status_code for a in answers] == [200] * 5 + [429], answers[-1].text
            refused = answers[-1]
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.headers["x-ratelimit-limit-requests"] == "5"
            assert refused.headers["x-ratelimit-remaining-requests"] == "0"
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:5]] == [
                "4",
                "3",
                "2",
                "1",
                "0",
            ]
            assert chat(urls[1], limited).status_code == 429
            assert [chat(url, other).status_code for url in urls] == [200, 200]


def test_with_redis_down_each_worker_follows_the_configured_policy(tmp_path: Path) -> None:
    with deployment(tmp_path, DEAD_REDIS) as env:
        key = issue(env, "limited", "--rpm", "2")
        local = {**env, "ECHO_KEY_LIMITS_WHEN_REDIS_DOWN": "local"}
        refuse = {**env, "ECHO_KEY_LIMITS_WHEN_REDIS_DOWN": "refuse"}
        with workers([local, refuse]) as (local_url, refuse_url):
            assert [chat(local_url, key).status_code for _ in range(3)] == [200, 200, 429]
            refused = chat(refuse_url, key)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert "127.0.0.1:1" not in refused.text
