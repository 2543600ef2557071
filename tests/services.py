"""Reach the real PostgreSQL and Redis of this machine, or say clearly why not.

Under CI=true a missing service fails the test; on a laptop it skips it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from echo_site.pytest_environment import LOCAL_POSTGRES_URL

POSTGRES_ADMIN_URL = os.environ.get("ECHO_TEST_POSTGRES_URL", LOCAL_POSTGRES_URL)
REDIS_URL = os.environ.get("ECHO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(host: str, port: int) -> bool:
    """Return whether something accepts a TCP connection on HOST:PORT within a second."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Fail (under CI) or skip (elsewhere) unless NAME answers on HOST:PORT."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must provide it (see .ci/run).")
    pytest.skip(message)


@contextmanager
def scratch_postgres_database(template: str | None = None) -> Iterator[str]:
    """Create a PostgreSQL database (empty, or a copy of TEMPLATE); yield its URL; drop it afterwards."""
    import psycopg

    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"echo_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        copy = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_redis() -> str:
    """Return the Redis URL for tests, after checking Redis answers."""
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL
