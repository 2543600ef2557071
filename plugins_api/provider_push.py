"""Tell open chat pages that the providers changed, so that their pickers follow.

A saved or deleted ProviderConfig sends, once committed, one group message
to every chat consumer (``GROUP``): each then sends its page the provider
list as its own process's registry has it. The providers app's own
receiver, connected first, has reloaded this process's registry by then;
other workers reload from their broadcast listener, which is why the message
says whether the provider should now serve (see ``consumers``).

With the in-memory channel layer this reaches the pages of this process;
with Redis, those of every worker.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from providers.runtime import run_in_serving_loop

logger = logging.getLogger(__name__)

GROUP = "echo.chat.providers"
EVENT_TYPE = "providers.changed"


def provider_config_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    """After commit, tell the chat pages that provider INSTANCE changed."""
    name = instance.name
    serving = instance.serving_spec()[0] is not None
    transaction.on_commit(lambda: publish_providers_changed(name, serving=serving))


def provider_config_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """After commit, tell the chat pages that provider INSTANCE is gone."""
    name = instance.name
    transaction.on_commit(lambda: publish_providers_changed(name, serving=False))


def publish_providers_changed(name: str, *, serving: bool) -> None:
    """Send the group message for provider NAME; a failure is logged, never raised.

    The change has committed already: a chat page that misses it only shows
    an older list until its next reconnect.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": EVENT_TYPE, "name": name, "serving": serving}
    try:
        # On the serving loop, where the in-memory layer's consumers wait.
        run_in_serving_loop(layer.group_send, GROUP, message)
    except Exception:
        logger.exception("could not tell the chat pages that provider %s changed", name)
