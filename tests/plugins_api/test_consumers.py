"""The chat websocket (``/ws/chat/``) through the real ASGI stack, with ``WebsocketCommunicator``.

Connections go through the same router the server uses (origin check,
session auth, URL routing); providers are real registry instances, test
plugins where a provider must misbehave. The database is committed
(``transactional_db``): the consumer writes from its own threads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from echo_site.asgi import router as echo_router
from plugins_api.access.key_changes import client_key_revoke
from plugins_api.chat import consumer as consumer_module
from plugins_api.chat.consumer import ChatConsumer, frame_text
from plugins_api.models import ClientAPIKey, Conversation, ConversationMessage
from providers.config.services import provider_config_create, provider_config_delete
from providers.errors import BadRequestError, ProviderUnavailableError
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.types import ChatRequest, StreamingChunk
from tests.echo_site.test_settings import settings_of
from tests.services import require_redis

ORIGIN = (b"origin", b"http://testserver")


async def router(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echo's router, given the Host header of a real handshake (the communicator sends none).

    The origin check compares Origin with the handshake's own scheme and Host.
    """
    if not any(name == b"host" for name, _ in scope["headers"]):
        scope = {**scope, "headers": [(b"host", b"testserver"), *scope["headers"]]}
    await echo_router(scope, receive, send)


class Endless:
    """What the endless plugin's generator did, seen from the test."""

    yielded = 0
    closed = threading.Event()

    @classmethod
    def reset(cls) -> None:
        cls.yielded = 0
        cls.closed = threading.Event()


class EndlessProvider(EchoProvider):
    """Streams a word every 20 ms until someone stops it."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        try:
            while True:
                Endless.yielded += 1
                yield StreamingChunk(content=f"w{Endless.yielded} ")
                await asyncio.sleep(0.02)
        finally:
            Endless.closed.set()


class RefusingProvider(EchoProvider):
    """Rejects every request before streaming anything."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        raise BadRequestError("prompt rejected by policy", status_code=400)
        yield StreamingChunk()  # pragma: no cover - makes this an async generator


class DiesMidStreamProvider(EchoProvider):
    """Streams two pieces, then the upstream connection drops."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        yield StreamingChunk(content="partial")
        yield StreamingChunk(content=" answer")
        raise ProviderUnavailableError("connection reset by upstream")


class RecordingProvider(EchoProvider):
    """Echo that keeps the messages of every request it is sent."""

    requests: list[list[tuple[str, str]]] = []

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        type(self).requests.append([(m.role, m.text) for m in request.messages])
        async for chunk in super().chat_completion_stream(request):
            yield chunk


def add_provider(name: str, cls: type[EchoProvider], **fields: Any) -> None:
    """Register CLS as plugin NAME, configure a provider of it and load it.

    This test process has no serving loop, so a save starts nothing here (it
    would in a worker): the row is loaded as a worker's start-up loads it.
    """
    runtime.registry.register(cls, name)
    provider_config_create(name=name, plugin=name, **fields)
    runtime.run_in_serving_loop(runtime.load_provider_from_database, name)


@pytest.fixture
def providers(transactional_db) -> Iterator[None]:
    """Echo as the default, a second echo ("parrot") and the misbehaving test providers."""
    Endless.reset()
    RecordingProvider.requests = []
    provider_config_create(
        name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
    )
    provider_config_create(
        name="parrot",
        plugin="echo",
        settings={
            "prefix": "Parrot: ",
            "models": ["parrot-1", "parrot-2"],
            "default_model": "parrot-1",
        },
    )
    add_provider("endless", EndlessProvider)
    add_provider("refusing", RefusingProvider)
    add_provider("dies", DiesMidStreamProvider)
    add_provider("recording", RecordingProvider, settings={"prefix": "Heard: "})
    # This test process has no serving loop: a save starts nothing here (it would
    # in a worker), so the rows are loaded as a worker's start-up loads them.
    runtime.run_in_serving_loop(runtime.load_all_from_database)
    assert {"echo", "parrot", "endless", "refusing", "dies", "recording"} <= set(
        runtime.registry.names()
    )
    yield


@pytest.fixture
def user_session(providers: None, django_user_model: Any) -> tuple[Any, str]:
    """A logged-in (non-staff) user: (user, session cookie header value)."""
    user = django_user_model.objects.create_user("alice", password="pw-alice-123")
    browser = Client()
    browser.force_login(user)
    return user, f"sessionid={browser.cookies['sessionid'].value}"


def key_headers(raw_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {raw_key}".encode())]


async def connect(headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    """Open /ws/chat/ with HEADERS; return the communicator once the provider list arrived."""
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=headers)
    connected, code = await communicator.connect(timeout=10)
    assert connected, code
    hello = await communicator.receive_json_from(timeout=10)
    assert hello["type"] == "providers"
    return communicator


@pytest.fixture
async def browser(user_session: tuple[Any, str]) -> AsyncIterator[WebsocketCommunicator]:
    """The chat page's socket: a session cookie and the site's origin."""
    _, cookie = user_session
    communicator = await connect([ORIGIN, (b"cookie", cookie.encode())])
    yield communicator
    await communicator.disconnect()


@pytest.fixture
async def key_client(
    providers: None, chat_key: tuple[ClientAPIKey, str]
) -> AsyncIterator[WebsocketCommunicator]:
    """A non-browser client with a chat key and no Origin header."""
    communicator = await connect(key_headers(chat_key[1]))
    yield communicator
    await communicator.disconnect()


async def answer(
    communicator: WebsocketCommunicator, frame: dict[str, Any], timeout: float = 2
) -> list[dict[str, Any]]:
    """Send chat FRAME; return the frames up to and including ``done`` or ``error``."""
    await communicator.send_json_to({"type": "chat", **frame})
    frames = []
    while True:
        received = await communicator.receive_json_from(timeout=timeout)
        if received["type"] == "providers":
            continue
        frames.append(received)
        if received["type"] in ("done", "error"):
            return frames


async def until(communicator: WebsocketCommunicator, kind: str) -> dict[str, Any]:
    """Return the next frame of type KIND, skipping others."""
    while True:
        frame = await communicator.receive_json_from(timeout=2)
        if frame["type"] == kind:
            return frame


@database_sync_to_async
def stored(conversation_id: int) -> list[ConversationMessage]:
    return list(ConversationMessage.objects.filter(conversation_id=conversation_id).order_by("id"))


# --- protocol ---------------------------------------------------------------


async def test_a_question_gets_start_then_chunks_as_they_come_then_done(
    browser: WebsocketCommunicator, user_session: tuple[Any, str]
) -> None:
    frames = await answer(browser, {"conversation": None, "message": "Hello there friend"})

    start, *chunks, done = frames
    assert start["type"] == "start"
    assert (start["provider"], start["model"]) == ("echo", "echo-1")
    assert isinstance(start["conversation"], int) and isinstance(start["message_id"], int)
    assert [c["type"] for c in chunks] == ["chunk"] * 4  # one per word, as the provider sent them
    assert "".join(c["content"] for c in chunks) == "Echo: Hello there friend"
    assert done["type"] == "done"
    assert done["status"] == "complete"
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert (done["provider"], done["model"]) == ("echo", "echo-1")
    assert done["message_id"] == start["message_id"]
    assert done["latency_ms"] >= done["first_chunk_ms"] > 0

    conversation = await Conversation.objects.aget(pk=start["conversation"])
    assert conversation.user_id == user_session[0].pk and conversation.client_key_id is None
    assert conversation.title == "Hello there friend"
    question, reply = await stored(conversation.pk)
    assert (question.role, question.content) == ("user", "Hello there friend")
    assert (reply.pk, reply.role, reply.status) == (start["message_id"], "assistant", "complete")
    assert reply.content == "Echo: Hello there friend"
    assert (reply.provider, reply.model) == ("echo", "echo-1")
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (3, 4, "stop")
    assert reply.latency_ms >= reply.first_chunk_ms > 0
    assert reply.completed_at is not None


async def test_the_provider_list_comes_first_with_models_health_and_breaker(
    key_client: WebsocketCommunicator,
) -> None:
    async def listed() -> dict[str, Any]:
        await key_client.send_json_to({"type": "providers"})
        frame = await key_client.receive_json_from(timeout=10)
        assert frame["type"] == "providers"
        return {p["name"]: p for p in frame["providers"]}

    by_name = await listed()
    assert by_name["echo"]["is_default"] is True
    assert by_name["echo"]["models"] == ["echo-1"]
    assert by_name["parrot"]["models"] == ["parrot-1", "parrot-2"]
    assert by_name["parrot"]["default_model"] == "parrot-1"
    assert by_name["echo"]["health"] == {"available": None, "checked_at": None}
    assert by_name["echo"]["breaker"] == "closed"

    await runtime.monitor.check_all(timeout=2, record=False)
    for _ in range(runtime.manager.breaker("parrot").failure_threshold):
        runtime.manager.breaker("parrot").record_failure("unavailable")
    by_name = await listed()
    assert by_name["echo"]["health"]["available"] is True
    assert by_name["echo"]["health"]["checked_at"] is not None
    assert by_name["parrot"]["breaker"] == "open"


async def test_the_next_question_keeps_the_conversation_and_sends_its_history(
    browser: WebsocketCommunicator,
) -> None:
    first = await answer(
        browser, {"conversation": None, "message": "My name is Ada", "provider": "recording"}
    )
    conversation = first[0]["conversation"]
    # Switch provider mid-conversation: the new one is sent the whole history.
    second = await answer(
        browser,
        {
            "conversation": conversation,
            "message": "Who am I?",
            "provider": "parrot",
            "model": "parrot-2",
        },
    )
    third = await answer(
        browser, {"conversation": conversation, "message": "Again", "provider": "recording"}
    )

    assert second[0]["conversation"] == third[0]["conversation"] == conversation
    assert (second[-1]["provider"], second[-1]["model"]) == ("parrot", "parrot-2")
    assert "".join(f["content"] for f in second if f["type"] == "chunk") == "Parrot: Who am I?"
    assert RecordingProvider.requests == [
        [("user", "My name is Ada")],
        [
            ("user", "My name is Ada"),
            ("assistant", "Heard: My name is Ada"),
            ("user", "Who am I?"),
            ("assistant", "Parrot: Who am I?"),
            ("user", "Again"),
        ],
    ]
    answers = [m for m in await stored(conversation) if m.role == "assistant"]
    assert [(m.provider, m.model) for m in answers] == [
        ("recording", "echo-1"),
        ("parrot", "parrot-2"),
        ("recording", "echo-1"),
    ]


async def test_a_turns_writes_run_on_the_orm_threads(key_client: WebsocketCommunicator) -> None:
    """Each turn's two writes go through the ORM threads and their kept connections.

    Through Channels' ``database_sync_to_async`` a served worker closed its
    connection after each write and opened another for the next (on PostgreSQL
    a server process each: ``docs/BENCHMARKS.md``); the threads' connections
    are kept (``tests/providers/test_orm_threads.py``).
    """
    from django.db.models.signals import post_save
    from django.test import override_settings

    writers: list[str] = []

    def note(sender: Any, **kwargs: Any) -> None:
        writers.append(threading.current_thread().name)

    post_save.connect(note, sender=Conversation, weak=False)
    try:
        with override_settings(ECHO_ORM_THREADS=2):  # the suite's default is 0 (see settings)
            first = await answer(key_client, {"conversation": None, "message": "turn 0"})
            conversation = first[0]["conversation"]
            for turn in range(1, 4):
                frames = await answer(
                    key_client, {"conversation": conversation, "message": f"turn {turn}"}
                )
                assert frames[-1]["type"] == "done", frames[-1]
    finally:
        post_save.disconnect(note, sender=Conversation)

    stored = ConversationMessage.objects.filter(conversation_id=conversation)
    assert await stored.acount() == 8
    # The conversation made, then marked as updated by each later turn, in the same transaction
    # as the turn's question and opened answer (the answer is settled by an update).
    assert len(writers) == 4 and all(name.startswith("echo-orm") for name in writers), writers


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("not json", None, "not valid JSON"),
        ("[1, 2]", None, "JSON object"),
        ('{"type": "shout"}', "type", "Must be one of"),
        ('{"type": "chat"}', "message", "non-empty string"),
        ('{"type": "chat", "message": "   "}', "message", "non-empty string"),
        (
            '{"type": "chat", "message": "hi", "conversation": "7"}',
            "conversation",
            "positive integer",
        ),
        (
            '{"type": "chat", "message": "hi", "conversation": true}',
            "conversation",
            "positive integer",
        ),
        ('{"type": "chat", "message": "hi", "provider": 3}', "provider", "string"),
        ('{"type": "chat", "message": "hi", "base_url": "http://evil"}', "base_url", "upstream"),
    ],
)
async def test_a_malformed_frame_gets_an_error_frame_and_the_connection_stays(
    browser: WebsocketCommunicator, text: str, field: str | None, message: str
) -> None:
    await browser.send_to(text_data=text)
    frame = await browser.receive_json_from(timeout=10)

    assert frame["type"] == "error"
    assert frame["error"]["type"] == "invalid_message"
    assert frame["error"].get("field") == field
    assert message in frame["error"]["message"]
    assert await Conversation.objects.acount() == 0  # nothing was stored
    # Still open, and still answering.
    frames = await answer(browser, {"conversation": None, "message": "still here"})
    assert frames[-1]["type"] == "done"


async def test_a_binary_frame_gets_an_error_frame(browser: WebsocketCommunicator) -> None:
    await browser.send_to(bytes_data=b"\x00\x01")
    frame = await browser.receive_json_from(timeout=10)
    assert (frame["type"], frame["error"]["type"]) == ("error", "invalid_message")


async def test_a_second_question_while_answering_is_refused(browser: WebsocketCommunicator) -> None:
    await browser.send_json_to({"type": "chat", "message": "go", "provider": "endless"})
    await until(browser, "chunk")
    await browser.send_json_to({"type": "chat", "message": "and this", "provider": "echo"})

    refused = await until(browser, "error")
    assert refused["error"]["type"] == "busy"
    await browser.send_json_to({"type": "cancel"})
    assert (await until(browser, "done"))["status"] == "cancelled"


async def test_each_answer_is_accounted_like_the_http_chat(
    browser: WebsocketCommunicator,
) -> None:
    from providers.models import UsageRecord

    await answer(browser, {"message": "count these words"})
    await answer(browser, {"message": "hello", "provider": "refusing"})
    await browser.send_json_to({"type": "chat", "message": "go", "provider": "endless"})
    await until(browser, "chunk")
    await browser.send_json_to({"type": "cancel"})
    await until(browser, "done")

    await runtime.usage_recorder.flush()
    rows = [row async for row in UsageRecord.objects.order_by("id")]
    assert [(r.client, r.endpoint, r.provider, r.outcome) for r in rows] == [
        ("alice", "/ws/chat/", "echo", "ok"),
        ("alice", "/ws/chat/", "refusing", "error"),
        ("alice", "/ws/chat/", "endless", "cancelled"),
    ]
    assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (3, 4)
    assert rows[0].ttft_ms is not None and rows[0].stream is True
    assert rows[1].error_kind == "bad_request"


# --- authentication and origin ---------------------------------------------


async def test_a_key_client_chats_without_an_origin_and_owns_its_conversation(
    key_client: WebsocketCommunicator, chat_key: tuple[ClientAPIKey, str]
) -> None:
    frames = await answer(key_client, {"conversation": None, "message": "Hi from a script"})

    assert frames[-1]["type"] == "done"
    conversation = await Conversation.objects.aget(pk=frames[0]["conversation"])
    assert conversation.client_key_id == chat_key[0].pk and conversation.user_id is None


async def test_an_admin_key_may_chat_too(
    providers: None, admin_key: tuple[ClientAPIKey, str]
) -> None:
    communicator = await connect(key_headers(admin_key[1]))
    frames = await answer(communicator, {"conversation": None, "message": "Hi"})
    await communicator.disconnect()
    assert frames[-1]["type"] == "done"


@pytest.mark.parametrize(
    "headers",
    [
        [ORIGIN],  # no login at all
        [ORIGIN, (b"cookie", b"sessionid=not-a-session")],
        [(b"authorization", b"Bearer echo-not-a-real-key")],
        [(b"authorization", b"Basic dXNlcjpwdw==")],
    ],
    ids=["anonymous", "bad-session", "unknown-key", "not-bearer"],
)
async def test_a_connection_without_a_valid_login_or_key_is_refused(
    providers: None, headers: list[tuple[bytes, bytes]]
) -> None:
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=headers)
    connected, code = await communicator.connect(timeout=10)
    assert (connected, code) == (False, 4401)


async def test_a_revoked_key_is_refused(
    providers: None, chat_key: tuple[ClientAPIKey, str]
) -> None:
    await database_sync_to_async(client_key_revoke)(name=chat_key[0].name)
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=key_headers(chat_key[1]))
    assert (await communicator.connect(timeout=10))[0] is False


@pytest.mark.parametrize(
    "origin",
    [b"http://evil.example", b"https://testserver.evil.example", b"null"],
)
async def test_a_session_from_another_origin_is_refused(
    user_session: tuple[Any, str], origin: bytes
) -> None:
    headers = [(b"origin", origin), (b"cookie", user_session[1].encode())]
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect(timeout=10)
    assert connected is False


async def test_a_session_without_an_origin_is_refused(user_session: tuple[Any, str]) -> None:
    communicator = WebsocketCommunicator(
        router, "/ws/chat/", headers=[(b"cookie", user_session[1].encode())]
    )
    assert (await communicator.connect(timeout=10))[0] is False


async def test_a_key_client_that_sends_a_foreign_origin_is_refused(
    providers: None, chat_key: tuple[ClientAPIKey, str]
) -> None:
    headers = [(b"origin", b"http://evil.example"), *key_headers(chat_key[1])]
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=headers)
    assert (await communicator.connect(timeout=10))[0] is False


async def test_origins_follow_allowed_hosts(user_session: tuple[Any, str], settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    cookie = (b"cookie", user_session[1].encode())
    allowed = WebsocketCommunicator(
        router,
        "/ws/chat/",
        headers=[(b"host", b"chat.example.com"), (b"origin", b"https://chat.example.com"), cookie],
    )
    allowed.scope["scheme"] = "wss"
    assert (await allowed.connect(timeout=10))[0] is True
    await allowed.disconnect()
    old_host = WebsocketCommunicator(router, "/ws/chat/", headers=[ORIGIN, cookie])
    assert (await old_host.connect(timeout=10))[0] is False


def test_production_refuses_a_wildcard_in_allowed_hosts(tmp_path: Any) -> None:
    result = settings_of(
        tmp_path,
        ECHO_ENV="production",
        SECRET_KEY="x" * 50,
        ECHO_ENCRYPTION_KEYS="ZWNoby10ZXN0LWVuY3J5cHRpb24ta2V5LTMyYnl0ZXM=",
        ALLOWED_HOSTS="echo.example.com,*",
    )
    assert result.returncode != 0
    assert "ALLOWED_HOSTS must not contain '*'" in result.stderr


# --- limits -----------------------------------------------------------------


async def test_a_frame_over_the_size_limit_gets_an_error_frame(
    browser: WebsocketCommunicator, settings: Any
) -> None:
    settings.ECHO_WS_MAX_FRAME_BYTES = 1024
    await browser.send_json_to({"type": "chat", "message": "é" * 600})  # 1200 bytes in UTF-8

    frame = await browser.receive_json_from(timeout=10)
    assert frame["error"]["type"] == "frame_too_large"
    assert frame["limit"] == 1024
    assert await Conversation.objects.acount() == 0
    assert (await answer(browser, {"message": "short"}))[-1]["type"] == "done"


async def test_frames_over_the_rate_limit_get_error_frames_then_abuse_closes(
    browser: WebsocketCommunicator, settings: Any
) -> None:
    settings.ECHO_WS_MESSAGES_PER_MINUTE = 3
    for _ in range(3):
        await browser.send_json_to({"type": "providers"})
        assert (await browser.receive_json_from(timeout=10))["type"] == "providers"

    await browser.send_json_to({"type": "chat", "message": "one too many"})
    refused = await browser.receive_json_from(timeout=10)
    assert refused["error"]["type"] == "rate_limited"
    assert 1 <= refused["retry_after"] <= 60
    assert await Conversation.objects.acount() == 0

    # A client that goes on at the same pace is closed: policy violation.
    for _ in range(2):
        await browser.send_json_to({"type": "providers"})
        assert (await browser.receive_json_from(timeout=10))["error"]["type"] == "rate_limited"
    closed = await browser.receive_output()
    assert closed == {"type": "websocket.close", "code": 1008}


# --- cancel -----------------------------------------------------------------


async def test_cancel_stops_the_answer_and_the_upstream_and_keeps_the_partial_text(
    browser: WebsocketCommunicator,
) -> None:
    await browser.send_json_to({"type": "chat", "message": "go on forever", "provider": "endless"})
    start = await until(browser, "start")
    received = [await until(browser, "chunk"), await until(browser, "chunk")]
    await browser.send_json_to({"type": "cancel"})

    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(await browser.receive_json_from(timeout=10))
    done = frames[-1]
    assert (done["status"], done["finish_reason"]) == ("cancelled", "cancelled")
    assert done["provider"] == "endless"
    assert await asyncio.to_thread(Endless.closed.wait, 2.0), "the upstream generator still runs"
    stopped_at = Endless.yielded
    await asyncio.sleep(0.1)
    assert Endless.yielded == stopped_at
    assert runtime.registry.status("endless")["active_requests"] == 0

    reply = (await stored(start["conversation"]))[-1]
    shown = "".join(f["content"] for f in received + frames if f["type"] == "chunk")
    assert (reply.status, reply.content) == ("cancelled", shown)
    assert reply.content.startswith("w1 w2 ")
    # The connection goes on: the next question is answered.
    frames = await answer(browser, {"conversation": start["conversation"], "message": "hi"})
    assert frames[-1]["status"] == "complete"


class HeldSend:
    """Holds the socket's send of one chunk's frame (its text) until released: a client slow to read."""

    def __init__(self, content: str) -> None:
        self.content = content
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    def install(self, monkeypatch: Any) -> None:
        real_send = ChatConsumer.send
        held = self

        async def send(consumer: ChatConsumer, text_data: str | None = None, **kwargs: Any) -> None:
            if text_data is not None and json.loads(text_data).get("content") == held.content:
                held.holding.set()
                await held.release.wait()
            await real_send(consumer, text_data=text_data, **kwargs)

        monkeypatch.setattr(ChatConsumer, "send", send)


async def test_a_cancel_during_a_chunks_send_lets_it_out_and_stores_what_the_page_got(
    browser: WebsocketCommunicator, monkeypatch: Any
) -> None:
    held = HeldSend("w3 ")
    held.install(monkeypatch)
    await browser.send_json_to({"type": "chat", "message": "go on forever", "provider": "endless"})
    start = await until(browser, "start")
    await asyncio.wait_for(held.holding.wait(), 5)
    await browser.send_json_to({"type": "cancel"})
    await asyncio.sleep(0.1)  # the cancel is read while the frame is held
    held.release.set()

    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(await browser.receive_json_from(timeout=10))
    shown = "".join(f["content"] for f in frames if f["type"] == "chunk")
    assert shown == "w1 w2 w3 "  # the held piece went out, and nothing after it
    assert (frames[-1]["status"], frames[-1]["finish_reason"]) == ("cancelled", "cancelled")
    reply = (await stored(start["conversation"]))[-1]
    assert (reply.status, reply.content) == ("cancelled", shown)


async def test_a_chunks_send_that_never_ends_is_cancelled_after_the_grace(
    browser: WebsocketCommunicator, monkeypatch: Any
) -> None:
    monkeypatch.setattr(consumer_module, "SEND_GRACE_SECONDS", 0.2)
    held = HeldSend("w2 ")  # never released: a client that stopped reading
    held.install(monkeypatch)
    await browser.send_json_to({"type": "chat", "message": "go on forever", "provider": "endless"})
    start = await until(browser, "start")
    await asyncio.wait_for(held.holding.wait(), 5)
    await browser.send_json_to({"type": "cancel"})

    done = await until(browser, "done")
    assert (done["status"], done["finish_reason"]) == ("cancelled", "cancelled")
    assert await asyncio.to_thread(Endless.closed.wait, 2.0), "the upstream generator still runs"
    reply = (await stored(start["conversation"]))[-1]
    assert reply.status == "cancelled" and reply.content.startswith("w1 w2 ")


async def test_an_answers_chunks_are_sent_without_a_task_each(
    browser: WebsocketCommunicator, monkeypatch: Any
) -> None:
    """A chunk's frame is sent by the answer's task itself: tasks made do not grow with the chunks."""
    made = []
    loop = asyncio.get_running_loop()
    real_create_task = loop.create_task

    def counted(coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", repr(coro)))
        return real_create_task(coro, **kwargs)

    monkeypatch.setattr(loop, "create_task", counted)
    await browser.send_json_to({"type": "chat", "message": "go on forever", "provider": "endless"})
    await until(browser, "start")
    before = len(made)
    for _ in range(15):
        await until(browser, "chunk")
    assert len(made) - before <= 2, made[before:]
    await browser.send_json_to({"type": "cancel"})
    await until(browser, "done")


def test_a_frame_is_compact_json_and_what_orjson_cannot_write_is_written_by_json() -> None:
    assert (
        frame_text({"type": "chunk", "content": "café 🙂"})
        == '{"type":"chunk","content":"café 🙂"}'
    )
    lone = {"type": "chunk", "content": "a \ud800 b"}
    assert json.loads(frame_text(lone)) == lone
    assert json.loads(frame_text({"at": Decimal("1.5"), 1: "x"})) == {"at": "1.5", "1": "x"}


async def test_cancel_with_nothing_streaming_is_harmless(browser: WebsocketCommunicator) -> None:
    await browser.send_json_to({"type": "cancel"})
    assert (await answer(browser, {"message": "hello"}))[-1]["type"] == "done"


async def test_closing_the_socket_mid_answer_cancels_the_upstream_and_marks_the_answer(
    user_session: tuple[Any, str],
) -> None:
    communicator = await connect([ORIGIN, (b"cookie", user_session[1].encode())])
    await communicator.send_json_to({"type": "chat", "message": "go", "provider": "endless"})
    start = await until(communicator, "start")
    await until(communicator, "chunk")
    await communicator.disconnect()

    assert await asyncio.to_thread(Endless.closed.wait, 2.0)
    reply = (await stored(start["conversation"]))[-1]
    assert reply.status == "cancelled"
    assert reply.content.startswith("w1 ")


# --- errors -----------------------------------------------------------------


async def test_an_unknown_provider_is_an_error_naming_the_field_and_stores_nothing(
    browser: WebsocketCommunicator,
) -> None:
    frames = await answer(browser, {"message": "hello", "provider": "nope"})

    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["error"] == {
        "type": "provider_not_found",
        "message": "No provider named 'nope'.",
        "field": "provider",
        "provider": "nope",
    }
    assert await Conversation.objects.acount() == 0


async def test_a_refusal_before_the_first_chunk_ends_the_answer_with_the_api_error(
    browser: WebsocketCommunicator,
) -> None:
    frames = await answer(browser, {"message": "hello", "provider": "refusing"})

    assert [f["type"] for f in frames] == ["start", "error"]
    error = frames[-1]
    assert error["error"] == {
        "type": "bad_request",
        "message": "prompt rejected by policy",
        "provider": "refusing",
    }
    assert error["message_id"] == frames[0]["message_id"]
    reply = (await stored(frames[0]["conversation"]))[-1]
    assert (reply.status, reply.content, reply.error) == ("failed", "", error["error"])


async def test_a_failure_mid_stream_keeps_the_partial_answer_marked_failed(
    browser: WebsocketCommunicator,
) -> None:
    frames = await answer(browser, {"message": "hello", "provider": "dies"})

    assert [f["type"] for f in frames] == ["start", "chunk", "chunk", "error"]
    assert (frames[-1]["error"]["type"], frames[-1]["error"]["provider"]) == ("unavailable", "dies")
    reply = (await stored(frames[0]["conversation"]))[-1]
    assert (reply.status, reply.content, reply.provider) == ("failed", "partial answer", "dies")
    assert reply.first_chunk_ms is not None


async def test_an_unknown_model_fails_the_answer_with_the_api_error(
    browser: WebsocketCommunicator,
) -> None:
    frames = await answer(browser, {"message": "hello", "provider": "echo", "model": "gpt-9"})
    assert frames[-1]["error"]["type"] == "model_not_found"


# --- ownership --------------------------------------------------------------


async def test_another_owners_conversation_is_not_found(
    browser: WebsocketCommunicator, key_client: WebsocketCommunicator
) -> None:
    mine = await answer(browser, {"message": "a secret of mine"})
    conversation = mine[0]["conversation"]

    frames = await answer(key_client, {"conversation": conversation, "message": "let me in"})
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["error"] == {
        "type": "not_found",
        "message": f"No conversation {conversation}.",
        "field": "conversation",
    }
    assert len(await stored(conversation)) == 2  # nothing added to it


# --- provider changes pushed ------------------------------------------------


@pytest.fixture
async def serving_here() -> None:
    """Make the test's loop this process's serving loop, as a worker's is: saves apply on it."""
    runtime.set_serving_loop(asyncio.get_running_loop())


async def test_provider_changes_reach_open_sockets_and_the_next_question(
    serving_here: None, browser: WebsocketCommunicator
) -> None:
    def names(frame: dict[str, Any]) -> set[str]:
        return {p["name"] for p in frame["providers"]}

    await database_sync_to_async(provider_config_create)(
        name="newcomer", plugin="echo", settings={"prefix": "New: "}
    )
    assert "newcomer" in names(await until(browser, "providers"))
    frames = await answer(browser, {"message": "hi", "provider": "newcomer"})
    assert "".join(f["content"] for f in frames if f["type"] == "chunk") == "New: hi"

    @database_sync_to_async
    def disable_parrot() -> None:
        from providers.models import ProviderConfig

        row = ProviderConfig.objects.get(name="parrot")
        row.enabled = False
        row.save()

    await disable_parrot()
    assert "parrot" not in names(await until(browser, "providers"))
    frames = await answer(browser, {"message": "hi", "provider": "parrot"})
    assert frames[-1]["error"]["type"] == "provider_disabled"  # configured, not serving

    @database_sync_to_async
    def delete_newcomer() -> None:
        from providers.models import ProviderConfig

        provider_config_delete(config=ProviderConfig.objects.get(name="newcomer"))

    await delete_newcomer()
    assert "newcomer" not in names(await until(browser, "providers"))


async def test_provider_changes_reach_sockets_with_a_redis_channel_layer(
    serving_here: None, user_session: tuple[Any, str], settings: Any
) -> None:
    """With Redis (several workers), each worker's pages follow its own registry's change."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [require_redis()], "prefix": f"echo-test-{uuid.uuid4().hex[:8]}"},
        }
    }
    communicator = await connect([ORIGIN, (b"cookie", user_session[1].encode())])
    try:
        await database_sync_to_async(provider_config_create)(
            name="newcomer", plugin="echo", settings={"prefix": "New: "}
        )
        frame = await until(communicator, "providers")
        assert "newcomer" in {p["name"] for p in frame["providers"]}
    finally:
        await communicator.disconnect()
