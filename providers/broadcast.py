"""Tell every other worker that a provider's configuration changed.

Workers share the channel layer (Redis in a multi-process deployment). Each
serving process runs ``listen_for_provider_changes``; a message names the
provider, and the receiving worker reloads it from the database, which is
the source of truth. With the in-memory layer there is only one process and
nothing to tell.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

logger = logging.getLogger(__name__)

GROUP = "echo.providers"
EVENT_TYPE = "provider.changed"
ORIGIN = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
RESUBSCRIBE_SECONDS = 3600


def _shared_layer():
    layer = get_channel_layer()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None
    return layer


def publish_provider_changed(name: str) -> None:
    """Broadcast that provider NAME changed; a failure is logged, never raised."""
    layer = _shared_layer()
    if layer is None:
        return
    message = {"type": EVENT_TYPE, "name": name, "origin": ORIGIN}
    try:
        async_to_sync(layer.group_send)(GROUP, message)
    except Exception:
        logger.exception("could not broadcast the change of provider %s", name)


async def listen_for_provider_changes() -> None:
    """Reload providers that other processes changed, until cancelled.

    After each (re)subscription every provider is reloaded from the database,
    so that a change broadcast while this worker was not listening is not lost.
    """
    from providers.runtime import load_all_from_database, load_provider_from_database

    layer = _shared_layer()
    if layer is None:
        return
    delay = 1.0
    while True:
        try:
            channel = await layer.new_channel()
            await layer.group_add(GROUP, channel)
            await load_all_from_database()
            delay = 1.0
            loop = asyncio.get_running_loop()
            resubscribe_at = loop.time() + RESUBSCRIBE_SECONDS
            while loop.time() < resubscribe_at:
                try:
                    message = await asyncio.wait_for(layer.receive(channel), RESUBSCRIBE_SECONDS)
                except TimeoutError:
                    break
                if message.get("type") != EVENT_TYPE or message.get("origin") == ORIGIN:
                    continue
                logger.info("provider %s changed in another worker; reloading", message["name"])
                await load_provider_from_database(message["name"])
            await layer.group_discard(GROUP, channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("provider change listener failed; retrying in %.0fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
