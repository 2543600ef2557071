"""Liveness and readiness probes for load balancers and Kubernetes: ``/health/live``, ``/health/ready``.

``/health/live`` says only that the process answers: restart it when it does
not. ``/health/ready`` says whether this worker should get traffic: its
database answers, Redis answers (when ``REDIS_URL`` is set), its runtime has
started and it is not draining for a shutdown. Neither calls an upstream
provider, and neither needs a key: upstream health stays with ``/health``,
``/plugins/health`` and ``/health/{name}``, so that every upstream being down
never pulls every node out of the balancer at once.

A probe storm costs nothing: the database and Redis checks are bounded by
``CHECK_TIMEOUT_SECONDS`` each, run once for every caller waiting at the same
moment, and their outcome is kept for ``CACHE_SECONDS``. Whether the runtime
started and whether it drains are read on every call, so a draining worker
reports not-ready at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from providers.runtime import process as runtime

logger = logging.getLogger(__name__)

#: Each dependency check gives up after this long (and counts as failed).
CHECK_TIMEOUT_SECONDS = 1.0
#: The dependency checks' outcome is reused for this long.
CACHE_SECONDS = 1.0
OK = "ok"


def _database_ping() -> None:
    """Run ``SELECT 1`` on a connection of this thread's own, then close it."""
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        # A worker thread of the executor: nothing closes its connection at a
        # request's end, so the probe does not keep one open per thread.
        connection.close()


async def _redis_ping(url: str, timeout: float) -> None:
    """PING the Redis at URL once, without redis-py's retries, within TIMEOUT."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        await client.ping()
    finally:
        await client.aclose()


class DependencyChecks:
    """The database and Redis checks, bounded, shared by concurrent callers and cached briefly."""

    def __init__(
        self, *, timeout: float = CHECK_TIMEOUT_SECONDS, cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._result: dict[str, str] | None = None
        self._checked_at = 0.0
        self._running: asyncio.Task[dict[str, str]] | None = None
        # A database ping still running in its thread (past its timeout): the
        # next check waits for it instead of starting another thread.
        self._database: asyncio.Future[None] | None = None

    def forget(self) -> None:
        """Drop the cached outcome: the next call checks again."""
        self._result = None

    async def results(self) -> dict[str, str]:
        """Return each dependency's state: ``ok``, ``not configured``, or why it failed."""
        now = time.monotonic()
        if self._result is not None and now - self._checked_at < self.cache_seconds:
            return self._result
        running = self._running
        if (
            running is None
            or running.done()
            or running.get_loop() is not asyncio.get_running_loop()
        ):
            running = self._running = asyncio.ensure_future(self._check())
        # Shielded: one caller going away does not cancel the check the others wait for.
        return await asyncio.shield(running)

    async def _check(self) -> dict[str, str]:
        database, redis = await asyncio.gather(self._check_database(), self._check_redis())
        result = {"database": database, "redis": redis}
        self._result, self._checked_at = result, time.monotonic()
        return result

    async def _check_database(self) -> str:
        pending = self._database
        if (
            pending is None
            or pending.done()
            or pending.get_loop() is not asyncio.get_running_loop()
        ):
            self._database = asyncio.ensure_future(
                sync_to_async(_database_ping, thread_sensitive=False)()
            )
        return await self._bounded(asyncio.shield(self._database), "database")

    async def _check_redis(self) -> str:
        url = getattr(settings, "REDIS_URL", "")
        if not url:
            return "not configured"
        return await self._bounded(_redis_ping(url, self.timeout), "redis")

    async def _bounded(self, check: Any, name: str) -> str:
        try:
            async with asyncio.timeout(self.timeout):
                await check
        except TimeoutError:
            return f"failed: no answer within {self.timeout:g}s"
        except Exception as exc:
            # The type only: a driver's message can carry a host name or a password.
            logger.warning("readiness: %s check failed (%s)", name, type(exc).__name__)
            return f"failed: {type(exc).__name__}"
        return OK


#: This process's checks (a test may call ``forget`` or replace it).
dependency_checks = DependencyChecks()


async def readiness() -> tuple[bool, dict[str, Any]]:
    """Return whether this worker is ready for traffic, and the body that says why."""
    lifecycle = runtime.current().lifecycle
    checks: dict[str, str] = {
        "runtime": OK if lifecycle.started else "not started",
        # Another part of the runtime sets ``draining`` on SIGTERM; absent, never.
        "draining": "draining" if getattr(lifecycle, "draining", False) else OK,
    }
    checks.update(await dependency_checks.results())
    failed = sorted(name for name, state in checks.items() if state not in (OK, "not configured"))
    body: dict[str, Any] = {"status": "not_ready" if failed else "ready", "checks": checks}
    if failed:
        body["failed"] = failed
    return not failed, body


@csrf_exempt  # they change nothing: any other method gets 405, not the CSRF page
@require_safe
async def live(request: HttpRequest) -> JsonResponse:
    """Answer 200 while the process serves requests (a liveness probe)."""
    return JsonResponse({"status": "live"})


@csrf_exempt
@require_safe
async def ready(request: HttpRequest) -> JsonResponse:
    """Answer 200 when this worker should get traffic, else 503 naming each failed check."""
    is_ready, body = await readiness()
    response = JsonResponse(body, status=200 if is_ready else 503)
    response["Cache-Control"] = "no-store"
    return response
