"""Each live provider's model list, kept for a short time and fetched once for all callers.

``GET /v1/models`` is open to every chat client; asking every upstream on
every call would let any client multiply Echo's calls to paid APIs. A list
is kept for ``ECHO_MODEL_LIST_CACHE_SECONDS`` per live instance (a reload
starts afresh), and concurrent callers share one upstream call
(``SingleFlight``). When the upstream fails, the last list it gave is served,
else the models the plugin declares; a failure is retried after a few
seconds, not on the next request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from providers.errors import ProviderNotFoundError
from providers.runtime.registry import ProviderRegistry
from providers.runtime.single_flight import SingleFlight

logger = logging.getLogger(__name__)

#: After a failed fetch, how long the fallback list is served before the upstream is asked again.
FAILED_FETCH_RETRY_SECONDS = 10.0

InstanceKey = tuple[str, Any, Any]


@dataclass(slots=True)
class _Entry:
    instance: InstanceKey
    models: list[str]
    expires: float
    from_upstream: bool


def instance_key(registry: ProviderRegistry, name: str) -> InstanceKey:
    """Return a key that changes whenever REGISTRY's live instance of provider NAME is replaced."""
    status = registry.status(name)
    return (name, status.get("generation"), status.get("loaded_at"))


class ModelListCache:
    """The model lists of REGISTRY's live providers, by name; CLOCK (monotonic seconds) ages them."""

    def __init__(
        self, registry: ProviderRegistry, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        #: How many times a list was kept or dropped (the model catalogue rebuilds on a change).
        self.changes = 0
        self._flight: SingleFlight[list[str]] = SingleFlight()

    def held_lists(self) -> dict[str, _Entry]:
        """Return the lists kept now, by provider, fresh or not (no fetch): the model catalogue reads them."""
        return dict(self._entries)

    async def models(self, name: str, *, timeout: float) -> list[str]:
        """Return the models of live provider NAME ([] when it is not live).

        A kept list younger than its time is returned without any upstream
        call; otherwise one fetch, waiting at most TIMEOUT seconds, serves
        every concurrent caller.
        """
        if name not in self._registry:
            return []
        instance = instance_key(self._registry, name)
        entry = self._entries.get(name)
        if entry is not None and entry.instance == instance and entry.expires > self._clock():
            return list(entry.models)
        models = await self._flight.run(instance, lambda: self._fetch(name, instance, timeout))
        return list(models)

    async def _fetch(self, name: str, instance: InstanceKey, timeout: float) -> list[str]:
        previous = self._entries.get(name)
        if previous is not None and previous.instance != instance:
            previous = None  # another configuration's list (another key, another server)
        try:
            async with self._registry.lease(name) as provider:
                try:
                    async with asyncio.timeout(timeout):
                        models = list(await provider.list_models())
                    ttl, from_upstream = float(settings.ECHO_MODEL_LIST_CACHE_SECONDS), True
                except Exception as exc:  # a down upstream or a plugin's bug: fall back, never fail
                    logger.info("models of %s: live list failed (%s)", name, type(exc).__name__)
                    if previous is not None and previous.from_upstream:
                        models, from_upstream = previous.models, True
                    else:
                        models, from_upstream = list(provider.metadata.models), False
                    ttl = min(FAILED_FETCH_RETRY_SECONDS, settings.ECHO_MODEL_LIST_CACHE_SECONDS)
        except ProviderNotFoundError:
            return []  # taken out of service meanwhile
        models = list(dict.fromkeys(models))
        self._entries[name] = _Entry(instance, models, self._clock() + ttl, from_upstream)
        # Bounded by the providers: lists of providers gone from service go too.
        for gone in set(self._entries) - set(self._registry.names()):
            self._entries.pop(gone, None)
        self.changes += 1
        return models
