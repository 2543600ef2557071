"""Tell every worker that a provider's configuration changed, and listen for it.

Workers share the channel layer (Redis in a multi-process deployment). A
message carries ``(name, revision, force)`` and is only a hint to look:
every serving process runs ``listen_for_provider_changes``, which hands each
message to ``providers.runtime.config_sync``; that re-reads the row, the source of
truth, unless the revision is not newer than the one it serves. The sender
receives its own message too and drops it by revision. With the in-memory
layer there is only one process and nothing to tell.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

logger = logging.getLogger(__name__)

GROUP = "echo.providers"
EVENT_TYPE = "provider.changed"
# A subscription is renewed this often, as a backstop for a group membership
# that expired in Redis; the repair pass runs after each one.
RESUBSCRIBE_SECONDS = 3600


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
        async_to_sync(layer.group_send)(GROUP, message)
    except Exception:
        logger.exception("could not broadcast the change of provider %s", name)


async def listen_for_provider_changes() -> None:
    """Apply the changes other processes announce, until cancelled.

    After each (re)subscription the repair pass runs, so that a change
    broadcast while this worker was not listening is not lost.
    """
    from providers.runtime import config_sync

    layer = _shared_layer()
    if layer is None:
        return
    delay = 1.0
    while True:
        try:
            channel = await layer.new_channel()
            await layer.group_add(GROUP, channel)
            await config_sync.repair_all()
            delay = 1.0
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
            logger.exception("provider change listener failed; retrying in %.0fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
