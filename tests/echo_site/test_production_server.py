"""``make run`` serves Echo with uvicorn: lifespan start and stop, and the websocket chat.

The server runs the Makefile's own command line in a subprocess.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.echo_site.production_server import ProductionEcho

# Slow: the server `make run` starts, in a process of its own.
pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path) -> Iterator[ProductionEcho]:
    """A server of this test alone: the test stops it."""
    echo = ProductionEcho(tmp_path).start()
    yield echo
    echo.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionEcho]:
    echo = ProductionEcho(
        tmp_path_factory.mktemp("ws"), settings={"ECHO_WS_MESSAGES_PER_MINUTE": "2"}
    ).start()
    yield echo
    echo.stop()


def test_the_runtime_starts_at_boot_and_stops_with_the_server_writing_usage(
    server: ProductionEcho,
) -> None:
    response = httpx.post(
        f"{server.url}/chat",
        json={"prompt": "hi"},
        headers={"Authorization": f"Bearer {server.key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text

    # At once, before the periodic flush: the rows must be written at shutdown.
    # Uvicorn exits by re-raising the SIGTERM it handled gracefully.
    assert server.stop() in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "Application startup complete." in log
    assert "Application shutdown complete." in log
    with sqlite3.connect(server.var_dir / "echo.sqlite3") as db:
        rows = db.execute("SELECT endpoint FROM providers_usagerecord").fetchall()
    assert rows == [("/chat",)]


def test_the_websocket_chat_works_and_an_abusive_client_is_closed_with_1008(
    shared_server: ProductionEcho,
) -> None:
    server = shared_server
    url = f"ws://127.0.0.1:{server.port}/ws/chat/"
    with connect(url, additional_headers={"Authorization": f"Bearer {server.key}"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "providers"
        ws.send(json.dumps({"type": "chat", "message": "hello"}))
        frames = []
        while not frames or frames[-1]["type"] not in {"done", "error"}:
            frames.append(json.loads(ws.recv(timeout=10)))
        assert frames[-1]["type"] == "done", frames
        assert "".join(f["content"] for f in frames if f["type"] == "chunk") == "Echo: hello"

        ws.send(json.dumps({"type": "providers"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "providers"
        for _ in range(2):  # over ECHO_WS_MESSAGES_PER_MINUTE=2, twice: abuse
            ws.send(json.dumps({"type": "providers"}))
            assert json.loads(ws.recv(timeout=10))["error"]["type"] == "rate_limited"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_a_websocket_without_a_key_is_refused(shared_server: ProductionEcho) -> None:
    server = shared_server
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{server.port}/ws/chat/", open_timeout=10)
    assert refused.value.response.status_code == 403
