"""Usage rows are exact against what the upstream billed; /metrics moves by the right amounts."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from prometheus_client.parser import text_string_to_metric_families

from providers.models import UsageRecord
from providers.runtime import process as runtime
from providers.runtime.registry import ProviderSpec
from providers.testing.fake_openai import FakeOpenAI

KEY = "sk-usage-test-000000000000"


def flush() -> list[UsageRecord]:
    async_to_sync(runtime.usage_recorder.flush)()
    return list(UsageRecord.objects.order_by("id"))


def apply(spec: ProviderSpec) -> None:
    runtime.run_in_serving_loop(runtime.registry.apply, spec)


def post(client, key: str, **body):
    return client.post(
        "/chat", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )


@pytest.fixture
def fakes():
    with FakeOpenAI() as primary, FakeOpenAI() as backup:
        primary.inject(status=503, times=1000)
        config = {"api_key": KEY, "max_retries": 0}
        apply(ProviderSpec("backup", "openai", {**config, "base_url": backup.base_url}))
        apply(
            ProviderSpec(
                "primary",
                "openai",
                {**config, "base_url": primary.base_url},
                fallbacks=("backup",),
            )
        )
        yield primary, backup
        runtime.run_in_serving_loop(runtime.registry.shutdown_all)


@pytest.mark.django_db
def test_usage_is_exact_across_a_failover(client, chat_key, fakes) -> None:
    primary, backup = fakes
    response = post(client, chat_key[1], prompt="count these five words", provider="primary")
    assert response.status_code == 200
    assert float(response["X-Echo-Overhead-Ms"]) >= 0
    (row,) = flush()
    assert (row.client, row.endpoint, row.provider, row.outcome) == (
        "key:test-chat",
        "/chat",
        "backup",
        "ok",
    )
    assert (row.prompt_tokens, row.completion_tokens) == (
        backup.usage.prompt_tokens,
        backup.usage.completion_tokens,
    )
    assert row.attempts == 2
    assert row.fallback_path[0]["route"] == "primary"
    # gpt-4o-mini has known prices, so the cost follows from the tokens.
    info = runtime.registry.get("backup").get_model_info(row.model)
    expected = (
        info["input_cost_per_token"] * row.prompt_tokens
        + info["output_cost_per_token"] * row.completion_tokens
    )
    assert float(row.cost_usd) == pytest.approx(expected)
    assert row.overhead_ms is not None and row.overhead_ms <= row.latency_ms


@pytest.fixture
def live_fakes(live_echo):
    """The fakes, with Echo serving over real HTTP (streams need a real server loop)."""
    with FakeOpenAI() as primary, FakeOpenAI() as backup:
        primary.inject(status=503, times=1000)
        config = {"api_key": KEY, "max_retries": 0}
        apply(ProviderSpec("backup", "openai", {**config, "base_url": backup.base_url}))
        apply(
            ProviderSpec(
                "primary",
                "openai",
                {**config, "base_url": primary.base_url},
                fallbacks=("backup",),
            )
        )
        yield live_echo, backup


@pytest.mark.slow
def test_streamed_usage_is_exact_too(live_fakes, chat_key) -> None:
    import time

    import httpx

    live, backup = live_fakes
    with httpx.stream(
        "POST",
        f"{live.url}/chat",
        json={"prompt": "stream me please", "provider": "primary", "stream": True},
        headers={"Authorization": f"Bearer {chat_key[1]}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    assert "event: done" in body
    rows: list[UsageRecord] = []
    deadline = time.monotonic() + 5
    while not rows and time.monotonic() < deadline:  # the server writes rows in the background
        time.sleep(0.1)
        try:
            rows = list(UsageRecord.objects.all())
        except Exception:  # the shared in-memory database may be locked by that write
            continue
    (row,) = rows
    assert row.stream and row.outcome == "ok" and row.provider == "backup"
    assert (row.prompt_tokens, row.completion_tokens) == (
        backup.usage.prompt_tokens,
        backup.usage.completion_tokens,
    )
    assert row.ttft_ms is not None and row.ttft_ms <= row.latency_ms


@pytest.mark.django_db
def test_a_failed_request_is_recorded_with_its_error(client, chat_key, fakes) -> None:
    primary, _ = fakes
    apply(
        ProviderSpec(
            "lonely", "openai", {"api_key": KEY, "max_retries": 0, "base_url": primary.base_url}
        )
    )
    response = post(client, chat_key[1], prompt="hi", provider="lonely")
    assert response.status_code == 503
    (row,) = flush()
    assert (row.outcome, row.error_kind, row.provider) == ("error", "unavailable", "lonely")


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.mark.django_db
def test_metrics_parse_and_move_by_the_right_amounts(client, chat_key, admin_key) -> None:
    apply(ProviderSpec("echo", "echo", {}, is_default=True))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {chat_key[1]}").status_code == 403
    before = client.get("/metrics", **auth).content.decode()
    labels = {"endpoint": "/chat", "provider": "echo", "model": "echo-1", "outcome": "ok"}
    answers = [post(client, chat_key[1], prompt="one two three").json() for _ in range(3)]
    after = client.get("/metrics", **auth).content.decode()
    assert (
        sample(after, "echo_requests_total", **labels)
        - sample(before, "echo_requests_total", **labels)
        == 3
    )
    completion = sum(a["usage"]["completion_tokens"] for a in answers)
    tokens = {"provider": "echo", "model": "echo-1", "direction": "completion"}
    assert (
        sample(after, "echo_tokens_total", **tokens) - sample(before, "echo_tokens_total", **tokens)
        == completion
    )
    assert sample(after, "echo_breaker_state", provider="echo") == 0
    latency = {"provider": "echo", "model": "echo-1"}
    assert (
        sample(after, "echo_request_latency_seconds_count", **latency)
        - sample(before, "echo_request_latency_seconds_count", **latency)
        == 3
    )


@pytest.mark.django_db
def test_the_compatible_endpoints_record_usage_too(client, chat_key, fakes) -> None:
    _, backup = fakes
    response = client.post(
        "/v1/chat/completions",
        {"model": "backup/gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {chat_key[1]}",
    )
    assert response.status_code == 200
    assert float(response["x-echo-overhead-ms"]) >= 0
    response = client.post(
        "/v1/messages",
        {
            "model": "backup/gpt-4o-mini",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "and again"}],
        },
        content_type="application/json",
        HTTP_X_API_KEY=chat_key[1],
    )
    assert response.status_code == 200
    rows = flush()
    assert [r.endpoint for r in rows] == ["/v1/chat/completions", "/v1/messages"]
    assert sum(r.prompt_tokens for r in rows) == backup.usage.prompt_tokens
    assert sum(r.completion_tokens for r in rows) == backup.usage.completion_tokens


def test_echos_overhead_leaves_out_the_upstream_calls_and_the_retries_waits() -> None:
    from plugins_api.edge.request_usage import RequestUsage

    overhead = RequestUsage._overhead
    assert overhead(500.0, {"upstream_ms": 100.0, "retry_wait_ms": 390.0}) == 10.0
    assert overhead(500.0, {"upstream_ms": 100.0}) == 400.0  # a plugin that reports no waits
    assert overhead(500.0, {"upstream_ms": 100.0, "retry_wait_ms": "x"}) is None
    assert overhead(500.0, {}) is None
    assert overhead(50.0, {"upstream_ms": 100.0, "retry_wait_ms": 0}) == 0.0
