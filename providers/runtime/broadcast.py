"""Tell every worker that a provider's configuration changed, and listen for it.

Workers share the channel layer (Redis in a multi-process deployment). A
message carries ``(name, revision, force)`` and is only a hint to look:
every serving process runs ``listen_for_provider_changes``, which hands each
message to ``providers.runtime.config_sync``; that re-reads the row, the source of
truth, unless the revision is not newer than the one it serves. The sender
receives its own message too and drops it by revision. With the in-memory
layer there is only one process and nothing to tell.

While the layer (Redis) is unreachable the listener tries again every
``RETRY_SECONDS`` (a random delay in that range, so that workers do not
reconnect in step), and once back it runs the repair pass: a change saved
during the outage reaches the worker within about a second of Redis returning.
"""

from __future__ import annotations

import asyncio
import logging
import random

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

logger = logging.getLogger(__name__)

GROUP = "echo.providers"
EVENT_TYPE = "provider.changed"
# A subscription is renewed this often, as a backstop for a group membership
# that expired in Redis; the repair pass runs after each one.
RESUBSCRIBE_SECONDS = 3600
#: While the channel layer is unreachable, try again after a random delay in this range.
RETRY_SECONDS = (0.5, 1.0)
#: A call to the layer gives up after this long (a Redis that hangs must hold
#: neither a save nor a reconnection).
LAYER_TIMEOUT_SECONDS = 2.0


def retry_delay() -> float:
    """Return how long to wait before trying the unreachable channel layer again."""
    return random.uniform(*RETRY_SECONDS)


def _shared_layer():
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None
    return layer


def publish_provider_changed(
    name: str, revision: int | None = None, *, force: bool = False
) -> None:
    """Broadcast that provider NAME changed (to REVISION, when known); log a failure, never raise.

    FORCE asks every worker to rebuild the provider even from the revision it serves.
    """
    layer = _shared_layer()
    if layer is None:
        return
    message = {"type": EVENT_TYPE, "name": name, "revision": revision, "force": force}
    try:
        async_to_sync(_send)(layer, message)
    except Exception:
        logger.exception("could not broadcast the change of provider %s", name)


async def _send(layer, message: dict) -> None:
    async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
        await layer.group_send(GROUP, message)


async def listen_for_provider_changes() -> None:
    """Apply the changes other processes announce, until cancelled.

    After each (re)subscription the repair pass runs, so that a change
    broadcast while this worker was not listening is not lost.
    """
    from providers.runtime import config_sync

    layer = _shared_layer()
    if layer is None:
        return
    failing = False
    while True:
        try:
            channel = await layer.new_channel()
            async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                await layer.group_add(GROUP, channel)
            await config_sync.repair_all()
            if failing:
                logger.warning("provider change listener is listening again")
                failing = False
            loop = asyncio.get_running_loop()
            resubscribe_at = loop.time() + RESUBSCRIBE_SECONDS
            while loop.time() < resubscribe_at:
                try:
                    message = await asyncio.wait_for(layer.receive(channel), RESUBSCRIBE_SECONDS)
                except TimeoutError:
                    break
                if message.get("type") == EVENT_TYPE:
                    await config_sync.handle_message(message)
            await layer.group_discard(GROUP, channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Logged once per outage: the retries below come every second or so.
            if not failing:
                logger.exception(
                    "provider change listener failed; retrying every %g-%gs", *RETRY_SECONDS
                )
                failing = True
            await asyncio.sleep(retry_delay())
