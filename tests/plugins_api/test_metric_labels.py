"""Metric labels come from a bounded set: the names a client sends cannot grow /metrics or memory.

Before the fix, three POST /chat calls with a 2.4 MB model name grew the
worker by 166 MB and /metrics to 148 MB, and 2,000 random 180-character names
added 115 MB: every name became a time series kept for the life of the process.
"""

from __future__ import annotations

import gc
import random
import string

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from providers.errors import ProviderError
from providers.runtime import process as runtime
from providers.runtime.registry import ProviderSpec
from providers.testing.fake_openai import FakeOpenAI
from providers.usage.metric_labels import MAX_LABEL_LENGTH
from providers.usage.recorder import UsageEvent

KEY = "sk-labels-test-000000000000"
HUGE = 2_400_000
METRICS_MAX_BYTES = 200_000
# Unbounded labels cost over 100 MB for what this test sends; transient
# request buffers (three 2.4 MB bodies, parsed) stay well below this.
RSS_MAX_GROWTH_BYTES = 60 * 1024 * 1024
MODEL_CAP = 20


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def random_name(length: int) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits + "-_.:/", k=length))


def label_values(text: str) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Return the label sets of every echo_* sample family in TEXT."""
    found: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).add(tuple(sorted(sample.labels.items())))
    return found


def declared_kinds(cls: type[ProviderError]) -> set[str]:
    return {cls.kind}.union(*(declared_kinds(sub) for sub in cls.__subclasses__()))


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture
def served(echo_config, chat_key, admin_key, live_echo, settings):
    """Echo over real HTTP with the echo provider and an OpenAI provider named ``labels-oai``."""
    settings.ECHO_METRICS_MODELS_PER_PROVIDER = MODEL_CAP
    with FakeOpenAI() as fake:
        runtime.run_in_serving_loop(
            runtime.registry.apply,
            ProviderSpec("labels-oai", "openai", {"api_key": KEY, "base_url": fake.base_url}),
        )
        if "echo" not in runtime.registry:  # loaded at start-up from its row
            runtime.run_in_serving_loop(
                runtime.registry.apply, ProviderSpec("echo", "echo", {}, is_default=True)
            )
        yield live_echo, chat_key[1], admin_key[1]


def scrape(url: str, admin: str) -> str:
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert response.status_code == 200
    return response.text


@pytest.mark.slow
def test_hostile_names_leave_metrics_and_memory_bounded(served) -> None:
    live, chat, admin = served
    gc.collect()
    rss_before = rss_bytes()
    text_before = scrape(live.url, admin)
    size_before = len(text_before)

    # Through the real recording path: what every endpoint calls when a request ends.
    kinds = ["model_not_found", "timeout", *(random_name(40) for _ in range(50))]
    for i in range(4000):
        provider = random.choice(["echo", "labels-oai", random_name(100)])
        # "gpt-4o" + anything is a known model to the OpenAI plugin (prices match
        # by prefix): only the per-provider cap keeps these bounded.
        model = ("gpt-4o-" if i % 2 else "") + random_name(180)
        route = f"{random_name(30)}/{model}"
        runtime.usage_recorder.record(
            UsageEvent(
                client=f"key:c{i}",
                endpoint="/chat",
                provider=provider,
                model=model,
                stream=False,
                latency_ms=5.0,
                ttft_ms=2.0,
                outcome="error",
                prompt_tokens=3,
                completion_tokens=4,
                error_kind=random.choice(kinds),
                fallback_path=[{"route": route, "error": "timeout", "attempts": 1}],
                retries=[{"route": route, "error": "timeout", "wait_seconds": 0.1}],
            )
        )
    for provider in ("echo", "labels-oai", "x" * HUGE):
        runtime.usage_recorder.record(
            UsageEvent(
                client="key:huge",
                endpoint="/chat",
                provider=provider,
                model="m" * HUGE,
                stream=True,
                latency_ms=1.0,
                error_kind="k" * HUGE,
                outcome="o" * HUGE,
            )
        )
    # And through HTTP, as the reported attack did.
    with httpx.Client(headers={"Authorization": f"Bearer {chat}"}, timeout=30) as client:
        for _ in range(3):
            client.post(f"{live.url}/chat", json={"prompt": "hi", "model": "m" * HUGE})
        client.post(f"{live.url}/chat", json={"prompt": "hi", "provider": "p" * 100})
        known = client.post(f"{live.url}/chat", json={"prompt": "one two", "model": "echo-1"})
        assert known.status_code == 200, known.text
        # A configured model of a live provider keeps its own label.
        oai = client.post(
            f"{live.url}/chat",
            json={"prompt": "hi", "provider": "labels-oai", "model": "gpt-4o-mini"},
        )
        assert oai.status_code == 200, oai.text

    text = scrape(live.url, admin)
    runtime.usage_recorder._pending.clear()  # the rows are not what this test measures
    gc.collect()
    growth = rss_bytes() - rss_before

    assert len(text) < METRICS_MAX_BYTES, f"/metrics is {len(text)} bytes"
    assert len(text) - size_before < METRICS_MAX_BYTES / 2
    assert growth < RSS_MAX_GROWTH_BYTES, f"RSS grew by {growth / 2**20:.1f} MB"

    # Series that other tests of this process made stay; judge the ones made here.
    before = label_values(text_before)
    every = label_values(text)
    families = {name: sets - before.get(name, set()) for name, sets in every.items()}
    every_value = {v for sets in families.values() for labels in sets for _, v in labels}
    assert max(len(v) for v in every_value) <= MAX_LABEL_LENGTH
    requests = families["echo_requests_total"]
    oai_models = {
        dict(labels)["model"]
        for labels in every["echo_requests_total"]
        if ("provider", "labels-oai") in labels
    }
    assert "other" in oai_models and len(oai_models) <= MODEL_CAP + 2  # + "other", "none"
    providers = {dict(labels)["provider"] for labels in requests}
    assert providers <= set(runtime.registry.names()) | {"other", "none"}
    kinds_seen = {dict(labels)["kind"] for labels in every["echo_errors_total"]}
    assert {"model_not_found", "timeout", "other"} <= kinds_seen
    assert kinds_seen <= declared_kinds(ProviderError) | {"other", "none"}
    outcomes = {dict(labels)["outcome"] for labels in requests}
    assert outcomes <= {"ok", "error", "cancelled", "other"}
    for name in ("echo_upstream_retries_total", "echo_failovers_total"):
        assert {dict(labels)["provider"] for labels in families[name]} <= {"other", "none"} | set(
            runtime.registry.names()
        )

    # Known names still get their own labels, and count right.
    ok = {"endpoint": "/chat", "provider": "echo", "model": "echo-1", "outcome": "ok"}
    assert sample(text, "echo_requests_total", **ok) >= 1
    oai_ok = {
        "endpoint": "/chat",
        "provider": "labels-oai",
        "model": "gpt-4o-mini",
        "outcome": "ok",
    }
    assert sample(text, "echo_requests_total", **oai_ok) == 1
    assert sample(text, "echo_requests_total", provider="other", model="other") >= 1


@pytest.mark.slow
def test_a_reload_that_configures_a_model_gives_it_its_label(served) -> None:
    live, chat, admin = served
    with httpx.Client(headers={"Authorization": f"Bearer {chat}"}, timeout=30) as client:
        assert client.post(
            f"{live.url}/chat", json={"prompt": "a", "model": "echo-new"}
        ).status_code
        runtime.run_in_serving_loop(
            runtime.registry.apply,
            ProviderSpec("echo", "echo", {"models": ["echo-1", "echo-new"]}, is_default=True),
        )
        answer = client.post(f"{live.url}/chat", json={"prompt": "a", "model": "echo-new"})
        assert answer.status_code == 200, answer.text
    text = scrape(live.url, admin)
    labels = {"provider": "echo", "model": "echo-new", "outcome": "ok"}
    assert sample(text, "echo_requests_total", **labels) == 1
