"""EchoRuntime: everything one process keeps in memory to serve, built in one place.

A serving process holds one runtime: the provider registry, the model manager
(routing, retries, breakers), the health monitor, the usage recorder and its
bounded metric labels, the model-list cache, what configuration it serves
(config sync), the verified client keys, its serving loop, and the lifecycle
that starts and stops all of it. Each part gets what it depends on from here,
so a test (or a second runtime) can be built around another registry, a fake
clock or a sleep that does not wait.

``providers.runtime.process.current()`` returns the process's runtime and
``install`` replaces it; ``runtime.registry`` and the like read the current
one's parts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from providers.health.monitor import HealthMonitor
from providers.health.status import HealthProbes
from providers.runtime.config_sync import ConfigSyncState
from providers.runtime.lifecycle import ProviderLifecycle
from providers.runtime.manager import ModelManager
from providers.runtime.model_lists import ModelListCache
from providers.runtime.registry import ProviderRegistry
from providers.usage.metric_labels import MetricLabels
from providers.usage.recorder import UsageRecorder


class EchoRuntime:
    """One process's provider runtime: its parts, wired to each other.

    REGISTRY defaults to an empty one (no plugin registered); CLOCK (monotonic
    seconds) and SLEEP reach every part that waits or measures time.
    """

    def __init__(
        self,
        *,
        registry: ProviderRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.registry = registry if registry is not None else ProviderRegistry()
        self.manager = ModelManager(self.registry, sleep=sleep, clock=clock)
        self.monitor = HealthMonitor(self.registry, self.manager, clock=clock)
        self.metric_labels = MetricLabels(self.registry, self.monitor)
        self.usage_recorder = UsageRecorder(
            self.registry, self.metric_labels, serving_loop=lambda: self.serving_loop
        )
        self.model_lists = ModelListCache(self.registry, clock=clock)
        self.health_probes = HealthProbes()
        self.config_sync_state = ConfigSyncState()
        # Client-key verifications by key digest: (expiry, identity or None).
        # Filled and read by ``plugins_api.access.client_keys``.
        self.key_cache: dict[str, tuple[float, Any]] = {}
        # Unknown keys' digests: (expiry, None), apart so that they never push a known key out.
        self.unknown_key_cache: dict[str, tuple[float, Any]] = {}
        # The digests that open a key (``plugins_api.access.key_digests``), made on first use.
        self.key_digests: Any = None
        # The loop the registry's providers serve on, while the process serves.
        self.serving_loop: asyncio.AbstractEventLoop | None = None
        self.lifecycle = ProviderLifecycle(self)
