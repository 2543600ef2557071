"""SIGTERM drains a worker: streams finish (or end with ``shutting_down``), usage is written.

The slow tests' server runs the Makefile's own command line (uvicorn) in a subprocess,
with a slow provider (the echo plugin, one word every ``delay_ms``) so that
an HTTP stream and a websocket answer are in flight when the signal comes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.utils import timezone
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from plugins_api.access.key_changes import client_key_issue
from plugins_api.chat.conversations import chat_answers_interrupt_orphaned
from plugins_api.edge.sse import ChatEvents, encode_stream
from plugins_api.models import Conversation, ConversationMessage
from providers.runtime import process as runtime
from providers.types import StreamingChunk
from tests.echo_site.production_server import ProductionEcho
from tests.migrated_databases import install_migrated_sqlite
from tests.server_processes import manage

QUEUED_ROWS = 5


def slow_server(var_dir: Path, *, drain_seconds: int, delay_ms: int) -> ProductionEcho:
    """Start a server with a provider "slow" that streams a word every DELAY_MS."""
    echo = ProductionEcho(
        var_dir,
        settings={
            "ECHO_DRAIN_SECONDS": str(drain_seconds),
            # Rows stay queued until shutdown writes them.
            "ECHO_USAGE_FLUSH_SECONDS": "600",
        },
    )
    install_migrated_sqlite(var_dir)
    manage(
        echo.env(),
        "shell",
        "-c",
        "from providers.config.services import provider_config_create as c;"
        f"c(name='slow', plugin='echo', settings={{'prefix': 'Slow: ', 'delay_ms': {delay_ms}}})",
    )
    return echo.start()


@dataclass
class HttpStream:
    """A ``/chat`` stream read in a thread: its events, and whether the first chunk came."""

    events: list[dict] = field(default_factory=list)
    first_chunk: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def read(self, server: ProductionEcho, prompt: str, api: str = "/chat") -> None:
        body: dict = {"prompt": prompt, "provider": "slow", "stream": True}
        if api != "/chat":
            body = {
                "model": "slow/echo-1",
                "messages": [{"role": "user", "content": prompt}],
                "stream": True,
                "max_tokens": 100,
            }
        try:
            with httpx.stream(
                "POST",
                f"{server.url}{api}",
                json=body,
                headers={"Authorization": f"Bearer {server.key}"},
                timeout=30,
            ) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line.removeprefix("data: ")))
                        self.first_chunk.set()
        except BaseException as exc:
            self.error = exc
            self.first_chunk.set()


@pytest.fixture
def threads() -> Iterator[list[threading.Thread]]:
    started: list[threading.Thread] = []
    yield started
    for thread in started:
        thread.join(timeout=30)


def open_stream(
    server: ProductionEcho, prompt: str, threads: list, api: str = "/chat"
) -> tuple[HttpStream, threading.Thread]:
    stream = HttpStream()
    thread = threading.Thread(target=stream.read, args=(server, prompt, api), daemon=True)
    thread.start()
    threads.append(thread)
    assert stream.first_chunk.wait(timeout=15), "no chunk came"
    assert stream.error is None, stream.error
    return stream, thread


def chat_socket(server: ProductionEcho) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{server.port}/ws/chat/",
        additional_headers={"Authorization": f"Bearer {server.key}"},
        open_timeout=10,
    )


def ask(ws: ClientConnection, prompt: str) -> int:
    """Ask PROMPT of "slow" on WS; return the answer's id once its text flows."""
    assert json.loads(ws.recv(timeout=10))["type"] == "providers"
    ws.send(json.dumps({"type": "chat", "message": prompt, "provider": "slow"}))
    start = json.loads(ws.recv(timeout=10))
    assert start["type"] == "start", start
    assert json.loads(ws.recv(timeout=10))["type"] == "chunk"
    return start["message_id"]


def frames_until_closed(ws: ClientConnection) -> tuple[list[dict], int | None]:
    frames = []
    try:
        while True:
            frames.append(json.loads(ws.recv(timeout=30)))
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


def queue_usage_rows(server: ProductionEcho) -> None:
    for _ in range(QUEUED_ROWS):
        response = httpx.post(
            f"{server.url}/chat",
            json={"prompt": "quick"},
            headers={"Authorization": f"Bearer {server.key}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text


def terminate(server: ProductionEcho) -> float:
    """Send SIGTERM; check that new requests are refused at once; return when it was sent."""
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    refused = None
    while refused is None and time.monotonic() - sent < 5:
        try:
            refused = httpx.post(
                f"{server.url}/chat",
                json={"prompt": "late"},
                headers={"Authorization": f"Bearer {server.key}"},
                timeout=5,
            )
        except httpx.HTTPError:
            break  # the drain is already over: the listener is closed
        if refused.status_code == 200:  # the signal is not handled yet
            refused = None
    if refused is not None:
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "shutting_down"
    return sent


def stored(server: ProductionEcho) -> tuple[list[str], dict[int, str]]:
    """Return the usage rows' endpoints and the answers' statuses, by id."""
    with sqlite3.connect(server.var_dir / "echo.sqlite3") as db:
        endpoints = [r[0] for r in db.execute("SELECT endpoint FROM providers_usagerecord")]
        statuses = dict(
            db.execute(
                "SELECT id, status FROM plugins_api_conversationmessage WHERE role = 'assistant'"
            )
        )
    return endpoints, statuses


# Slow: the server `make run` starts, in a process of its own.
@pytest.mark.slow
def test_sigterm_lets_streams_in_flight_finish_within_the_drain(
    tmp_path, threads: list[threading.Thread]
) -> None:
    server = slow_server(tmp_path, drain_seconds=20, delay_ms=150)
    try:
        words = " ".join(f"w{i}" for i in range(12))  # about 2 s of streaming
        stream, reader = open_stream(server, words, threads)
        with chat_socket(server) as ws:
            answer_id = ask(ws, words)
            queue_usage_rows(server)
            sent = terminate(server)
            frames, code = frames_until_closed(ws)
        assert [f["type"] for f in frames][-2:] == ["done", "error"], frames
        assert frames[-2]["status"] == "complete"
        assert frames[-1]["error"]["type"] == "shutting_down"
        assert code == 1001
        reader.join(timeout=20)
        assert stream.error is None, stream.error
        assert stream.events[-1]["type"] == "done", stream.events[-3:]
        text = "".join(e["content"] for e in stream.events if e["type"] == "chunk")
        assert text == f"Slow: {words}"

        # Uvicorn exits by re-raising the SIGTERM it handled gracefully.
        assert server.process is not None
        assert server.process.wait(timeout=20) in (0, -signal.SIGTERM)
        assert time.monotonic() - sent < 15
    finally:
        server.stop()
    endpoints, statuses = stored(server)
    assert endpoints.count("/chat") == QUEUED_ROWS + 1  # and the stream's
    assert endpoints.count("/ws/chat/") == 1
    assert statuses == {answer_id: "complete"}
    log = server.log.read_text()
    assert "Application shutdown complete." in log


@pytest.mark.slow
def test_sigterm_ends_streams_past_the_drain_with_shutting_down(
    tmp_path, threads: list[threading.Thread]
) -> None:
    server = slow_server(tmp_path, drain_seconds=1, delay_ms=500)
    try:
        words = " ".join(f"w{i}" for i in range(40))  # about 20 s of streaming
        stream, reader = open_stream(server, words, threads)
        openai, openai_reader = open_stream(server, words, threads, "/v1/chat/completions")
        anthropic, anthropic_reader = open_stream(server, words, threads, "/v1/messages")
        with chat_socket(server) as ws:
            answer_id = ask(ws, words)
            queue_usage_rows(server)
            sent = terminate(server)
            frames, code = frames_until_closed(ws)
        assert frames[-1]["type"] == "error", frames
        assert frames[-1]["error"]["type"] == "shutting_down"
        assert frames[-1]["message_id"] == answer_id
        assert "done" not in {f["type"] for f in frames}
        assert code == 1001
        reader.join(timeout=20)
        assert stream.error is None, stream.error
        assert stream.events[-1]["type"] == "error", stream.events[-3:]
        assert stream.events[-1]["error"]["type"] == "shutting_down"
        # Each compatible API ends in its own wire format's error event (read to its end
        # first: the readers are threads of their own, and the last event may still be
        # on its way when the /chat stream's has come).
        for compatible_reader in (openai_reader, anthropic_reader):
            compatible_reader.join(timeout=20)
            assert not compatible_reader.is_alive()
        assert openai.error is None, openai.error
        assert anthropic.error is None, anthropic.error
        assert openai.events[-1]["error"]["code"] == "shutting_down", openai.events[-2:]
        assert anthropic.events[-1]["type"] == "error", anthropic.events[-2:]
        assert anthropic.events[-1]["error"]["type"] == "shutting_down"
        assert "shutting down" in anthropic.events[-1]["error"]["message"]
        assert time.monotonic() - sent < 5  # the drain's second, not the 20 s of the answer

        assert server.process is not None
        assert server.process.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    endpoints, statuses = stored(server)
    assert endpoints.count("/chat") == QUEUED_ROWS + 1
    assert endpoints.count("/ws/chat/") == 1
    assert endpoints.count("/v1/chat/completions") == 1
    assert endpoints.count("/v1/messages") == 1
    assert statuses == {answer_id: "interrupted"}


async def test_a_stream_waiting_for_a_chunk_ends_with_shutting_down_at_the_drain_deadline(
    settings,
) -> None:
    settings.ECHO_DRAIN_SECONDS = 0
    stalled = asyncio.Event()

    async def chunks():
        stalled.set()
        await asyncio.sleep(60)  # an upstream that stopped sending
        yield StreamingChunk(is_final=True)

    first = StreamingChunk(content="Hi", metadata={"provider": "p", "model": "m"})
    events: list[bytes] = []

    async def read() -> None:
        async for event in encode_stream(first, chunks(), ChatEvents()):
            events.append(event)

    reader = asyncio.create_task(read())
    await asyncio.wait_for(stalled.wait(), 5)
    assert not runtime.lifecycle.draining
    runtime.lifecycle.begin_drain()  # the limit entered before the drain moves to its deadline
    assert runtime.lifecycle.draining
    await asyncio.wait_for(reader, 5)
    assert events[0].startswith(b"event: chunk\n")
    assert events[-1].startswith(b"event: error\n")
    assert json.loads(events[-1].split(b"data: ")[1])["error"]["type"] == "shutting_down"


async def test_a_wait_begun_during_the_drain_ends_at_its_deadline(settings) -> None:
    settings.ECHO_DRAIN_SECONDS = 0.2
    runtime.lifecycle.begin_drain()

    async def chunks():
        await asyncio.sleep(60)
        yield StreamingChunk(is_final=True)

    first = StreamingChunk(content="Hi", metadata={"provider": "p", "model": "m"})
    started = time.monotonic()
    events = await asyncio.wait_for(_all(encode_stream(first, chunks(), ChatEvents())), 5)
    assert 0.1 < time.monotonic() - started < 3
    assert json.loads(events[-1].split(b"data: ")[1])["error"]["type"] == "shutting_down"


async def test_a_client_leaving_a_waiting_stream_is_a_cancellation_not_a_shutdown() -> None:
    """Not draining, a cancelled wait stays a cancellation, and no wait is left behind."""
    first = StreamingChunk(content="Hi", metadata={"provider": "p", "model": "m"})
    reader = await _reading_a_stalled_stream(first)
    assert len(runtime.lifecycle._waits) == 1
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert runtime.lifecycle._waits == set()

    done = [e async for e in encode_stream(first, _final(), ChatEvents())]
    assert done[-1].startswith(b"event: done\n")
    assert runtime.lifecycle._waits == set()


async def test_a_client_leaving_as_the_deadline_passes_is_still_a_cancellation(settings) -> None:
    """The drain ends a wait the client's cancellation also ended: the cancellation is kept."""
    settings.ECHO_DRAIN_SECONDS = 0
    reader = await _reading_a_stalled_stream(
        StreamingChunk(content="Hi", metadata={"provider": "p", "model": "m"})
    )
    runtime.lifecycle.begin_drain()
    # The deadline's timer and the client's leaving, both before the reader runs again.
    (limit,) = runtime.lifecycle._waits
    limit.expire()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader


async def _reading_a_stalled_stream(first: StreamingChunk) -> asyncio.Task[list[bytes]]:
    """Return a task reading FIRST and then an upstream that stopped sending, once it waits."""
    stalled = asyncio.Event()

    async def chunks():
        stalled.set()
        await asyncio.sleep(60)
        yield StreamingChunk(is_final=True)

    reader = asyncio.create_task(_all(encode_stream(first, chunks(), ChatEvents())))
    await asyncio.wait_for(stalled.wait(), 5)
    return reader


async def _all(events) -> list[bytes]:
    return [event async for event in events]


async def _final():
    await asyncio.sleep(0)
    yield StreamingChunk(is_final=True, finish_reason="stop")


async def test_a_stream_goes_on_while_the_drain_has_time_left(settings) -> None:
    settings.ECHO_DRAIN_SECONDS = 30
    runtime.lifecycle.begin_drain()

    async def chunks():
        await asyncio.sleep(0.05)
        yield StreamingChunk(is_final=True, finish_reason="stop")

    first = StreamingChunk(content="Hi")
    events = [e async for e in encode_stream(first, chunks(), ChatEvents())]
    assert events[-1].startswith(b"event: done\n")


@pytest.mark.django_db
def test_the_start_up_sweep_interrupts_only_answers_older_than_any_live_stream() -> None:
    key, _ = client_key_issue(name="sweep", scope="chat")
    conversation = Conversation.objects.create(title="t", client_key=key)

    def answer(status: str, age: timedelta) -> ConversationMessage:
        row = ConversationMessage.objects.create(
            conversation=conversation, role=ConversationMessage.ROLE_ASSISTANT, status=status
        )
        ConversationMessage.objects.filter(pk=row.pk).update(created_at=timezone.now() - age)
        return row

    orphaned = answer(ConversationMessage.STATUS_STREAMING, timedelta(hours=2))
    live = answer(ConversationMessage.STATUS_STREAMING, timedelta(minutes=1))
    done = answer(ConversationMessage.STATUS_COMPLETE, timedelta(hours=2))

    assert chat_answers_interrupt_orphaned(started_before=timezone.now() - timedelta(hours=1)) == 1
    statuses = dict(ConversationMessage.objects.values_list("pk", "status"))
    assert statuses == {
        orphaned.pk: ConversationMessage.STATUS_INTERRUPTED,
        live.pk: ConversationMessage.STATUS_STREAMING,
        done.pk: ConversationMessage.STATUS_COMPLETE,
    }


def test_the_lifespans_shutdown_writes_the_keys_last_use_before_the_runtime_stops(
    monkeypatch,
) -> None:
    """The runtime's stop closes the database connections: the waiting stamps go first."""
    from echo_site import asgi
    from plugins_api.access.key_last_use import key_last_use

    order: list[str] = []

    class Lifecycle:
        async def stop(self) -> None:
            order.append("runtime stopped")

    class Runtime:
        lifecycle = Lifecycle()

    async def stamps_written() -> int:
        order.append("stamps written")
        return 0

    monkeypatch.setattr(asgi.runtime, "current", lambda: Runtime())
    monkeypatch.setattr(key_last_use, "stop", stamps_written)
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "lifespan.shutdown"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(asgi._lifespan(receive, send))
    assert order == ["stamps written", "runtime stopped"]
    assert sent == [{"type": "lifespan.shutdown.complete"}]
