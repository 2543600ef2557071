"""The harness reads the Echo worker's collector pauses from its /metrics page, before and after a round."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from bench.worker_pauses import Pauses, parse
from echo_site import collector_pauses
from echo_site.collector_pauses import PausesCollector


def page(durations: list[tuple[int, float]], monkeypatch) -> str:
    """A /metrics page of a worker whose collector made passes of (generation, seconds)."""
    pauses = collector_pauses.Pauses()
    clock = iter([t for _, seconds in durations for t in (100.0, 100.0 + seconds)])
    monkeypatch.setattr(collector_pauses.time, "perf_counter", lambda: next(clock))
    for generation, _ in durations:
        pauses.hook("start", {"generation": generation})
        pauses.hook("stop", {"generation": generation, "collected": 0, "uncollectable": 0})
    registry = CollectorRegistry()
    registry.register(PausesCollector(pauses))
    return generate_latest(registry).decode()


def test_full_collections_and_long_passes_are_read_from_the_page(monkeypatch):
    text = page([(0, 0.0004), (0, 0.03), (1, 0.002), (2, 0.045), (2, 0.004)], monkeypatch)

    found = parse(text)

    assert found.full == 2
    assert found.long == 2  # the young pass of 30 ms and the full one of 45 ms
    assert abs(found.seconds - 0.0814) < 1e-9


def test_a_page_without_the_metric_reads_as_no_pause():
    assert parse("# HELP other x\n# TYPE other counter\nother_total 3.0\n") == Pauses()


def test_a_round_is_the_difference_of_two_readings():
    before, after = Pauses(3, 1, 0.5), Pauses(5, 4, 0.5612)

    assert after.since(before) == {
        "full_collections": 2,
        "passes_over_25ms": 3,
        "gc_seconds": 0.0612,
    }
