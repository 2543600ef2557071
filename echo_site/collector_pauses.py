"""How long the garbage collector stops a worker: each pass timed, exposed as ``echo_gc_pause_seconds``.

A collection runs in the thread whose allocation crossed a threshold and
holds the interpreter until it ends: on the serving thread, every request
and stream of the worker waits for it. A full collection with hundreds of
streams open once took 20 to 60 ms, and stalled all of them at once
(docs/BENCHMARKS.md, "Stalls at 256 streams"), which a latency histogram
shows only as a p99 with no cause. Here each pass is timed by a
``gc.callbacks`` hook into a histogram per generation (0, 1, 2: the full
collection), read by ``/metrics`` like every other metric:
``histogram_quantile(0.99, rate(echo_gc_pause_seconds_bucket{generation="2"}[5m]))``.

The hook runs inside the collection, so it only reads the clock and adds to
a few integers (no lock, no allocation of a tracked object: it can neither
set off a collection nor wait for one); the histogram is made from those
counts when it is scraped. A collection cannot start inside another (the
interpreter runs one at a time, under its lock), so the counts need no lock
of their own. ``watch`` installs the hook once per process
(``echo_site.asgi.settle_heap``, at a worker's start).
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from providers.usage.metrics import REGISTRY

#: Upper bounds of the buckets, in seconds: a young pass takes well under a millisecond,
#: a pause that delays a stream's chunk is tens of milliseconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATIONS = 3


class Pauses:
    """Each generation's passes: a count per bucket (the last: longer than every bound) and their sum."""

    def __init__(self) -> None:
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in range(GENERATIONS)]
        self.sums = [0.0] * GENERATIONS
        self._started = 0.0

    def hook(self, phase: str, info: dict) -> None:
        """``gc.callbacks``' hook: time the pass between its start and its stop."""
        now = time.perf_counter()
        if phase == "start":
            self._started = now
            return
        generation = info["generation"]
        took = now - self._started
        self.counts[generation][bisect_left(BUCKETS, took)] += 1
        self.sums[generation] += took


PAUSES = Pauses()


def watch(pauses: Pauses = PAUSES) -> None:
    """Time every collection of this process from now on (once, however often it is called)."""
    if pauses.hook not in gc.callbacks:
        gc.callbacks.append(pauses.hook)


class PausesCollector(Collector):
    """Expose PAUSES as the histogram ``echo_gc_pause_seconds``, by generation."""

    def __init__(self, pauses: Pauses = PAUSES) -> None:
        self.pauses = pauses

    @staticmethod
    def _family() -> HistogramMetricFamily:
        return HistogramMetricFamily(
            "echo_gc_pause_seconds",
            "Passes of the garbage collector, by generation (2: a full collection),"
            " each a pause of the thread it ran on.",
            labels=["generation"],
        )

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = self._family()
        for generation in range(GENERATIONS):
            counts = list(self.pauses.counts[generation])  # a copy: a pass may end meanwhile
            running = 0
            buckets = []
            for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric([str(generation)], buckets, self.pauses.sums[generation])
        yield family


REGISTRY.register(PausesCollector())
