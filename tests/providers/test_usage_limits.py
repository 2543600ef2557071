"""No client can stop usage accounting for the others, on the PostgreSQL that production runs.

Before the fix, one /chat with a 100-character provider name (or a model
holding NUL) made the batch insert fail; the batch was queued again forever,
so no later request of anyone was recorded, the queue grew without bound and
its rows were lost at shutdown. SQLite accepts those values; PostgreSQL, which
production runs, refuses them. These tests run in processes of their own, on a
scratch PostgreSQL database that the outage scenario closes to every connection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from providers.usage.storable import storable_json, storable_text
from tests.migrated_databases import migrated_postgres_database
from tests.server_processes import free_port

# Slow: scenarios and a server in processes of their own.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def scenario(env: dict[str, str], name: str) -> tuple[dict, str]:
    """Run a scenario of ``usage_limits_scenarios``; return its findings and its log."""
    code = f"from tests.providers.usage_limits_scenarios import main; main({name!r})"
    result = run(env, "-c", code)
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.fixture
def pg_env(tmp_path):
    """The environment of an Echo process on a migrated scratch PostgreSQL database."""
    with migrated_postgres_database() as database_url:
        env = {
            **os.environ,
            "ECHO_ENV": "test",
            "DATABASE_URL": database_url,
            "ECHO_VAR_DIR": str(tmp_path),
            "SECRET_KEY": "usage-limits-test",
            "LOG_LEVEL": "INFO",
        }
        env.pop("REDIS_URL", None)
        yield env


def test_a_hostile_row_is_stored_clean_and_the_others_are_recorded(pg_env) -> None:
    found, _ = scenario(pg_env, "hostile")
    # The attack is real: PostgreSQL refuses each value as the client sent it.
    assert "accepted" not in found["raw"], found["raw"]
    clients = [row["client"] for row in found["rows"]]
    assert clients == ["key:alice", "key:\ufffdmallory", "key:bob", "key:carol"]
    assert found["written"] == [3, 1] and found["pending"] == 0
    hostile = found["rows"][1]
    assert hostile["provider"] == "p" * 64
    # Cut to the column first, then cleaned: the NUL goes, the lone surrogates are marked.
    assert hostile["model"] == "gpt-4o" + "\ufffd" * 193
    assert "\x00" not in hostile["model"]
    assert hostile["prompt_tokens"] == 0 and hostile["attempts"] == 2**15 - 1
    first, second = hostile["fallback_path"]
    assert first["route"] == "p/m\ufffd" and len(first["error"]) == 200 and first["wait"] is None
    assert second["deep"] == [["<nested too deep>"]] and second["big"] == 2**63 - 1
    assert found["refused"] == 0


def test_a_row_the_database_refuses_is_dropped_alone_and_logged_once(pg_env) -> None:
    found, log = scenario(pg_env, "refused")
    assert found["clients"] == ["key:alice", "key:bob", "key:carol"]
    assert found["written"] == [2, 1] and found["pending"] == 0
    assert found["refused"] == 3
    assert log.count("the database refused a usage row") == 1
    assert "IntegrityError 23514" in log  # its kind: class and SQLSTATE
    assert "poison" not in log  # never the row's values


def test_the_queue_stays_bounded_while_the_database_is_away(pg_env) -> None:
    found, log = scenario({**pg_env, "ECHO_USAGE_QUEUE_MAX": "20"}, "outage")
    assert found["errors"] == ["OperationalError"] * 3
    assert found["pending"] == [20, 20, 20]
    assert found["dropped"] == 75 - 20
    # It came back: the newest rows, kept through the outage, are written.
    assert found["written"] == [1, 20]
    assert found["clients"] == ["key:before"] + [f"key:c{i}" for i in range(55, 75)]


def usage_clients(database_url: str) -> list[str]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return [
            row[0] for row in conn.execute("SELECT client FROM providers_usagerecord ORDER BY id")
        ]


def test_a_server_shutting_down_writes_its_queue_hostile_rows_included(pg_env) -> None:
    keys = run(
        pg_env,
        "manage.py",
        "shell",
        "-c",
        "from providers.config.services import provider_config_create as c;"
        "c(name='echo', plugin='echo', settings={}, is_default=True);"
        "from plugins_api.access.key_changes import client_key_issue as k;"
        "print(k(name='mallory', scope='chat')[1], k(name='alice', scope='chat')[1])",
    ).stdout.split()[-2:]
    mallory, alice = keys
    port = free_port()
    # Writes wait for the interval (an hour) or for shutdown: only the shutdown can write them.
    env = {**pg_env, "ECHO_USAGE_FLUSH_SECONDS": "3600"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "echo_site.asgi:application", "--port", str(port)]
        + ["--lifespan", "on", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/metrics", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "no server"
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=10) as client:
            hostile = {"Authorization": f"Bearer {mallory}"}
            client.post("/chat", json={"prompt": "hi", "provider": "p" * 100}, headers=hostile)
            client.post("/chat", json={"prompt": "hi", "model": "gpt\u0000-4o"}, headers=hostile)
            for _ in range(3):
                answer = client.post(
                    "/chat",
                    json={"prompt": f"hello {uuid.uuid4().hex}"},
                    headers={"Authorization": f"Bearer {alice}"},
                )
                assert answer.status_code == 200, answer.text
        assert usage_clients(pg_env["DATABASE_URL"]) == []  # queued, not yet written
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert server.returncode in (0, -signal.SIGTERM), stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    clients = usage_clients(pg_env["DATABASE_URL"])
    assert clients.count("key:alice") == 3, (clients, stderr[-4000:])
    # Mallory's requests are recorded clean, unless the edge refused them before any usage.
    assert set(clients) <= {"key:alice", "key:mallory"}


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("plain", 10, "plain"),
        ("a\x00b\x00c", 10, "abc"),
        ("x\ud800y\udfff", 10, "x\ufffdy\ufffd"),
        ("z" * 5_000_000, 64, "z" * 64),
        (None, 5, ""),
        (12345, 3, "123"),
    ],
)
def test_storable_text(value, limit, expected) -> None:
    assert storable_text(value, limit) == expected


def test_storable_json_is_bounded_and_clean() -> None:
    value = {"k\x00": ["\ud800"] * 100, "n": float("nan"), "ok": [1, 2.5, True, None]}
    assert storable_json(value) == {"k": ["\ufffd"] * 16, "n": None, "ok": [1, 2.5, True, None]}
    json.dumps(storable_json(value), allow_nan=False).encode()
