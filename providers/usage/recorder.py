"""Record what each request used: tokens, cost, timing, outcome; off the request's path.

``UsageRecorder.record(event)`` (the runtime's ``usage_recorder``) costs
the request only a few metric updates and a queue append of
``(event, cost, time)``, and returns the cost; rows reach the database in
batches, made and written (``providers.usage.row_writer``) in the ORM's
thread by a background task on the serving loop (``flush`` writes them at
once).

No client can stop the accounting of the others: the writer makes every
field storable (cut to its column, no NUL, no lone surrogate); a batch the
database refuses is written row by row, and a row it refuses is dropped and
counted. While the database is away rows wait, made storable (so bounded in
size), but at most ``ECHO_USAGE_QUEUE_MAX`` of them: beyond that the oldest
are dropped and counted in ``echo_usage_rows_dropped_total``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings

from providers.runtime import process as runtime
from providers.runtime.loop_tasks import cancel_on_its_loop
from providers.usage import metrics
from providers.usage.row_writer import (
    MAX_COST,
    MAX_TOKENS,
    QueuedUsage,
    UsageRow,
    usage_rows_write,
)
from providers.usage.storable import storable_int

if TYPE_CHECKING:
    from providers.runtime.registry import ProviderRegistry
    from providers.usage.metric_labels import MetricLabels

logger = logging.getLogger(__name__)

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


#: Text longer than any usage column is cut to this before it is queued: the writer
#: cuts it to its column later, but a queued event must not hold a client's megabytes.
QUEUED_TEXT_MAX = 1024
#: Most label combinations whose metric series are kept at hand (``_series``); the labels
#: are bounded already (``MetricLabels``), this bounds the shortcut's own memory.
SERIES_KEPT = 1024
#: The most (provider, model) prices kept (``PriceBook``).
PRICES_KEPT = 1024
#: The longest model name whose prices are kept (longer ones are asked each time).
MODEL_KEPT_MAX = 256


class _Series:
    """The metric series one (endpoint, provider, model, outcome) counts in, each looked up once.

    A series is made on its first use, as ``labels()`` would: one that never
    counts anything (the time to first token of a whole answer) is not exported.
    """

    __slots__ = ("_labels", "_found", "requests", "latency")

    def __init__(self, endpoint: str, provider: str, model: str, outcome: str) -> None:
        self._labels = (provider, model)
        self._found: dict[str, Any] = {}
        self.requests = metrics.REQUESTS.labels(endpoint, provider, model, outcome)
        self.latency = metrics.LATENCY.labels(provider, model)

    def _child(self, name: str, metric: Any, *extra: str) -> Any:
        child = self._found.get(name)
        if child is None:
            child = self._found[name] = metric.labels(*self._labels, *extra)
        return child

    def ttft(self) -> Any:
        return self._child("ttft", metrics.TTFT)

    def tokens(self, kind: str) -> Any:
        return self._child(kind, metrics.TOKENS, kind)

    def cost(self) -> Any:
        return self._child("cost", metrics.COST)


def _short(text: Any) -> Any:
    """TEXT cut to ``QUEUED_TEXT_MAX`` characters when it is longer; anything else as it is."""
    if isinstance(text, str) and len(text) > QUEUED_TEXT_MAX:
        return text[:QUEUED_TEXT_MAX]
    return text


def _held(event: UsageEvent) -> UsageEvent:
    """Return EVENT as the queue may hold it: no huge text, and a failover path of its own (copied).

    Once a call, so each field is assigned by name: ``dataclasses.replace``
    cost five times as much. A field added to ``UsageEvent`` must be added
    here (``tests/providers/test_usage_row_writer.py`` compares the two).
    """
    held = object.__new__(UsageEvent)
    held.client = _short(event.client)
    held.endpoint = _short(event.endpoint)
    held.provider = _short(event.provider)
    held.model = _short(event.model)
    held.stream = event.stream
    held.latency_ms = event.latency_ms
    held.outcome = _short(event.outcome)
    held.prompt_tokens = event.prompt_tokens
    held.completion_tokens = event.completion_tokens
    held.ttft_ms = event.ttft_ms
    held.overhead_ms = event.overhead_ms
    held.error_kind = _short(event.error_kind)
    held.attempts = event.attempts
    held.fallback_path = list(event.fallback_path or [])
    held.retries = event.retries
    return held


def model_prices(
    registry: ProviderRegistry, provider: str, model: str
) -> tuple[Decimal, Decimal] | None:
    """Return MODEL's prices per prompt and completion token, as REGISTRY's PROVIDER gives them (None: unknown)."""
    if not isinstance(provider, str) or provider not in registry or not model:
        return None
    try:
        # Plugin code, called after the request: a failure here only means "no price".
        info = registry.get(provider).get_model_info(model) or {}
        prices = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if prices[0] is None or prices[1] is None:
            return None
        return Decimal(str(prices[0])), Decimal(str(prices[1]))
    except Exception:  # InvalidOperation included: a price that is not a number
        logger.debug("no price for a model of provider %s", provider, exc_info=True)
        return None


def priced(
    prices: tuple[Decimal, Decimal] | None, prompt_tokens: int, completion_tokens: int
) -> Decimal | None:
    """Return the cost of the tokens at PRICES, or None when unknown or not a storable amount."""
    if prices is None:
        return None
    try:
        cost = prices[0] * prompt_tokens + prices[1] * completion_tokens
    except Exception:  # InvalidOperation: an infinite price times no tokens, a count not a number
        return None
    return cost if cost.is_finite() and abs(cost) <= MAX_COST else None


class PriceBook:
    """Each (provider, model)'s prices, asked of the plugin once while the live providers stay the same.

    Asking costs every request a plugin call, a dict copy and two decimals
    made from text. An entry is good only as of the registry's ``changes``
    it was read at: a provider applied, replaced or removed makes every
    entry stale. The model names are clients': at most ``PRICES_KEPT`` are
    kept, none longer than ``MODEL_KEPT_MAX``, and the book starts again when full.
    """

    def __init__(self, registry: ProviderRegistry) -> None:
        self._registry = registry
        self._kept: dict[tuple[str, str], tuple[int, tuple[Decimal, Decimal] | None]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def cost(
        self, provider: str, model: str, prompt_tokens: int, completion_tokens: int
    ) -> Decimal | None:
        """Return the cost in USD of these tokens at MODEL's prices (None: unknown), kept while good."""
        as_of = self._registry.changes
        key = (provider, model)
        keep = isinstance(provider, str) and isinstance(model, str) and len(model) <= MODEL_KEPT_MAX
        kept = self._kept.get(key) if keep else None
        if kept is not None and kept[0] == as_of:
            prices = kept[1]
        else:
            prices = model_prices(self._registry, provider, model)
            if keep:
                if kept is None and len(self._kept) >= PRICES_KEPT:
                    self._kept.clear()
                self._kept[key] = (as_of, prices)
        return priced(prices, prompt_tokens, completion_tokens)


class UsageRecorder:
    """Queue usage rows, bounded, and write them in batches.

    REGISTRY prices the models, LABELS bound the metrics' labels, and
    SERVING_LOOP says which loop (if any) the background writer runs on.
    """

    def __init__(
        self,
        registry: ProviderRegistry,
        labels: MetricLabels,
        *,
        serving_loop: Callable[[], asyncio.AbstractEventLoop | None],
    ) -> None:
        self._registry = registry
        self._labels = labels
        self._serving_loop = serving_loop
        # Requests as they were recorded, or rows made by a write that found the database away.
        self._pending: deque[QueuedUsage | UsageRow] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closing = False
        self._failing = False
        self._refusals_logged: set[str] = set()
        # prometheus_client's labels() takes a lock and builds a key per call:
        # five per request, so each combination's series are kept here.
        self._series: dict[tuple[str, str, str, str], _Series] = {}
        self.prices = PriceBook(registry)

    def record(self, event: UsageEvent) -> Decimal | None:
        """Count EVENT in the metrics and queue it; return its cost in USD (None: no known price).

        Its row is made by the writer, off this path. The cost is the one the
        row will carry (``PriceBook.cost``), so that a caller (a key's budget) can
        count it before the row is written.
        """
        cost = self.prices.cost(
            event.provider, event.model, event.prompt_tokens, event.completion_tokens
        )
        self._observe(event, cost)
        self._pending.append((_held(event), cost, time.time()))
        self._trim()
        self._schedule()
        return cost

    def _observe(self, event: UsageEvent, cost: Decimal | None) -> None:
        metric_labels = self._labels
        provider = metric_labels.provider(event.provider)
        key = (
            metric_labels.endpoint(event.endpoint),
            provider,
            metric_labels.model(provider, event.model),
            metric_labels.outcome(event.outcome),
        )
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= SERIES_KEPT:
                self._series.clear()
            series = self._series[key] = _Series(*key)
        series.requests.inc()
        series.latency.observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            series.ttft().observe(event.ttft_ms / 1000)
        # Upstream-reported counts: a negative one would make the counter raise.
        prompt = storable_int(event.prompt_tokens, low=0, high=MAX_TOKENS)
        completion = storable_int(event.completion_tokens, low=0, high=MAX_TOKENS)
        if prompt:
            series.tokens("prompt").inc(prompt)
        if completion:
            series.tokens("completion").inc(completion)
        if cost and cost > 0:
            series.cost().inc(float(cost))
        if event.error_kind:
            metrics.ERRORS.labels(metric_labels.kind(event.error_kind), provider).inc()
        for retry in event.retries:
            metrics.RETRIES.labels(_route_provider(metric_labels, retry)).inc()
        for step in event.fallback_path:
            metrics.FAILOVERS.labels(_route_provider(metric_labels, step)).inc()

    def _trim(self) -> None:
        """Drop the oldest rows beyond ECHO_USAGE_QUEUE_MAX, counting them."""
        excess = len(self._pending) - settings.ECHO_USAGE_QUEUE_MAX
        for _ in range(max(0, excess)):
            self._pending.popleft()
        if excess > 0:
            metrics.USAGE_ROWS_DROPPED.labels("queue_full").inc(excess)

    def _requeue(self, rows: Iterable[QueuedUsage | UsageRow]) -> None:
        """Put ROWS back in front of the rows queued since (they are older)."""
        self._pending.extendleft(reversed(list(rows)))
        self._trim()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a sync caller: flush() writes the rows
        if loop is not self._serving_loop():
            return  # a short-lived loop (a sync test client): flush() writes the rows
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            if self._task is not None and not self._task.done():
                # Left on another loop (a server that ran before in this process):
                # this loop's writer takes the queue.
                cancel_on_its_loop(self._task)
            self._wake = asyncio.Event()
            # An empty context: the task outlives the request that starts it,
            # whose context would send its ORM calls to that request's thread.
            self._task = loop.create_task(
                self._flush_forever(), name="echo-usage-writer", context=contextvars.Context()
            )
        # While the database is away, writes wait for the interval: one connection
        # attempt per request would only add load to a database in trouble.
        if len(self._pending) >= FLUSH_AT and self._wake is not None and not self._failing:
            self._wake.set()

    async def _flush_forever(self) -> None:
        while not self._closing:
            # asyncio.timeout, not wait_for: no second task around the wait (one that
            # could be left pending on a loop closed under a server that ran before).
            try:
                async with asyncio.timeout(settings.ECHO_USAGE_FLUSH_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                if not self._failing:
                    logger.warning(
                        "usage rows could not be written (%s); up to %d wait and are retried",
                        type(exc).__name__,
                        settings.ECHO_USAGE_QUEUE_MAX,
                    )
                self._failing = True
            else:
                if self._failing:
                    logger.info("usage rows are written again")
                self._failing = False

    async def flush(self) -> int:
        """Write the queued rows now; return how many were written.

        Rows the database refuses are dropped and counted; when the database
        is away the rows stay queued and its error is raised.
        """
        if not self._pending:
            return 0
        # Popped one by one: a row recorded meanwhile (from another thread) is never lost.
        batch = [self._pending.popleft() for _ in range(len(self._pending))]
        try:
            result = await sync_to_async(usage_rows_write)(batch)
        except asyncio.CancelledError:
            # The ORM's thread goes on writing the batch: queueing it again would double it.
            raise
        except Exception:
            self._requeue(batch)
            raise
        self._count_refused(result.refused)
        if result.left:
            self._requeue(result.left)
            raise result.error or RuntimeError("usage rows were not written")
        return result.written

    def _count_refused(self, kinds: list[str]) -> None:
        if not kinds:
            return
        metrics.USAGE_ROWS_DROPPED.labels("refused").inc(len(kinds))
        for kind in set(kinds) - self._refusals_logged:
            # Once per kind: a client sending one bad value per request must not flood the log.
            self._refusals_logged.add(kind)
            logger.error(
                "the database refused a usage row (%s); it was dropped. Further rows refused"
                ' this way are only counted in echo_usage_rows_dropped_total{reason="refused"}.',
                kind,
            )

    async def stop(self) -> None:
        """Let the background writer finish, write what is queued, and stop.

        Rows that still cannot be written (the database is away) are dropped
        and counted: the process is going away with them.
        """
        task, self._task = self._task, None
        if task is not None and not task.done():
            if task.get_loop() is asyncio.get_running_loop() and self._wake is not None:
                # Not cancelled: a cancel in the middle of a write would lose its batch.
                self._closing = True
                self._wake.set()
                try:
                    await task
                finally:
                    self._closing = False
            else:  # left by a server that ran in this process before: the flush writes its rows
                cancel_on_its_loop(task)
        self._failing = False
        try:
            await self.flush()
        except Exception as exc:
            lost = len(self._pending)
            self._pending.clear()
            metrics.USAGE_ROWS_DROPPED.labels("shutdown").inc(lost)
            logger.error(
                "%d usage rows could not be written at shutdown (%s)", lost, type(exc).__name__
            )


def _route_provider(labels: MetricLabels, step: Any) -> str:
    """Return the provider label of a retry or fallback STEP (its route is ``provider/model``)."""
    route = step.get("route", "") if isinstance(step, dict) else ""
    return labels.provider(str(route).partition("/")[0])


# Read when scraped: nothing to update per request.
metrics.USAGE_QUEUE_ROWS.set_function(lambda: len(runtime.usage_recorder._pending))
