"""Hostile chat websocket frames: each gets an error frame naming the field, and the socket stays.

Before, a deeply nested frame, a NUL or lone surrogate, or an over-long model
name made the consumer raise: the server closed the socket with 1011 (or the
value reached the database, which PostgreSQL refuses). Connections go through
the same router as in ``test_consumers`` (origin check, session auth).
"""

# The fixtures imported from test_consumers are redefined as test parameters, as pytest wants.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from plugins_api.chat import consumer as consumers
from plugins_api.models import Conversation
from providers.plugins.echo_provider import EchoProvider
from providers.types import ChatRequest, StreamingChunk
from tests.plugins_api.test_consumers import (  # noqa: F401 - fixtures
    ORIGIN,
    Endless,
    add_provider,
    answer,
    browser,
    connect,
    providers,
    router,
    stored,
    until,
    user_session,
)


class OddUpstreamProvider(EchoProvider):
    """An upstream that answers with what no database column takes: NUL, a lone surrogate, a huge model name."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        model = "m\x00" + "x" * 5000
        yield StreamingChunk(content="a\x00b\ud800c", model=model)
        yield StreamingChunk(is_final=True, finish_reason="stop\x00" * 20, model=model)


async def assert_still_answers(communicator: WebsocketCommunicator) -> None:
    """The connection is open and a normal question is answered."""
    frames = await answer(communicator, {"message": "still there?"})
    assert frames[-1]["type"] == "done", frames


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("text", "field"),
    [
        # Nested past the recursion limit, well under the 64 KiB frame limit: no path to name.
        ('{"type": "chat", "message": "hi", "extra": ' + deep(20_000) + "}", None),
        ('{"type": "chat", "message": "hi", "extra": ' + deep(100) + "}", "extra" + ".0" * 63),
        ('{"type": "chat", "message": "a\\u0000b"}', "message"),
        ('{"type": "chat", "message": "a\\ud800b"}', "message"),
        ('{"type": "chat", "message": "a\\udfffb"}', "message"),
        ('{"type": "chat", "message": "hi", "model": "gpt\\u0000"}', "model"),
        ('{"type": "chat", "message": "hi", "provider": "echo\\ud83d"}', "provider"),
        ('{"type": "chat", "message": "hi", "conversation": 1, "x\\u0000": 1}', None),
        ('{"type": "chat", "message": "hi", "model": "' + "m" * 201 + '"}', "model"),
        ('{"type": "chat", "message": "hi", "provider": "' + "p" * 201 + '"}', "provider"),
        ('{"type": "chat", "message": "hi", "conversation": ' + str(2**70) + "}", "conversation"),
        ('{"type": "chat", "message": "hi", "conversation": 1e400}', "conversation"),
    ],
    ids=[
        "nested-past-recursion",
        "nested-65-levels",
        "nul-in-message",
        "high-surrogate-in-message",
        "low-surrogate-in-message",
        "nul-in-model",
        "lone-surrogate-in-provider",
        "nul-in-a-key",
        "model-201-chars",
        "provider-201-chars",
        "conversation-id-past-bigint",
        "conversation-id-infinite",
    ],
)
async def test_a_hostile_frame_gets_an_error_frame_naming_the_field_and_the_socket_stays(
    browser: WebsocketCommunicator, text: str, field: str | None
) -> None:
    assert len(text.encode()) < 64 * 1024
    await browser.send_to(text_data=text)

    frame = await browser.receive_json_from(timeout=10)
    assert frame["type"] == "error"
    assert frame["error"]["type"] == "invalid_message"
    assert frame["error"].get("field") == field, frame
    assert await Conversation.objects.acount() == 0
    await assert_still_answers(browser)


async def test_a_raw_lone_surrogate_in_the_text_is_refused_naming_the_field(
    browser: WebsocketCommunicator,
) -> None:
    """Not escaped: the frame's text itself holds the surrogate (so it cannot be encoded)."""
    await browser.send_to(text_data='{"type": "chat", "message": "a\ud800"}')

    frame = await browser.receive_json_from(timeout=10)
    assert frame["error"]["field"] == "message"
    await assert_still_answers(browser)


async def test_a_model_of_200_characters_is_still_accepted(browser: WebsocketCommunicator) -> None:
    frames = await answer(browser, {"message": "hi", "provider": "echo", "model": "m" * 200})
    assert frames[0]["type"] == "start"
    assert frames[0]["model"] == "m" * 200


async def test_a_message_over_the_setting_is_refused_naming_the_field(
    browser: WebsocketCommunicator, settings: Any
) -> None:
    settings.ECHO_WS_MAX_MESSAGE_CHARS = 100
    await browser.send_json_to({"type": "chat", "message": "x" * 101})

    frame = await browser.receive_json_from(timeout=10)
    assert frame["error"]["field"] == "message"
    assert "100" in frame["error"]["message"]
    assert await Conversation.objects.acount() == 0
    frames = await answer(browser, {"message": "x" * 100})
    assert frames[-1]["type"] == "done"


async def test_what_an_upstream_answers_is_stored_cleaned_and_the_answer_completes(
    browser: WebsocketCommunicator,
) -> None:
    """PostgreSQL refuses NUL, lone surrogates and over-long names: the stored answer has none."""
    await database_sync_to_async(add_provider)("odd", OddUpstreamProvider)
    frames = await answer(browser, {"message": "hi", "provider": "odd"})

    assert frames[-1]["type"] == "done", frames
    reply = (await stored(frames[0]["conversation"]))[-1]
    assert reply.status == "complete"
    assert reply.content == "ab\ufffdc"
    assert reply.model.startswith("mxxx") and len(reply.model) <= 200
    assert "\x00" not in reply.model
    assert "\x00" not in reply.finish_reason and len(reply.finish_reason) <= 32


async def test_a_failure_while_handling_a_frame_is_an_error_frame_not_a_closed_socket(
    browser: WebsocketCommunicator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception (here the database refusing the write) answers that frame only."""

    async def database_down(**kwargs: Any) -> None:
        raise RuntimeError("connection to the database lost")

    monkeypatch.setattr(consumers, "chat_turn_begin_async", database_down)
    await browser.send_json_to({"type": "chat", "message": "hi"})

    frame = await browser.receive_json_from(timeout=10)
    assert frame["error"]["type"] == "internal_error"
    assert "RuntimeError" in frame["error"]["message"]
    assert "database lost" not in frame["error"]["message"]  # no internals to the client
    monkeypatch.undo()
    await assert_still_answers(browser)


async def test_cancel_sent_twice_ends_with_exactly_one_done(
    browser: WebsocketCommunicator,
) -> None:
    await browser.send_json_to({"type": "chat", "message": "go", "provider": "endless"})
    start = await until(browser, "start")
    await until(browser, "chunk")
    # Both at once: the second arrives while the answer stores the first one's outcome.
    await browser.send_json_to({"type": "cancel"})
    await browser.send_json_to({"type": "cancel"})

    frames = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        frames.append(await browser.receive_json_from(timeout=10))
    assert frames[-1]["type"] == "done", frames
    assert frames[-1]["status"] == "cancelled"
    assert await browser.receive_nothing(timeout=0.3)  # no second done, no error
    assert (await stored(start["conversation"]))[-1].status == "cancelled"
    await assert_still_answers(browser)


class DaphneCloseCodes:
    """The websocket server's send, refusing close codes as daphne (autobahn) does.

    Autobahn's ``sendClose`` raises for any code but 1000 and 3000-4999 before
    sending anything; daphne passes that exception back to the application.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def checked_send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.close" and message.get("code") is not None:
                code = message["code"]
                if code != 1000 and not 3000 <= code <= 4999:
                    raise Exception(
                        f"invalid close code {code} (must be 1000 or from [3000, 4999])"
                    )
            await send(message)

        await self.application(scope, receive, checked_send)


async def test_the_rate_limit_close_survives_a_server_that_refuses_1008(
    user_session: tuple[Any, str], settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ECHO_WS_MESSAGES_PER_MINUTE = 2
    communicator = WebsocketCommunicator(
        DaphneCloseCodes(router),
        "/ws/chat/",
        headers=[ORIGIN, (b"cookie", user_session[1].encode())],
    )
    assert (await communicator.connect(timeout=10))[0]
    await communicator.receive_json_from(timeout=10)  # the provider list
    for _ in range(2):
        await communicator.send_json_to({"type": "providers"})
        await communicator.receive_json_from(timeout=10)
    for _ in range(2):
        await communicator.send_json_to({"type": "providers"})
        assert (await communicator.receive_json_from(timeout=10))["error"]["type"] == "rate_limited"

    closed = await communicator.receive_output()
    assert closed == {"type": "websocket.close", "code": 4008}
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    await communicator.disconnect()


async def test_endless_is_stopped_when_the_socket_closes_after_the_cancels(
    user_session: tuple[Any, str],
) -> None:
    """Cancel, cancel, leave: the upstream stops and the answer is stored as cancelled."""
    communicator = await connect([ORIGIN, (b"cookie", user_session[1].encode())])
    await communicator.send_json_to({"type": "chat", "message": "go", "provider": "endless"})
    start = await until(communicator, "start")
    await until(communicator, "chunk")
    await communicator.send_json_to({"type": "cancel"})
    await communicator.send_json_to({"type": "cancel"})
    await communicator.disconnect()

    assert await asyncio.to_thread(Endless.closed.wait, 2.0)
    assert (await stored(start["conversation"]))[-1].status == "cancelled"
