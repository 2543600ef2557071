"""Each pass of the garbage collector is timed into ``echo_gc_pause_seconds``, by generation."""

from __future__ import annotations

import gc

import pytest
from prometheus_client.parser import text_string_to_metric_families

from echo_site import collector_pauses
from echo_site.collector_pauses import BUCKETS, Pauses, PausesCollector, watch
from providers.usage.metrics import exposition


@pytest.fixture
def pauses():
    """A Pauses of the test's own, its hook taken out of gc.callbacks afterwards."""
    own = Pauses()
    yield own
    while own.hook in gc.callbacks:
        gc.callbacks.remove(own.hook)


def histogram(collector: PausesCollector, generation: int) -> dict[str, float]:
    """Return GENERATION's samples: each bucket's cumulative count by its bound, _count and _sum."""
    (family,) = collector.collect()
    found = {}
    for sample in family.samples:
        if sample.labels["generation"] != str(generation):
            continue
        key = sample.labels.get("le", sample.name.rsplit("_", 1)[-1])
        found[key] = sample.value
    return found


def test_a_full_collection_is_counted_in_generation_2_with_its_duration(pauses) -> None:
    watch(pauses)
    collector = PausesCollector(pauses)
    before = histogram(collector, 2)

    gc.collect()  # a full collection
    gc.collect(0)  # and a young one

    after = histogram(collector, 2)
    assert after["count"] - before["count"] == 1
    assert after["sum"] > before["sum"], "the pass took no time"
    assert after["+Inf"] == after["count"]
    assert histogram(collector, 0)["count"] >= 1


def test_watching_twice_installs_the_hook_once(pauses) -> None:
    watch(pauses)
    watch(pauses)

    assert gc.callbacks.count(pauses.hook) == 1
    gc.collect()
    assert histogram(PausesCollector(pauses), 2)["count"] == 1


def test_a_pass_lands_in_the_bucket_of_its_duration(monkeypatch, pauses) -> None:
    clock = iter([10.0, 10.03, 20.0, 20.0005])  # a pass of 30 ms, then one of 0.5 ms
    monkeypatch.setattr(collector_pauses.time, "perf_counter", lambda: next(clock))

    pauses.hook("start", {"generation": 2})
    pauses.hook("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    pauses.hook("start", {"generation": 2})
    pauses.hook("stop", {"generation": 2, "collected": 0, "uncollectable": 0})

    found = histogram(PausesCollector(pauses), 2)
    assert found["0.001"] == 1  # the short one
    assert found["0.025"] == 1  # not the 30 ms one yet
    assert found["0.05"] == 2
    assert found["+Inf"] == found["count"] == 2
    assert found["sum"] == pytest.approx(0.0305)
    assert len([k for k in found if k not in ("count", "sum", "created")]) == len(BUCKETS) + 1


def test_the_pauses_are_in_metrics_with_the_workers_label() -> None:
    watch()
    gc.collect()

    families = {f.name: f for f in text_string_to_metric_families(exposition().decode())}

    family = families["echo_gc_pause_seconds"]
    assert family.type == "histogram"
    full = [
        s
        for s in family.samples
        if s.name == "echo_gc_pause_seconds_count" and s.labels["generation"] == "2"
    ]
    assert full and full[0].value >= 1
    assert "worker" in full[0].labels
