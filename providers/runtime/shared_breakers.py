"""Circuit breakers shared by every worker through Redis, when ``REDIS_URL`` is set.

Each worker keeps its breakers in memory, and a chat reads only those: the
hot path never waits on Redis. What is shared are the transitions. When a
breaker opens (from closed, or after a failed probe) or closes, its worker
puts the news in a bounded outbox; a background task sends it to Redis, in
one pipeline: ``PUBLISH`` on ``<prefix>:breakers`` for the workers listening
now, and the open breakers in the hash ``<prefix>:breakers:open`` for a
worker that (re)connects later. Every worker applies the news of the others
(``CircuitBreaker.open_from_peer``, ``close_from_peer``). An open carries
its end as wall-clock time, so news that arrives late opens for what is
left of the cooldown, or not at all.

When Redis is away, nothing fails: each breaker goes on working for its own
process, the outbox keeps the latest news (dropping the oldest past
``OUTBOX_SIZE``), and the task reconnects every ``reconnect_seconds``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis
from django.conf import settings

from providers.runtime.circuit_breaker import CLOSED, OPEN, CircuitBreaker
from providers.runtime.manager import ModelManager

logger = logging.getLogger(__name__)

OUTBOX_SIZE = 1000
MAX_MESSAGE_BYTES = 8192


class SharedBreakers:
    """Share MANAGER's breaker transitions with the other workers through the Redis at URL.

    PREFIX names the channel and the hash (the channel layer's prefix, so
    two deployments on one Redis stay apart). CLOCK is wall-clock seconds.
    """

    def __init__(
        self,
        manager: ModelManager,
        *,
        url: str,
        prefix: str = "echo",
        clock: Callable[[], float] = time.time,
        reconnect_seconds: float = 1.0,
    ) -> None:
        self.manager = manager
        self.url = url
        self.channel = f"{prefix}:breakers"
        self.open_key = f"{prefix}:breakers:open"
        self.origin = uuid.uuid4().hex
        self.reconnect_seconds = reconnect_seconds
        self._clock = clock
        self._outbox: deque[dict[str, Any]] = deque(maxlen=OUTBOX_SIZE)
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = False

    # --- this worker's news -----------------------------------------------

    def publish(self, name: str, breaker: CircuitBreaker) -> None:
        """Queue the news that NAME's BREAKER opened or closed; never block, never raise."""
        news: dict[str, Any] = {"origin": self.origin, "name": name, "state": CLOSED}
        if breaker.state != CLOSED:
            news["state"] = OPEN
            news["until"] = self._clock() + breaker.retry_in()
            news["reason"] = (breaker.last_failure or "")[:200]
        self._outbox.append(news)
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wakeup.set()
        else:
            loop.call_soon_threadsafe(wakeup.set)

    # --- the other workers' news ------------------------------------------

    def apply(self, raw: bytes | str) -> bool:
        """Apply one piece of news RAW from another worker; return whether it changed a breaker."""
        if len(raw) > MAX_MESSAGE_BYTES:
            return False
        try:
            news = json.loads(raw)
            origin, name, state = news["origin"], news["name"], news["state"]
        except (ValueError, TypeError, KeyError):
            logger.warning("shared breakers: ignored a malformed message")
            return False
        if origin == self.origin or not isinstance(name, str):
            return False
        if name not in self.manager.registry.names():
            return False  # a provider this worker does not serve (yet): its own breaker decides
        breaker = self.manager.breaker(name)
        if state == CLOSED:
            if breaker.state == CLOSED and not breaker.consecutive_failures:
                return False
            breaker.close_from_peer()
            return True
        if state != OPEN:
            return False
        try:
            remaining = float(news["until"]) - self._clock()
        except (KeyError, TypeError, ValueError):
            return False
        if remaining <= 0:
            return False
        reason = news.get("reason")
        breaker.open_from_peer(
            remaining=remaining, reason=reason if isinstance(reason, str) else None
        )
        return True

    # --- the connection ---------------------------------------------------

    async def run(self) -> None:
        """Share MANAGER's breakers until cancelled, reconnecting to Redis whenever it drops."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        if self._outbox:
            self._wakeup.set()
        self.manager.shared_breakers = self
        try:
            while True:
                try:
                    await self._serve()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self.connected:
                        logger.warning(
                            "shared breakers: Redis unreachable (%s); breakers are per-worker"
                            " until it returns",
                            exc,
                        )
                self.connected = False
                await asyncio.sleep(self.reconnect_seconds)
        finally:
            self.connected = False
            if self.manager.shared_breakers is self:
                self.manager.shared_breakers = None

    async def _serve(self) -> None:
        client = redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=5
        )
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(self.channel)
                for raw in (await client.hgetall(self.open_key)).values():
                    self.apply(raw)
                if not self.connected:
                    logger.info("shared breakers: connected to Redis")
                self.connected = True
                sender = asyncio.create_task(self._send_forever(client))
                try:
                    while not sender.done():
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=0.5
                        )
                        if message is not None and message.get("type") == "message":
                            self.apply(message["data"])
                    sender.result()  # its error ends this connection
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
        finally:
            await client.aclose()

    async def _send_forever(self, client: redis.Redis) -> None:
        assert self._wakeup is not None
        while True:
            # What waits first: news that a connection lost before Redis took it
            # was woken for already, and must not wait for the next news.
            while self._outbox:
                news = self._outbox[0]
                payload = json.dumps(news)
                async with client.pipeline(transaction=False) as pipe:
                    if news["state"] == OPEN:
                        pipe.hset(self.open_key, news["name"], payload)
                    else:
                        pipe.hdel(self.open_key, news["name"])
                    pipe.publish(self.channel, payload)
                    await pipe.execute()
                # Taken off only once sent: news that Redis did not take goes after a reconnect.
                if self._outbox and self._outbox[0] is news:
                    self._outbox.popleft()
            await self._wakeup.wait()
            self._wakeup.clear()


async def share_breakers(manager: ModelManager) -> None:
    """Share MANAGER's breakers through ``REDIS_URL`` until cancelled; return at once without Redis."""
    if not settings.REDIS_URL:
        return
    prefix = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "echo")
    await SharedBreakers(manager, url=settings.REDIS_URL, prefix=prefix).run()
