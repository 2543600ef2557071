"""Close the open chat sockets of a client key that was revoked, deleted or lost its chat scope.

A key checked at the handshake would otherwise keep chatting for as long as
its socket stays open. Each key-authenticated chat consumer joins the group
of its key (``key_group``); a saved or deleted key sends, once committed, one
message to that group, and each consumer closes if the key may no longer
chat. With the Redis channel layer this reaches the sockets of every worker,
with the in-memory layer those of this process. A lost message (or a change
made by SQL) is caught by the consumer itself, which verifies its key again
before each frame: within ``client_keys.CACHE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from plugins_api.access.client_keys import forget_cached_keys
from providers.runtime.broadcast import LAYER_TIMEOUT_SECONDS
from providers.runtime.process import run_in_serving_loop

logger = logging.getLogger(__name__)

EVENT_TYPE = "client_key.changed"


def key_group(key_id: int) -> str:
    """Return the channel-layer group of the chat sockets of client key KEY_ID."""
    return f"echo.chat.client-key.{key_id}"


def client_key_saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    """After commit, tell the sockets of key INSTANCE its revocation and scope (a new key has none)."""
    if created:
        return
    key_id, scope, revoked = instance.pk, instance.scope, instance.revoked_at is not None
    transaction.on_commit(lambda: publish_client_key_changed(key_id, scope=scope, revoked=revoked))


def client_key_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """After commit, close the sockets of deleted key INSTANCE (as for a revoked one)."""
    key_id, scope = instance.pk, instance.scope
    transaction.on_commit(lambda: publish_client_key_changed(key_id, scope=scope, revoked=True))


def publish_client_key_changed(key_id: int, *, scope: str, revoked: bool) -> None:
    """Send key KEY_ID's group its SCOPE and whether it is REVOKED; log a failure, never raise.

    The change has committed already; a socket that misses the message (the
    layer, Redis, is down or hangs: the send gives up after
    ``LAYER_TIMEOUT_SECONDS``) is closed by its own next check of the key.
    """
    # This process forgets its verifications now: its HTTP requests stop at once too.
    forget_cached_keys()
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": EVENT_TYPE, "key_id": key_id, "scope": scope, "revoked": revoked}
    try:
        # On the serving loop, where the in-memory layer's consumers wait.
        run_in_serving_loop(_send, layer, key_group(key_id), message)
    except Exception:
        logger.exception("could not tell the chat sockets of client key %s that it changed", key_id)


async def _send(layer: Any, group: str, message: dict[str, Any]) -> None:
    async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
        await layer.group_send(group, message)
