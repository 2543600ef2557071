"""Public endpoints never fan out upstream: ``GET /health`` and ``GET /v1/models`` under a crowd.

Echo serves over real HTTP (``live_echo``) in front of two fake OpenAI
servers that record every request; 50 clients call at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from asgiref.sync import async_to_sync

from providers.config.services import provider_config_create
from providers.health import status as health
from providers.runtime import process as runtime
from providers.testing.fake_openai import FakeOpenAI
from tests.fake_time import FakeClock

CROWD = 50
MODELS = "/v1/models"  # what the openai plugin asks for both its model list and its health


@pytest.fixture
def upstreams(transactional_db) -> Iterator[dict[str, FakeOpenAI]]:
    """Two providers, each on its own fake upstream, answering slowly enough to overlap."""
    fakes = {"alpha": FakeOpenAI().start(), "beta": FakeOpenAI().start()}
    for name, fake in fakes.items():
        provider_config_create(
            name=name,
            plugin="openai",
            settings={"base_url": fake.base_url},
            secrets={"api_key": f"sk-{name}-0000000000000000"},
            is_default=name == "alpha",
        )
    yield fakes
    for fake in fakes.values():
        fake.stop()


def slow_down(fakes: dict[str, FakeOpenAI], seconds: float = 0.5) -> None:
    """Make every model listing take SECONDS, so that the crowd's requests overlap."""
    for fake in fakes.values():
        fake.reset()
        fake.inject(delay=seconds, times=1000, path=MODELS)


def upstream_calls(fakes: dict[str, FakeOpenAI]) -> dict[str, int]:
    return {name: len(fake.requests_to(MODELS)) for name, fake in fakes.items()}


def crowd_get(url: str, path: str, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """GET PATH CROWD times at once; return the responses."""

    async def all_at_once() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=CROWD)
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=30, limits=limits
        ) as client:
            return await asyncio.gather(*(client.get(path) for _ in range(CROWD)))

    return asyncio.run(all_at_once())


@pytest.mark.slow
def test_health_under_a_crowd_makes_at_most_one_probe_per_provider(upstreams, live_echo):
    slow_down(upstreams)
    responses = crowd_get(live_echo.url, "/health")
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["status"] for r in responses} == {"ok"}
    assert all(n <= 1 for n in upstream_calls(upstreams).values()), upstream_calls(upstreams)


@pytest.mark.slow
def test_health_answers_from_recent_checks_without_any_upstream_call(
    upstreams, admin_key, live_echo
):
    auth = {"Authorization": f"Bearer {admin_key[1]}"}
    refreshed = httpx.get(f"{live_echo.url}/plugins/health?refresh=1", headers=auth, timeout=10)
    assert refreshed.status_code == 200
    assert refreshed.json()["alpha"]["available"] is True
    slow_down(upstreams)

    responses = crowd_get(live_echo.url, "/health")
    assert {r.json()["status"] for r in responses} == {"ok"}
    assert upstream_calls(upstreams) == {"alpha": 0, "beta": 0}


@pytest.mark.slow
def test_a_check_of_a_replaced_instance_is_not_trusted(upstreams, admin_key, live_echo):
    auth = {"Authorization": f"Bearer {admin_key[1]}"}
    httpx.get(f"{live_echo.url}/plugins/health?refresh=1", headers=auth, timeout=10)
    reloaded = httpx.post(f"{live_echo.url}/plugins/beta/reload", headers=auth, timeout=10, json={})
    assert reloaded.status_code == 200, reloaded.text
    slow_down(upstreams, 0.0)
    assert httpx.get(f"{live_echo.url}/health", timeout=10).json()["status"] == "ok"
    # The new beta instance was probed once; alpha's recent check still stands.
    assert upstream_calls(upstreams) == {"alpha": 0, "beta": 1}


@pytest.mark.slow
def test_refresh_stays_admin_only(upstreams, live_echo):
    slow_down(upstreams, 0.0)
    assert httpx.get(f"{live_echo.url}/plugins/health?refresh=1", timeout=10).status_code == 401
    for _ in range(5):  # the public endpoint ignores it: no refresh, no extra upstream calls
        assert httpx.get(f"{live_echo.url}/health?refresh=1", timeout=10).status_code == 200
    assert all(n <= 1 for n in upstream_calls(upstreams).values())


def test_concurrent_refreshes_share_one_round(upstreams, admin_user):
    """Refreshes from several threads (workers' request threads) share the serving loop's round."""
    for name in upstreams:
        assert runtime.run_in_serving_loop(runtime.load_provider_from_database, name) is None
    slow_down(upstreams)
    loop = asyncio.new_event_loop()
    serving = threading.Thread(target=loop.run_forever, daemon=True)
    serving.start()
    runtime.set_serving_loop(loop)
    results: list[dict] = []
    try:
        threads = [
            threading.Thread(target=lambda: results.append(health.provider_health_check_all()))
            for _ in range(10)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        runtime.set_serving_loop(None)
        asyncio.run_coroutine_threadsafe(runtime.registry.shutdown_all(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        serving.join(timeout=10)
        loop.close()
    assert len(results) == 10
    assert all(r["alpha"]["available"] and r["beta"]["available"] for r in results)
    assert upstream_calls(upstreams) == {"alpha": 1, "beta": 1}


@pytest.mark.slow
def test_models_under_a_crowd_makes_at_most_one_call_per_provider(upstreams, chat_key, live_echo):
    slow_down(upstreams)
    auth = {"Authorization": f"Bearer {chat_key[1]}"}
    responses = crowd_get(live_echo.url, "/v1/models", headers=auth)
    assert {r.status_code for r in responses} == {200}
    ids = {m["id"] for m in responses[0].json()["data"]}
    assert {"alpha/gpt-4o-mini", "beta/gpt-4o-mini"} <= ids
    assert all(r.json() == responses[0].json() for r in responses)
    assert upstream_calls(upstreams) == {"alpha": 1, "beta": 1}

    # Within the cache's time, later calls (and model lookups) ask no upstream at all.
    again = httpx.get(f"{live_echo.url}/v1/models", headers=auth, timeout=10)
    one = httpx.get(f"{live_echo.url}/v1/models/alpha/gpt-4o-mini", headers=auth, timeout=10)
    assert again.json() == responses[0].json()
    assert one.status_code == 200
    assert upstream_calls(upstreams) == {"alpha": 1, "beta": 1}


def test_a_failing_upstream_serves_the_last_known_list(upstreams, settings):
    settings.ECHO_MODEL_LIST_CACHE_SECONDS = 1
    clock = FakeClock()
    runtime.install(runtime.build_runtime(clock=clock))  # clean_runtime puts its own back after
    fake = upstreams["alpha"]
    fake.models = ["gpt-live-only", "gpt-4o-mini"]
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "alpha") is None

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        first = await runtime.model_lists.models("alpha", timeout=5)
        clock.now += 1.1  # the list is now stale
        fake.inject(status=500, times=1000, path=MODELS)
        during = await runtime.model_lists.models("alpha", timeout=5)
        asked = len(fake.requests_to(MODELS))
        again = await runtime.model_lists.models("alpha", timeout=5)
        assert len(fake.requests_to(MODELS)) == asked  # a failure is not retried at once
        await runtime.registry.shutdown_all()
        return first, during, again

    first, during, again = async_to_sync(scenario)()
    assert first == ["gpt-live-only", "gpt-4o-mini"]
    assert during == first  # not the plugin's declared list: the last one the upstream gave
    assert again == first


def test_model_lists_follow_a_reload(upstreams):
    fake = upstreams["alpha"]
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "alpha") is None

    async def scenario() -> tuple[list[str], list[str]]:
        before = await runtime.model_lists.models("alpha", timeout=5)
        fake.models = ["gpt-new"]
        await runtime.load_provider_from_database("alpha")  # the same row: a new instance
        after = await runtime.model_lists.models("alpha", timeout=5)
        await runtime.registry.shutdown_all()
        return before, after

    started = time.monotonic()
    before, after = async_to_sync(scenario)()
    assert time.monotonic() - started < 10
    assert "gpt-new" not in before
    assert after == ["gpt-new"]
