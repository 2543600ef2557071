"""``/health/live`` and ``/health/ready``: public, cheap, bounded, and honest about each dependency."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.test import Client

from plugins_api.admin_api import probes
from plugins_api.edge.api_paths import requires_credential
from providers.runtime.lifecycle import ProviderLifecycle
from tests.server_processes import free_port
from tests.services import require_redis


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch, settings: Any) -> probes.DependencyChecks:
    """Fresh checks for each test (nothing cached from another), with no Redis configured."""
    settings.REDIS_URL = ""
    fresh = probes.DependencyChecks(timeout=0.5)
    monkeypatch.setattr(probes, "dependency_checks", fresh)
    return fresh


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime counts as started (the test client does not run the ASGI start-up)."""
    monkeypatch.setattr(ProviderLifecycle, "started", property(lambda self: True))


def draining(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ProviderLifecycle, "draining", property(lambda self: True), raising=False)


def test_live_answers_without_a_key_even_with_a_bad_one(client: Any) -> None:
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer not-a-key"}):
        response = client.get("/health/live", **headers)
        assert (response.status_code, response.json()) == (200, {"status": "live"})


def test_the_probes_take_no_body_and_only_get(client: Any, db: None) -> None:
    # As a browser or a balancer meets them: CSRF checked, and still a 405, not the CSRF page.
    strict = Client(enforce_csrf_checks=True)
    for path in ("/health/live", "/health/ready"):
        assert strict.post(path, data=b"x", content_type="text/plain").status_code == 405
    assert client.delete("/health/ready").status_code == 405
    assert client.head("/health/live").status_code == 200


def test_the_probes_need_no_credential_but_provider_health_still_does() -> None:
    assert not requires_credential("/health/live")
    assert not requires_credential("/health/ready")
    assert requires_credential("/health/echo")


def test_ready_when_database_answers_runtime_started_and_no_redis_configured(
    client: Any, db: None, checks: probes.DependencyChecks, started: None
) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    assert response.json() == {
        "status": "ready",
        "checks": {
            "runtime": "ok",
            "draining": "ok",
            "database": "ok",
            "redis": "not configured",
        },
    }


def test_not_ready_before_the_runtime_started(
    client: Any, db: None, checks: probes.DependencyChecks
) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["runtime"]
    assert body["checks"]["runtime"] == "not started"


def test_not_ready_at_once_while_draining(
    client: Any,
    db: None,
    checks: probes.DependencyChecks,
    started: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client.get("/health/ready").status_code == 200
    draining(monkeypatch)
    # Within the cache window of the dependency checks: draining is read every time.
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["failed"] == ["draining"]


def test_redis_configured_and_answering_is_ready(
    client: Any, db: None, checks: probes.DependencyChecks, started: None, settings: Any
) -> None:
    settings.REDIS_URL = require_redis()
    response = client.get("/health/ready")
    assert response.status_code == 200, response.content
    assert response.json()["checks"]["redis"] == "ok"


def test_redis_configured_but_down_is_not_ready_and_names_only_the_failure_type(
    client: Any, db: None, checks: probes.DependencyChecks, started: None, settings: Any
) -> None:
    settings.REDIS_URL = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    began = time.monotonic()
    response = client.get("/health/ready")
    assert time.monotonic() - began < 2
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["redis"]
    assert body["checks"]["redis"].startswith("failed: ")
    assert "s3cret" not in response.content.decode()
    assert body["checks"]["database"] == "ok"


def test_a_hanging_dependency_is_failed_after_the_timeout(
    client: Any,
    db: None,
    checks: probes.DependencyChecks,
    started: None,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def hangs(url: str, timeout: float) -> None:
        await asyncio.sleep(30)

    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    monkeypatch.setattr(probes, "_redis_ping", hangs)
    began = time.monotonic()
    response = client.get("/health/ready")
    assert time.monotonic() - began < 2
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "failed: no answer within 0.5s"


def test_a_database_that_fails_is_named(
    client: Any,
    db: None,
    checks: probes.DependencyChecks,
    started: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuses() -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(probes, "_database_ping", refuses)
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "failed: OSError"


async def test_a_probe_storm_runs_the_checks_once_and_reuses_them_briefly(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    calls = []

    async def ping(url: str, timeout: float) -> None:
        calls.append(url)
        await asyncio.sleep(0.05)

    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    monkeypatch.setattr(probes, "_redis_ping", ping)
    monkeypatch.setattr(probes, "_database_ping", lambda: None)
    checks = probes.DependencyChecks(cache_seconds=0.3)
    results = await asyncio.gather(*(checks.results() for _ in range(50)))
    assert all(result == {"database": "ok", "redis": "ok"} for result in results)
    assert len(calls) == 1
    await checks.results()
    assert len(calls) == 1
    await asyncio.sleep(0.35)
    await checks.results()
    assert len(calls) == 2


async def test_a_database_ping_past_its_timeout_is_not_started_again_meanwhile(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    import threading

    release = threading.Event()
    started_pings = []

    def slow_ping() -> None:
        started_pings.append(1)
        release.wait(5)

    settings.REDIS_URL = ""
    monkeypatch.setattr(probes, "_database_ping", slow_ping)
    checks = probes.DependencyChecks(timeout=0.1, cache_seconds=0)
    try:
        for _ in range(3):
            assert (await checks.results())["database"] == "failed: no answer within 0.1s"
        assert len(started_pings) == 1
    finally:
        release.set()


def test_the_probes_are_exempt_from_the_https_redirect(
    client: Any, db: None, checks: probes.DependencyChecks, started: None, settings: Any
) -> None:
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 200
    assert client.get("/plugins/").status_code == 301
