"""A revoked (deleted, re-scoped) client key loses the chat websockets it opened before.

Before, the key was checked at the handshake only: a socket opened before the
revocation went on chatting for as long as it stayed open. Now the key's
sockets are closed through the channel layer (in-memory here, Redis across
workers) and, should that message be lost, at their next frame.
"""

# The fixtures imported from test_consumers are redefined as test parameters, as pytest wants.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from plugins_api.access.client_keys import forget_cached_keys
from plugins_api.access.key_changes import client_key_issue, client_key_revoke
from plugins_api.models import ClientAPIKey
from tests.plugins_api.test_consumers import (  # noqa: F401 - fixtures
    Endless,
    answer,
    connect,
    key_headers,
    providers,
    stored,
    until,
)
from tests.services import require_redis


async def closed_for_the_key(communicator: WebsocketCommunicator) -> tuple[dict[str, Any], int]:
    """Return the error frame and the close code that end COMMUNICATOR (other frames skipped)."""
    while True:
        output = await communicator.receive_output(timeout=2)
        if output["type"] == "websocket.close":
            pytest.fail(f"closed with no error frame first (code {output.get('code')})")
        frame = json.loads(output["text"])
        if frame["type"] == "error" and frame["error"]["type"] in ("key_revoked", "forbidden"):
            break
    closed = await communicator.receive_output(timeout=2)
    assert closed["type"] == "websocket.close"
    return frame, closed["code"]


@pytest.fixture
def two_keys(providers: None) -> tuple[tuple[ClientAPIKey, str], tuple[ClientAPIKey, str]]:
    forget_cached_keys()
    return client_key_issue(name="alpha", scope="chat"), client_key_issue(name="beta", scope="chat")


async def test_revoking_a_key_closes_its_open_socket_at_once(two_keys: Any) -> None:
    (alpha, alpha_key), (_, beta_key) = two_keys
    alpha_socket = await connect(key_headers(alpha_key))
    beta_socket = await connect(key_headers(beta_key))
    assert (await answer(alpha_socket, {"message": "hi"}))[-1]["type"] == "done"

    await database_sync_to_async(client_key_revoke)(name=alpha.name)

    frame, code = await closed_for_the_key(alpha_socket)
    assert code == 4401
    assert frame["error"]["type"] == "key_revoked"
    # Another key's socket is not touched.
    assert (await answer(beta_socket, {"message": "still here"}))[-1]["type"] == "done"
    await beta_socket.disconnect()
    await alpha_socket.disconnect()


async def test_revoking_a_key_mid_answer_stops_the_answer_and_keeps_its_text(
    two_keys: Any,
) -> None:
    (alpha, alpha_key), _ = two_keys
    socket = await connect(key_headers(alpha_key))
    await socket.send_json_to({"type": "chat", "message": "go", "provider": "endless"})
    start = await until(socket, "start")
    await until(socket, "chunk")

    await database_sync_to_async(client_key_revoke)(name=alpha.name)

    _, code = await closed_for_the_key(socket)
    assert code == 4401
    assert await asyncio.to_thread(Endless.closed.wait, 2.0), "the upstream still streams"
    await socket.disconnect()
    reply = (await stored(start["conversation"]))[-1]
    assert reply.status == "cancelled"
    assert reply.content.startswith("w1 ")


async def test_deleting_a_key_closes_its_open_socket(two_keys: Any) -> None:
    (alpha, alpha_key), _ = two_keys
    socket = await connect(key_headers(alpha_key))

    await ClientAPIKey.objects.filter(pk=alpha.pk).adelete()

    _, code = await closed_for_the_key(socket)
    assert code == 4401
    await socket.disconnect()


async def test_a_key_whose_scope_no_longer_allows_chat_is_closed_with_4403(two_keys: Any) -> None:
    (alpha, alpha_key), _ = two_keys
    socket = await connect(key_headers(alpha_key))

    @database_sync_to_async
    def rescope() -> None:
        # A scope without chat (none of today's scopes; an admin editing the row by hand).
        row = ClientAPIKey.objects.get(pk=alpha.pk)
        row.scope = "metrics"
        row.save()

    await rescope()

    frame, code = await closed_for_the_key(socket)
    assert (frame["error"]["type"], code) == ("forbidden", 4403)
    await socket.disconnect()


async def test_saving_a_key_that_still_may_chat_keeps_its_socket(two_keys: Any) -> None:
    (alpha, alpha_key), _ = two_keys
    socket = await connect(key_headers(alpha_key))

    @database_sync_to_async
    def promote() -> None:
        row = ClientAPIKey.objects.get(pk=alpha.pk)
        row.scope = ClientAPIKey.SCOPE_ADMIN  # admin keys may chat too
        row.save()

    await promote()

    assert (await answer(socket, {"message": "hi"}))[-1]["type"] == "done"
    await socket.disconnect()


async def test_a_lost_message_is_caught_by_the_next_frame_within_the_cache_interval(
    two_keys: Any,
) -> None:
    """Revoked by SQL (no signal, no message): the next frame verifies the key again."""
    (alpha, alpha_key), _ = two_keys
    socket = await connect(key_headers(alpha_key))
    await ClientAPIKey.objects.filter(pk=alpha.pk).aupdate(revoked_at=timezone.now())
    # The cached verification still says "valid" until it expires (client_keys.CACHE_SECONDS).
    assert (await answer(socket, {"message": "hi"}))[-1]["type"] == "done"

    forget_cached_keys()  # what CACHE_SECONDS passing does
    await socket.send_json_to({"type": "chat", "message": "and now?"})

    frame, code = await closed_for_the_key(socket)
    assert (frame["error"]["type"], code) == ("key_revoked", 4401)
    await socket.disconnect()


async def test_revocation_closes_the_key_sockets_of_every_consumer_through_redis(
    two_keys: Any, settings: Any
) -> None:
    """With Redis (several workers), the message reaches each consumer of the key."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [require_redis()], "prefix": f"echo-test-{uuid.uuid4().hex[:8]}"},
        }
    }
    (alpha, alpha_key), (_, beta_key) = two_keys
    first = await connect(key_headers(alpha_key))
    second = await connect(key_headers(alpha_key))
    other = await connect(key_headers(beta_key))
    try:
        await database_sync_to_async(client_key_revoke)(name=alpha.name)
        for socket in (first, second):
            frame, code = await closed_for_the_key(socket)
            assert (frame["error"]["type"], code) == ("key_revoked", 4401)
        assert (await answer(other, {"message": "hi"}))[-1]["type"] == "done"
    finally:
        for socket in (first, second, other):
            await socket.disconnect()
