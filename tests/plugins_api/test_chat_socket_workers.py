"""The chat socket under real daphne workers: revocation reaches every worker, closes are valid.

Two daphne processes share a SQLite file and Redis (the scale-out channel
layer); a third process revokes the key with ``manage.py revoke_api_key``,
as an admin would. Daphne refuses close code 1008 (it accepts only 1000 and
3000-4999): the rate-limit close must still close, with 4008, and log no
traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.migrated_databases import install_migrated_sqlite
from tests.server_processes import django_shell, manage, start_daphne, stop_all
from tests.services import require_redis

# Slow: daphne workers in processes of their own.
pytestmark = pytest.mark.slow


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[dict[str, str], list[tuple[str, Any]]]]:
    """Two daphne workers on Redis; yield (their environment, [(ws url, process)])."""
    env = {
        **os.environ,
        "ECHO_ENV": "test",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'echo.sqlite3'}",
        "REDIS_URL": require_redis(),
        "ECHO_CHANNEL_PREFIX": f"echo-test-{uuid.uuid4().hex[:8]}",
        "ECHO_VAR_DIR": str(tmp_path),
        "SECRET_KEY": "chat-socket-workers-test",
        "ECHO_WS_MESSAGES_PER_MINUTE": "3",
    }
    install_migrated_sqlite(tmp_path)
    django_shell(
        env,
        "from providers.config.services import provider_config_create as c;"
        "c(name='echo', plugin='echo', settings={'prefix': 'Echo: '}, is_default=True)",
    )
    started = []
    try:
        for _ in range(2):
            port, proc = start_daphne(env)
            started.append((f"ws://127.0.0.1:{port}/ws/chat/", proc))
        yield env, started
    finally:
        stop_all([proc for _, proc in started])


def issue_key(env: dict[str, str], name: str) -> str:
    out = manage(
        env,
        "shell",
        "-c",
        f"from plugins_api.access.key_changes import client_key_issue as k; print(k(name={name!r}, scope='chat')[1])",
    )
    return out.strip().splitlines()[-1]


async def open_socket(url: str, key: str) -> ClientConnection:
    """Connect to URL with KEY (retrying while the worker starts); return after the provider list."""
    for _ in range(150):
        try:
            socket = await connect(url, additional_headers={"Authorization": f"Bearer {key}"})
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        pytest.fail(f"no worker answers at {url}")
    assert json.loads(await socket.recv())["type"] == "providers"
    return socket


async def frames_until_closed(
    socket: ClientConnection, timeout: float = 10
) -> list[dict[str, Any]]:
    """Return the frames SOCKET receives until the server closes it."""
    frames = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                frames.append(json.loads(await socket.recv()))
        except ConnectionClosed:
            return frames


async def test_revoking_a_key_closes_its_sockets_on_every_worker(workers: Any) -> None:
    env, started = workers
    key = issue_key(env, "roaming")
    sockets = [await open_socket(url, key) for url, _ in started]
    for socket in sockets:
        await socket.send(json.dumps({"type": "chat", "message": "hi"}))
        while json.loads(await socket.recv())["type"] != "done":
            pass

    await asyncio.to_thread(manage, env, "revoke_api_key", "roaming")

    for socket in sockets:
        frames = await frames_until_closed(socket)
        assert frames[-1]["error"]["type"] == "key_revoked"
        assert socket.close_code == 4401


async def test_the_rate_limit_close_works_under_daphne(workers: Any) -> None:
    env, started = workers
    url, proc = started[0]
    socket = await open_socket(url, issue_key(env, "hasty"))
    for _ in range(6):
        await socket.send(json.dumps({"type": "providers"}))

    frames = await frames_until_closed(socket)
    assert [f["type"] for f in frames][:3] == ["providers"] * 3
    assert {f["error"]["type"] for f in frames[3:]} == {"rate_limited"}
    assert socket.close_code == 4008  # 1008 as daphne lets us say it
    proc.terminate()
    _, stderr = proc.communicate(timeout=10)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")[-2000:]
