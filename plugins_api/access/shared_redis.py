"""The Redis that key limits and key budgets count in, shared by every worker, and what its outage costs.

``LoopRedis`` gives one ``redis.asyncio`` client per event loop (a client is
bound to the loop it was made on), with a bounded pool, short timeouts and no
retries: a count that cannot be made in ``REDIS_TIMEOUT_SECONDS`` is better
followed by the outage policy than by a slow request. ``RedisOutage``
remembers a failure for ``REDIS_RETRY_SECONDS``, so that while Redis is away
no request pays a timeout; meanwhile the policy of
``ECHO_KEY_LIMITS_WHEN_REDIS_DOWN`` applies: ``local`` counts in this
worker's memory, ``refuse`` answers 503. Never unlimited.
"""

from __future__ import annotations

import asyncio
import logging
import time

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.25
REDIS_RETRY_SECONDS = 5.0
REDIS_MAX_CONNECTIONS = 50

POLICY_LOCAL = "local"
POLICY_REFUSE = "refuse"
POLICIES = (POLICY_LOCAL, POLICY_REFUSE)


def store_settings() -> dict[str, str]:
    """Return what limits and budgets are built with: ``REDIS_URL``, the key prefix, the outage policy."""
    from django.conf import settings

    return {
        "redis_url": getattr(settings, "REDIS_URL", "") or "",
        "prefix": getattr(settings, "ECHO_KEY_LIMITS_PREFIX", "echo") or "echo",
        "when_redis_down": getattr(settings, "ECHO_KEY_LIMITS_WHEN_REDIS_DOWN", POLICY_LOCAL),
    }


class LoopRedis:
    """Clients of the Redis at URL, one per event loop, each with a bounded pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, object] = {}

    def client(self):  # noqa: ANN201 (redis.asyncio.Redis, imported lazily)
        """Return the running loop's client (made on first use; closed loops' clients dropped)."""
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old in [old for old in self._clients if old.is_closed()]:
                del self._clients[old]
            client = redis.Redis.from_url(
                self.url,
                max_connections=REDIS_MAX_CONNECTIONS,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),
            )
            self._clients[loop] = client
        return client


class RedisOutage:
    """Whether Redis may be asked now; a failure leaves it alone for ``REDIS_RETRY_SECONDS``.

    WHAT names the counts in the log line (``key limits``, ``key budgets``);
    POLICY is what applies meanwhile.
    """

    def __init__(self, what: str, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"when_redis_down must be one of {POLICIES}")
        self.what = what
        self.policy = policy
        self._skip_until = 0.0

    def usable(self) -> bool:
        """Return whether Redis may be asked now."""
        return time.monotonic() >= self._skip_until

    def failed(self, exc: BaseException) -> None:
        """Note that Redis failed with EXC: leave it alone for a while, and say so once."""
        self._skip_until = time.monotonic() + REDIS_RETRY_SECONDS
        logger.warning(
            "%s: Redis unreachable (%s); policy %r for %gs",
            self.what,
            type(exc).__name__,
            self.policy,
            REDIS_RETRY_SECONDS,
        )
