"""The recorder keeps each label combination's metric series at hand, bounded, and counts the same."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from providers.runtime.registry import ProviderRegistry
from providers.usage import metrics
from providers.usage import recorder as recorder_module
from providers.usage.recorder import UsageEvent, UsageRecorder


@pytest.fixture(autouse=True)
def own_metrics(monkeypatch) -> CollectorRegistry:
    """The recorder's metrics, on a registry of this test's own: its series leave the process's alone."""
    registry = CollectorRegistry()
    copies = {}
    for name in ("REQUESTS", "ERRORS", "LATENCY", "TTFT", "TOKENS", "COST", "RETRIES", "FAILOVERS"):
        metric = getattr(metrics, name)
        kind = Histogram if isinstance(metric, Histogram) else Counter
        copies[name] = kind(
            metric._name, metric._documentation, metric._labelnames, registry=registry
        )
    monkeypatch.setattr(recorder_module, "metrics", SimpleNamespace(**copies))
    return registry


def count_of(text: str, endpoint: str) -> float:
    prefix = "echo_requests_total{"
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix) and f'endpoint="{endpoint}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def event(endpoint: str, model: str, *, ttft: float | None = None) -> UsageEvent:
    return UsageEvent(
        client="key:series",
        endpoint=endpoint,
        provider="series-test",
        model=model,
        stream=ttft is not None,
        latency_ms=5.0,
        ttft_ms=ttft,
        prompt_tokens=3,
        completion_tokens=4,
    )


class NamesAsLabels:
    """Labels that are the names themselves: what this test sends is what it finds in /metrics.

    (The real ``MetricLabels`` bounds them; ``test_metric_labels`` tests that.)
    """

    def provider(self, name: str) -> str:
        return name

    def model(self, provider: str, model: str) -> str:
        return model

    def endpoint(self, endpoint: str) -> str:
        return endpoint

    def outcome(self, outcome: str) -> str:
        return outcome

    def kind(self, kind: str) -> str:
        return kind


def new_recorder() -> UsageRecorder:
    return UsageRecorder(ProviderRegistry(), NamesAsLabels(), serving_loop=lambda: None)


def test_hostile_names_cannot_grow_the_series_kept(monkeypatch) -> None:
    monkeypatch.setattr(recorder_module, "SERIES_KEPT", 8)
    recorder = new_recorder()
    for n in range(2_000):
        recorder._observe(event(f"/x/{n}", f"model-{n}-" + "z" * 500), None)
    assert len(recorder._series) <= 8


def test_counts_are_the_same_through_the_kept_series_and_after_they_are_dropped(
    monkeypatch, own_metrics
) -> None:
    monkeypatch.setattr(recorder_module, "SERIES_KEPT", 2)
    recorder = new_recorder()
    before = count_of(generate_latest(own_metrics).decode(), "/v1/chat/completions")
    for n in range(10):
        recorder._observe(event("/v1/chat/completions", "m"), None)
        # Other combinations push the first one out of the kept series now and then.
        recorder._observe(event("/chat", f"other-{n}"), None)
        recorder._observe(event("/v1/messages", f"more-{n}"), None)
    after = count_of(generate_latest(own_metrics).decode(), "/v1/chat/completions")
    assert after - before == 10


def test_a_whole_answer_exports_no_time_to_first_token_series(own_metrics) -> None:
    recorder = new_recorder()
    recorder._observe(event("/v1/embeddings", "whole-only-model"), None)
    text = generate_latest(own_metrics).decode()
    assert not any(
        line.startswith("echo_time_to_first_token_seconds") and "whole-only-model" in line
        for line in text.splitlines()
    )
    recorder._observe(event("/v1/embeddings", "whole-only-model", ttft=2.0), None)
    text = generate_latest(own_metrics).decode()
    assert any(
        line.startswith("echo_time_to_first_token_seconds_count") and "whole-only-model" in line
        for line in text.splitlines()
    )
