"""Echo's Prometheus metrics, in one registry of their own.

Counters and histograms move as requests finish (``providers.usage.recorder``);
breaker states are read from the live ModelManager when scraped. Every label
value comes from a bounded set (``providers.usage.metric_labels``): a label made
from what a client sent would grow these metrics, and the process, for good.

Each worker counts for itself. ``exposition()``, what ``/metrics`` answers,
adds a ``worker`` label to every sample: ``ECHO_WORKER_ID`` when set (a
stable name such as ``web-1``, at most 64 letters, digits, ``.``, ``_`` or
``-``), else the process id. Scrape every worker (not the balancer, which
would answer from any one of them) and sum over the label:
``sum without (worker) (rate(echo_requests_total[5m]))``. With pids, a
restarted worker starts new series; set ``ECHO_WORKER_ID`` to keep them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "echo_requests",
    "Requests answered, by endpoint, provider, model and outcome.",
    ["endpoint", "provider", "model", "outcome"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "echo_errors",
    "Failed requests by error kind and provider.",
    ["kind", "provider"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "echo_request_latency_seconds",
    "Whole request latency.",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TTFT = Histogram(
    "echo_time_to_first_token_seconds",
    "Time to the first streamed chunk.",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "echo_tokens",
    "Tokens by provider, model and direction (prompt or completion).",
    ["provider", "model", "direction"],
    registry=REGISTRY,
)
COST = Counter(
    "echo_cost_usd",
    "Cost in US dollars from the model's known prices.",
    ["provider", "model"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "echo_upstream_retries",
    "Retries of upstream calls, by provider.",
    ["provider"],
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "echo_failovers",
    "Requests that left a provider for the next route.",
    ["provider"],
    registry=REGISTRY,
)

USAGE_ROWS_DROPPED = Counter(
    "echo_usage_rows_dropped",
    "Usage rows never written: queue_full (the database was away too long),"
    " refused (the database refused the row), shutdown (unwritten at exit).",
    ["reason"],
    registry=REGISTRY,
)
USAGE_QUEUE_ROWS = Gauge(
    "echo_usage_queue_rows",
    "Usage rows waiting to be written to the database.",
    registry=REGISTRY,
)

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class BreakerStateCollector(Collector):
    """Report each live provider's circuit breaker: 0 closed, 1 half-open, 2 open."""

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "echo_breaker_state",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Asked at registration, at import: the metric's name, without the runtime's breakers.
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from providers.runtime.process import manager

        family = self._family()
        for name in manager.registry.names():
            family.add_metric([name], BREAKER_VALUES.get(manager.breaker(name).state, 0))
        yield family


REGISTRY.register(BreakerStateCollector())


WORKER_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def worker_id() -> str:
    """Return this worker's ``worker`` label: ``ECHO_WORKER_ID``, or the process id."""
    value = os.environ.get("ECHO_WORKER_ID")
    if value is None:
        return str(os.getpid())
    if not WORKER_ID_PATTERN.fullmatch(value):
        raise ImproperlyConfigured(
            "ECHO_WORKER_ID must be 1 to 64 letters, digits, '.', '_' or '-'."
        )
    return value


class WorkerLabelled(Collector):
    """Every metric of SOURCE, each sample with this worker's ``worker`` label added."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        worker = worker_id()
        for family in self._source.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, "worker": worker})
                for sample in family.samples
            ]
            yield labelled


EXPOSED = CollectorRegistry(auto_describe=False)
EXPOSED.register(WorkerLabelled(REGISTRY))


def exposition() -> bytes:
    """Return every metric of this worker in Prometheus' text format, with its ``worker`` label."""
    return generate_latest(EXPOSED)
