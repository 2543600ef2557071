"""Echo survives a Redis outage: sockets keep chatting, readiness says so, workers converge after.

The slow test runs two uvicorn workers on PostgreSQL and a Redis of its own,
kills that Redis for ``ECHO_TEST_REDIS_OUTAGE_SECONDS`` (default 10, as an
operator's blip would last; the suite runs on two cores, so the wait costs
little), and checks what an operator would: websocket chats go on (and new
sockets open) during the outage, ``/health/ready`` goes 503 and back to 200,
a change saved during the outage reaches every worker within 5 s of Redis
returning, and group pushes (a revoked key's close) reach sockets again.
The fast tests check the listener's prompt reconnection and the consumer's
receive on a channel layer that fails.
"""

# The fixture imported from test_consumers is redefined as a test parameter, as pytest wants.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from channels.layers import InMemoryChannelLayer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from plugins_api.access.key_changes import client_key_issue, client_key_revoke
from providers.runtime import broadcast, config_sync
from tests.migrated_databases import migrated_postgres_database
from tests.plugins_api.test_consumers import answer, key_headers, providers  # noqa: F401
from tests.plugins_api.test_consumers import connect as connect_socket
from tests.server_processes import django_shell, free_port, manage, start_uvicorn, stop_all
from tests.services import reachable

OUTAGE_SECONDS = max(3.0, float(os.environ.get("ECHO_TEST_REDIS_OUTAGE_SECONDS", "10")))
CONVERGE_SECONDS = 5.0


# --- fast: the listener and the consumer on a failing layer ------------------


class FailingLayer(InMemoryChannelLayer):
    """An in-memory layer that refuses every call while ``down`` (a Redis outage)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.down = False
        self.group_adds: list[tuple[str, str]] = []
        self.joined = asyncio.Event()

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("Redis is down")

    async def group_add(self, group: str, channel: str) -> None:
        self._check()
        self.group_adds.append((group, channel))
        self.joined.set()
        await super().group_add(group, channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        while True:
            self._check()
            try:
                async with asyncio.timeout(0.02):
                    return await super().receive(channel)
            except TimeoutError:
                continue


async def test_the_listener_reconnects_and_repairs_within_a_second_of_the_layer_returning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = FailingLayer()
    layer.down = True
    repairs: list[float] = []
    repaired = asyncio.Event()

    async def repair_all() -> None:
        repairs.append(time.monotonic())
        repaired.set()

    monkeypatch.setattr(broadcast, "_shared_layer", lambda: layer)
    monkeypatch.setattr(config_sync, "repair_all", repair_all)
    listener = asyncio.create_task(broadcast.listen_for_provider_changes())
    try:
        # The old backoff (1 s, 2 s, 4 s...) would try next at 3 s: 1.4 s after the layer returns.
        await asyncio.sleep(1.6)
        assert repairs == []
        layer.down = False
        returned = time.monotonic()
        async with asyncio.timeout(2):
            await repaired.wait()
        assert repairs[0] - returned <= broadcast.RETRY_SECONDS[1] + 0.1
        assert layer.group_adds[-1][0] == broadcast.GROUP
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


def test_the_retry_delay_stays_between_half_a_second_and_a_second() -> None:
    delays = {broadcast.retry_delay() for _ in range(200)}
    assert all(0.5 <= delay <= 1.0 for delay in delays)
    assert len(delays) > 1  # jittered: workers do not reconnect in step


@pytest.fixture
def failing_layer(settings: Any) -> FailingLayer:
    from channels.layers import get_channel_layer

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "tests.test_redis_outage.FailingLayer"}}
    layer = get_channel_layer()
    assert isinstance(layer, FailingLayer)
    return layer


async def test_a_socket_survives_the_layer_failing_and_rejoins_its_key_group(
    providers: None, failing_layer: FailingLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from channels.db import database_sync_to_async

    monkeypatch.setattr(broadcast, "RETRY_SECONDS", (0.01, 0.02))
    key, raw = await database_sync_to_async(client_key_issue)(name="flaky", scope="chat")
    socket = await connect_socket(key_headers(raw))
    try:
        failing_layer.down = True
        await asyncio.sleep(0.2)  # the receive fails and is retried, many times
        assert (await answer(socket, {"message": "hi"}))[-1]["type"] == "done"
        failing_layer.joined.clear()
        failing_layer.down = False
        async with asyncio.timeout(2):
            await failing_layer.joined.wait()
        # Pushes reach the socket again: revoking its key closes it at once.
        await database_sync_to_async(client_key_revoke)(name=key.name)
        while True:
            output = await socket.receive_output(timeout=2)
            if output["type"] == "websocket.close":
                assert output["code"] == 4401
                break
    finally:
        await socket.disconnect()


# --- slow: two real workers and a Redis that goes away -----------------------


class OwnRedis:
    """A redis-server of this test's own on a free port, without persistence: killable."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@contextmanager
def uvicorn_workers(env: dict[str, str], count: int) -> Iterator[list[str]]:
    """Start COUNT uvicorn workers with ENV; yield their base URLs once each is ready."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for _ in range(count):
            port, process = start_uvicorn(env, stderr=subprocess.DEVNULL)
            processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
        for url, process in zip(urls, processes, strict=True):
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, "a worker exited at start"
                assert time.monotonic() < deadline, "a worker did not become ready"
                try:
                    if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        yield urls
    finally:
        stop_all(processes)


async def open_socket(base_url: str, key: str) -> ClientConnection:
    socket = await connect(
        base_url.replace("http", "ws", 1) + "/ws/chat/",
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=5,
    )
    assert json.loads(await socket.recv())["type"] == "providers"
    return socket


async def chat(socket: ClientConnection, message: str) -> str:
    """Ask MESSAGE over SOCKET; return the answer's text (failing on an error frame)."""
    await socket.send(json.dumps({"type": "chat", "message": message, "provider": "echo"}))
    text = ""
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await socket.recv())
            if frame["type"] == "chunk":
                text += frame["content"]
            elif frame["type"] == "done":
                return text
            elif frame["type"] == "error":
                pytest.fail(f"the chat failed: {frame}")


async def readiness(client: httpx.AsyncClient, url: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(f"{url}/health/ready")
    return response.status_code, response.json()


async def until_ready_is(
    client: httpx.AsyncClient, urls: list[str], code: int, within: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    bodies: list[dict[str, Any]] = []
    for url in urls:
        while True:
            status, body = await readiness(client, url)
            if status == code:
                bodies.append(body)
                break
            assert time.monotonic() < deadline, f"{url}/health/ready is {status}: {body}"
            await asyncio.sleep(0.05)
    return bodies


async def served_revision(client: httpx.AsyncClient, url: str) -> int | None:
    response = await client.get(f"{url}/plugins/echo/status")
    assert response.status_code == 200, response.text
    return response.json()["revision"]["serving"]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[dict[str, str], OwnRedis, str, str]]:
    """Yield (environment, its Redis, an admin key, a chat key) for two workers to share."""
    redis = OwnRedis()
    redis.start()
    try:
        with migrated_postgres_database() as database_url:
            env = {
                **os.environ,
                "ECHO_ENV": "test",
                "DATABASE_URL": database_url,
                "REDIS_URL": redis.url,
                "ECHO_CHANNEL_PREFIX": f"echo-outage-{uuid.uuid4().hex[:8]}",
                # Only the listener's reconnection repairs: no periodic pass within the test.
                "ECHO_CONFIG_REPAIR_SECONDS": "3600",
                "ECHO_HEALTH_INTERVAL_SECONDS": "0",
                "ECHO_VAR_DIR": str(tmp_path),
                "SECRET_KEY": "redis-outage",
            }
            keys = (
                django_shell(
                    env,
                    "from providers.config.services import provider_config_create as c;"
                    "c(name='echo', plugin='echo', settings={'prefix': 'before: '}, is_default=True);"
                    "from plugins_api.access.key_changes import client_key_issue as k;"
                    "print(k(name='ops', scope='admin')[1], k(name='pushed', scope='chat')[1])",
                )
                .strip()
                .splitlines()[-1]
                .split()
            )
            env["_DATABASE_URL"] = database_url
            yield env, redis, keys[0], keys[1]
    finally:
        redis.kill()


def database_revision(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT revision FROM providers_providerconfig WHERE name = 'echo'"
        ).fetchone()[0]


@pytest.mark.slow
async def test_a_redis_outage_keeps_sockets_chatting_and_workers_converge_after(
    deployment: tuple[dict[str, str], OwnRedis, str, str],
) -> None:
    env, redis, admin_key, chat_key = deployment
    with uvicorn_workers(env, 2) as urls:
        async with httpx.AsyncClient(
            timeout=10, headers={"Authorization": f"Bearer {admin_key}"}
        ) as client:
            chats = [await open_socket(url, admin_key) for url in urls]
            pushed = [await open_socket(url, chat_key) for url in urls]
            for socket in chats:
                assert await chat(socket, "hi") == "before: hi"

            redis.kill()
            went_down = time.monotonic()

            bodies = await until_ready_is(client, urls, 503, within=3)
            assert all("redis" in body["failed"] for body in bodies)
            # Chats go on, on the sockets open before and on new ones.
            for socket in chats:
                assert await chat(socket, "during") == "before: during"
            late = [await open_socket(url, admin_key) for url in urls]
            for socket in late:
                assert await chat(socket, "new") == "before: new"
            # A change saved during the outage: its broadcast is lost.
            response = await client.put(
                f"{urls[0]}/plugins/echo/config", json={"prefix": "after: "}
            )
            assert response.status_code == 200, response.text
            revision = database_revision(env["_DATABASE_URL"])
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - went_down)))
            for socket in chats:
                assert (await chat(socket, "still")).endswith("still")

            redis.start()
            returned = time.monotonic()

            # Every worker serves the change within 5 s of Redis returning.
            pending = list(urls)
            while pending:
                pending = [url for url in pending if await served_revision(client, url) != revision]
                assert time.monotonic() - returned < CONVERGE_SECONDS, (
                    f"{pending} still not at revision {revision}"
                )
                await asyncio.sleep(0.05)
            await until_ready_is(client, urls, 200, within=CONVERGE_SECONDS)
            assert time.monotonic() - returned < CONVERGE_SECONDS
            for socket in [*chats, *late]:
                assert await chat(socket, "back") == "after: back"

            # Pushes resume: the sockets rejoined their key's group in the new Redis.
            await asyncio.sleep(broadcast.RETRY_SECONDS[1] + broadcast.LAYER_TIMEOUT_SECONDS)
            await asyncio.to_thread(manage, env, "revoke_api_key", "pushed")
            for socket in pushed:
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(5):
                        while True:
                            await socket.recv()
                assert socket.close_code == 4401
            for socket in [*chats, *late]:
                await socket.close()
