"""Record what each request used: tokens, cost, timing, outcome; off the request's path.

``usage_recorder.record(event)`` costs the request only a list append and a
few metric updates; rows reach the database in batches, written by a
background task on the serving loop (``flush`` writes them at once).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from providers import metrics

logger = logging.getLogger(__name__)

FLUSH_EVERY_SECONDS = 1.0
FLUSH_AT = 200


@dataclass(slots=True)
class UsageEvent:
    """One finished request, as the endpoint that served it saw it."""

    client: str
    endpoint: str
    provider: str
    model: str
    stream: bool
    latency_ms: float
    outcome: str = "ok"  # ok, error, cancelled
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    overhead_ms: float | None = None
    error_kind: str = ""
    attempts: int = 1
    fallback_path: list[dict[str, Any]] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)


def cost_of(
    provider: str, model: str, prompt_tokens: int, completion_tokens: int
) -> Decimal | None:
    """Return the cost in USD from the model's known prices, or None when unknown."""
    from providers.runtime import registry

    if provider not in registry or not model:
        return None
    info = registry.get(provider).get_model_info(model) or {}
    prices = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if prices[0] is None or prices[1] is None:
        return None
    return Decimal(str(prices[0])) * prompt_tokens + Decimal(str(prices[1])) * completion_tokens


class UsageRecorder:
    """Queue usage rows and write them in batches."""

    def __init__(self) -> None:
        self._pending: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def record(self, event: UsageEvent) -> None:
        """Count EVENT in the metrics and queue its row."""
        from providers.models import UsageRecord

        cost = cost_of(event.provider, event.model, event.prompt_tokens, event.completion_tokens)
        self._observe(event, cost)
        self._pending.append(
            UsageRecord(
                client=event.client[:150],
                endpoint=event.endpoint,
                provider=event.provider,
                model=event.model[:200],
                stream=event.stream,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                cost_usd=cost,
                latency_ms=round(event.latency_ms, 3),
                ttft_ms=None if event.ttft_ms is None else round(event.ttft_ms, 3),
                overhead_ms=None if event.overhead_ms is None else round(event.overhead_ms, 3),
                outcome=event.outcome,
                error_kind=event.error_kind,
                attempts=event.attempts,
                fallback_path=event.fallback_path,
            )
        )
        self._schedule()

    @staticmethod
    def _observe(event: UsageEvent, cost: Decimal | None) -> None:
        labels = (event.provider or "none", event.model or "none")
        metrics.REQUESTS.labels(event.endpoint, *labels, event.outcome).inc()
        metrics.LATENCY.labels(*labels).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            metrics.TTFT.labels(*labels).observe(event.ttft_ms / 1000)
        if event.prompt_tokens:
            metrics.TOKENS.labels(*labels, "prompt").inc(event.prompt_tokens)
        if event.completion_tokens:
            metrics.TOKENS.labels(*labels, "completion").inc(event.completion_tokens)
        if cost:
            metrics.COST.labels(*labels).inc(float(cost))
        if event.error_kind:
            metrics.ERRORS.labels(event.error_kind, event.provider or "none").inc()
        for retry in event.retries:
            metrics.RETRIES.labels(str(retry.get("route", "")).split("/", 1)[0]).inc()
        for step in event.fallback_path:
            metrics.FAILOVERS.labels(str(step.get("route", "")).split("/", 1)[0]).inc()

    def _schedule(self) -> None:
        from providers.runtime import serving_loop

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a sync caller: flush() writes the rows
        if loop is not serving_loop():
            return  # a short-lived loop (a sync test client): flush() writes the rows
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._flush_forever())
        if len(self._pending) >= FLUSH_AT and self._wake is not None:
            self._wake.set()

    async def _flush_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                logger.exception("usage rows could not be written; they will be retried")

    async def flush(self) -> int:
        """Write the queued rows now; return how many."""
        from providers.models import UsageRecord

        batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            await UsageRecord.objects.abulk_create(batch)
        except Exception:
            self._pending[:0] = batch
            raise
        return len(batch)

    async def stop(self) -> None:
        """Write what is queued and stop the background writer."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()


usage_recorder = UsageRecorder()
