"""The plugin management API (``/plugins/...``) and the health endpoints (``/health``)."""

from __future__ import annotations

import textwrap
import time
from typing import Any

import httpx
import pytest
from rest_framework.test import APIClient

from providers.base import AbstractAIProvider, PluginCapability, PluginMetadata
from providers.config.services import provider_config_create
from providers.models import HealthCheck, ProviderConfig
from providers.runtime import process as runtime
from providers.types import ChatMessage, ChatRequest, ChatResponse, HealthStatus

SECRET = "sk-test-0123456789-very-secret"


class SecuretestProvider(AbstractAIProvider):
    """A provider with a write-only key and switches to fail on purpose."""

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(
            name="Securetest",
            version="0.1.0",
            capabilities=[PluginCapability.STREAMING, PluginCapability.VISION],
            models=["secure-1"],
            requires_api_key=True,
        )

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "api_key": {"type": "string", "writeOnly": True, "minLength": 8},
                "timeout": {"type": "integer", "minimum": 1, "default": 60},
                "default_model": {"type": "string", "default": "secure-1"},
                "fail_init": {"type": "boolean", "default": False},
                "unhealthy": {"type": "boolean", "default": False},
            },
            "required": ["api_key"],
            "additionalProperties": False,
        }

    async def initialize(self) -> None:
        if self.config["fail_init"]:
            raise RuntimeError("the upstream refused to start")

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="ok", model=self.config["default_model"])

    async def health_check(self) -> HealthStatus:
        if self.config["unhealthy"]:
            # A careless plugin: its message carries the key, which Echo must strip.
            return HealthStatus(available=False, error=f"key {self.config['api_key']} refused")
        return HealthStatus(available=True, models=["secure-1"])

    async def list_models(self) -> list[str]:
        return ["secure-1"]


def load(name: str) -> None:
    """Bring provider NAME live from its row, as a serving worker does at start-up."""
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, name) is None


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def admin(admin_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


@pytest.fixture
def echo(echo_config) -> ProviderConfig:
    """The echo provider, configured and live."""
    load("echo")
    return echo_config


@pytest.fixture
def securetest(db) -> ProviderConfig:
    """A live provider of the securetest plugin, holding SECRET."""
    runtime.registry.register(SecuretestProvider, "securetest")
    config = provider_config_create(
        name="secure",
        plugin="securetest",
        settings={"timeout": 10, "default_model": "secure-1"},
        secrets={"api_key": SECRET},
    )
    load("secure")
    return config


def error_of(response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


MANAGEMENT = [
    ("get", "/plugins/"),
    ("get", "/plugins/instances"),
    ("get", "/plugins/metadata"),
    ("get", "/plugins/health"),
    ("post", "/plugins/discover"),
    ("get", "/plugins/echo/status"),
    ("post", "/plugins/echo/reload"),
    ("put", "/plugins/echo/config"),
    ("get", "/plugins/echo/config-schema"),
    ("get", "/plugins/echo/metadata"),
    ("get", "/plugins/echo/models"),
    ("get", "/plugins/echo/models/echo-1"),
    ("delete", "/plugins/echo"),
    ("get", "/health/echo"),
]


# --- who may call -----------------------------------------------------------


@pytest.mark.parametrize(("method", "url"), MANAGEMENT)
def test_management_needs_a_key(api, echo, method, url):
    response = getattr(api, method)(url, {"prefix": "X: "}, format="json")
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_required"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert ProviderConfig.objects.get(name="echo").settings == {"prefix": "Echo: "}


@pytest.mark.parametrize(("method", "url"), MANAGEMENT)
def test_management_refuses_a_chat_key(api, echo, chat_key, method, url):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {chat_key[1]}"}
    response = getattr(api, method)(url, {"prefix": "X: "}, format="json", **auth)
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_denied"
    assert ProviderConfig.objects.get(name="echo").settings == {"prefix": "Echo: "}


def test_a_staff_session_may_manage(api, echo, admin_user):
    api.force_login(admin_user)
    assert api.get("/plugins/").status_code == 200


def test_health_is_public_and_minimal(api, echo):
    response = api.get("/health", HTTP_AUTHORIZATION="Bearer not-a-key")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "providers": {"echo": True}}


def test_health_is_down_when_nothing_serves(api, echo_config):
    response = api.get("/health")  # echo is configured but was never loaded
    assert response.status_code == 503
    assert response.json() == {"status": "down", "providers": {"echo": False}}


def test_health_is_degraded_when_one_provider_is_down(api, echo, securetest):
    ProviderConfig.objects.filter(name="secure").update(settings={"unhealthy": True})
    load("secure")
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "providers": {"echo": True, "secure": False}}
    assert not HealthCheck.objects.exists()  # load-balancer probes are not recorded


def test_health_reuses_a_recent_check_until_the_instance_changes(api, securetest, monkeypatch):
    calls = []
    original = SecuretestProvider.health_check

    async def counted(self):
        calls.append(self)
        return await original(self)

    monkeypatch.setattr(SecuretestProvider, "health_check", counted)
    assert api.get("/health").json()["providers"] == {"secure": True}
    assert api.get("/health").json()["providers"] == {"secure": True}
    assert len(calls) == 1  # frequent probes do not reach the upstream each time
    load("secure")  # a new instance
    api.get("/health")
    assert len(calls) == 2
    assert calls[1] is not calls[0]


# --- listing and inspecting -------------------------------------------------


def test_list_shows_providers_with_live_status_and_plugins(api, admin, echo, securetest):
    ProviderConfig.objects.create(
        name="off", plugin="echo", enabled=False, disabled_reason="Paused by ops."
    )
    response = api.get("/plugins/", **admin)
    assert response.status_code == 200
    body = response.json()
    providers = {p["name"]: p for p in body["providers"]}
    assert list(providers) == ["echo", "off", "secure"]
    assert providers["echo"]["is_default"] is True
    assert providers["echo"]["enabled"] is True
    assert providers["echo"]["capabilities"] == ["streaming", "function_calling"]
    assert providers["echo"]["live"]["loaded"] is True
    assert providers["echo"]["live"]["config"]["default_model"] == "echo-1"
    assert providers["off"]["live"] == {
        "loaded": False,
        "last_error": None,
        "config": None,
        "loaded_at": None,
        "generation": None,
        "active_requests": 0,
    }
    assert providers["off"]["disabled_reason"] == "Paused by ops."
    assert providers["off"]["capabilities"] == ["streaming", "function_calling"]
    assert providers["secure"]["capabilities"] == ["streaming", "vision"]
    plugins = {p["name"]: p for p in body["plugins"]}
    assert plugins["echo"]["source"] == "builtin"
    assert plugins["echo"]["class"] == "providers.plugins.echo_provider.EchoProvider"
    assert plugins["securetest"]["source"] == "manual"


def test_instances_lists_the_live_instances(api, admin, echo):
    body = api.get("/plugins/instances", **admin).json()
    assert list(body) == ["echo"]
    assert body["echo"]["class"] == "providers.plugins.echo_provider.EchoProvider"
    assert body["echo"]["generation"] == 1
    assert body["echo"]["is_default"] is True


def test_status_includes_a_fresh_health_check(api, admin, echo):
    response = api.get("/plugins/echo/status", **admin)
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "echo"
    assert body["available"] is True
    assert body["models"] == ["echo-1"]
    assert isinstance(body["response_time_ms"], float)
    assert body["error"] is None
    assert body["last_error"] is None
    assert body["live"]["loaded"] is True
    assert body["breaker"]["state"] == "closed"
    assert body["breaker"]["consecutive_failures"] == 0
    check = HealthCheck.objects.get()
    assert (check.provider.name, check.available, check.models) == ("echo", True, ["echo-1"])


def test_status_of_a_provider_that_failed_to_load(api, admin, securetest):
    ProviderConfig.objects.filter(name="secure").update(settings={"fail_init": True})
    runtime.install(runtime.build_runtime())  # a fresh worker: the load fails, nothing serves
    runtime.registry.register(SecuretestProvider, "securetest")
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "secure")
    body = api.get("/plugins/secure/status", **admin).json()
    assert body["available"] is False
    assert body["live"]["loaded"] is False
    assert "refused to start" in body["last_error"]
    assert body["error"] == body["last_error"]
    assert HealthCheck.objects.get().available is False


def test_status_of_an_unknown_provider_is_404(api, admin, db):
    response = api.get("/plugins/nope/status", **admin)
    assert response.status_code == 404
    assert error_of(response) == {
        "type": "provider_not_found",
        "message": "No provider named 'nope' is configured.",
        "provider": "nope",
    }


def test_metadata(api, admin, echo, securetest):
    body = api.get("/plugins/metadata", **admin).json()
    assert sorted(body) == ["echo", "secure"]
    assert body["echo"]["name"] == "Echo"
    assert body["secure"]["requires_api_key"] is True
    one = api.get("/plugins/secure/metadata", **admin).json()
    assert one == body["secure"]


def test_metadata_of_a_provider_that_is_not_serving_is_503(api, admin, echo_config):
    response = api.get("/plugins/echo/metadata", **admin)
    assert response.status_code == 503
    assert error_of(response)["type"] == "unavailable"
    assert api.get("/plugins/ghost/metadata", **admin).status_code == 404


def test_models_and_model_info(api, admin, echo):
    assert api.get("/plugins/echo/models", **admin).json() == {
        "provider": "echo",
        "models": ["echo-1"],
    }
    info = api.get("/plugins/echo/models/echo-1", **admin).json()
    assert info["provider"] == "echo"
    assert info["model"] == "echo-1"
    assert info["info"]["context_length"] == 1_000_000
    missing = api.get("/plugins/echo/models/gpt-9", **admin)
    assert missing.status_code == 404
    assert error_of(missing)["type"] == "model_not_found"


def test_config_schema_by_provider_or_plugin_name(api, admin, echo, securetest):
    body = api.get("/plugins/echo/config-schema", **admin).json()
    assert body["plugin"] == "echo"
    assert body["schema"]["properties"]["prefix"]["type"] == "string"
    assert body["secret_fields"] == []
    # "securetest" is a plugin no provider is named after.
    plugin = api.get("/plugins/securetest/config-schema", **admin).json()
    assert plugin["plugin"] == "securetest"
    assert plugin["secret_fields"] == ["api_key"]
    assert plugin["schema"]["required"] == ["api_key"]
    assert api.get("/plugins/nothing/config-schema", **admin).status_code == 404


# --- PUT /plugins/{name}/config ---------------------------------------------


def test_put_config_merges_and_hot_reloads(api, admin, echo, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.put("/plugins/echo/config", {"delay_ms": 5}, format="json", **admin)
    assert response.status_code == 200, response.json()
    assert callbacks  # the save reloads the provider (and tells open chat pages) after commit
    assert ProviderConfig.objects.get(name="echo").settings == {"prefix": "Echo: ", "delay_ms": 5}
    assert runtime.registry.get("echo").config["delay_ms"] == 5
    assert runtime.registry.get("echo").config["prefix"] == "Echo: "
    assert response.json()["settings"] == {"prefix": "Echo: ", "delay_ms": 5}

    with django_capture_on_commit_callbacks(execute=True):
        api.put("/plugins/echo/config", {"prefix": "Hi: "}, format="json", **admin)
    assert runtime.registry.get("echo").config["prefix"] == "Hi: "
    assert runtime.registry.get("echo").config["delay_ms"] == 5


def test_put_config_the_guides_timeout_example_keeps_the_other_keys(
    api, admin, securetest, django_capture_on_commit_callbacks
):
    # The live instance changes once the save commits, never before.
    with django_capture_on_commit_callbacks(execute=True):
        response = api.put("/plugins/secure/config", {"timeout": 30}, format="json", **admin)
    assert response.status_code == 200
    row = ProviderConfig.objects.get(name="secure")
    assert row.settings == {"timeout": 30, "default_model": "secure-1"}
    assert row.secrets == {"api_key": SECRET}
    assert runtime.registry.get("secure").config["api_key"] == SECRET
    assert runtime.registry.get("secure").config["timeout"] == 30


def test_put_config_a_secret_goes_to_the_secrets(api, admin, securetest):
    new_key = "sk-rotated-9876543210"
    response = api.put("/plugins/secure/config", {"api_key": new_key}, format="json", **admin)
    assert response.status_code == 200
    assert new_key not in response.content.decode()
    assert response.json()["secrets"] == {"api_key": "sk-...3210"}
    row = ProviderConfig.objects.get(name="secure")
    assert row.secrets == {"api_key": new_key}
    assert "api_key" not in row.settings


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delay_ms": -1}, "delay_ms"),
        ({"delay_ms": "slow"}, "delay_ms"),
        ({"models": []}, "models"),
        ({"nope": 1}, "nope"),
        (["prefix"], "config"),
    ],
)
def test_put_config_bad_input_names_the_field_and_changes_nothing(api, admin, echo, body, field):
    before = runtime.registry.get("echo")
    response = api.put("/plugins/echo/config", body, format="json", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] == field
    assert ProviderConfig.objects.get(name="echo").settings == {"prefix": "Echo: "}
    assert runtime.registry.get("echo") is before


def test_put_config_that_fails_to_initialize_is_409_and_changes_nothing(api, admin, securetest):
    before = runtime.registry.get("secure")
    response = api.put("/plugins/secure/config", {"fail_init": True}, format="json", **admin)
    assert response.status_code == 409
    assert error_of(response)["type"] == "initialization_failed"
    assert ProviderConfig.objects.get(name="secure").settings == {
        "timeout": 10,
        "default_model": "secure-1",
    }
    assert runtime.registry.get("secure") is before


def test_put_config_of_an_unknown_provider_is_404(api, admin, db):
    response = api.put("/plugins/nope/config", {"timeout": 30}, format="json", **admin)
    assert response.status_code == 404
    assert error_of(response)["type"] == "provider_not_found"


def test_put_config_rejects_a_form_body(api, admin, echo):
    response = api.put("/plugins/echo/config", {"prefix": "X"}, format="multipart", **admin)
    assert response.status_code == 415
    assert ProviderConfig.objects.get(name="echo").settings == {"prefix": "Echo: "}


# --- POST /plugins/{name}/reload --------------------------------------------


def test_reload_without_config_rebuilds_from_the_database(api, admin, echo):
    before = runtime.registry.get("echo")
    ProviderConfig.objects.filter(name="echo").update(settings={"prefix": "DB: "})
    response = api.post("/plugins/echo/reload", {"provider_name": "echo"}, format="json", **admin)
    assert response.status_code == 200
    assert runtime.registry.get("echo") is not before
    assert runtime.registry.get("echo").config["prefix"] == "DB: "
    assert response.json()["live"]["generation"] == 2


def test_reload_with_config_and_replace_replaces_the_settings(
    api, admin, echo, django_capture_on_commit_callbacks
):
    ProviderConfig.objects.filter(name="echo").update(settings={"prefix": "A: ", "delay_ms": 3})
    body = {
        "provider_name": "echo",
        "config": {"prefix": "R: ", "models": ["echo-1", "echo-2"]},
        "replace": True,
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/plugins/echo/reload", body, format="json", **admin)
    assert response.status_code == 200, response.json()
    assert ProviderConfig.objects.get(name="echo").settings == body["config"]
    live = runtime.registry.get("echo")
    assert live.config["prefix"] == "R: "
    assert live.config["delay_ms"] == 0  # removed, so back to the schema default


def test_reload_with_settings_only_keeps_the_stored_secret(
    api, admin, securetest, django_capture_on_commit_callbacks
):
    body = {"config": {"timeout": 5}}
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/plugins/secure/reload", body, format="json", **admin)
    assert response.status_code == 200
    row = ProviderConfig.objects.get(name="secure")
    assert row.settings == {"timeout": 5, "default_model": "secure-1"}  # merged, like PUT
    assert row.secrets == {"api_key": SECRET}
    assert runtime.registry.get("secure").config["api_key"] == SECRET


def test_reload_with_the_masked_secret_keeps_the_stored_one(api, admin, securetest):
    masked = api.get("/plugins/secure/status", **admin).json()["secrets"]["api_key"]
    body = {"config": {"api_key": masked, "timeout": 7}}
    assert api.post("/plugins/secure/reload", body, format="json", **admin).status_code == 200
    assert ProviderConfig.objects.get(name="secure").secrets == {"api_key": SECRET}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider_name": "other", "config": {"prefix": "X"}}, "provider_name"),
        ({"config": {"delay_ms": "slow"}}, "delay_ms"),
        ({"config": {"unknown": True}}, "unknown"),
        ({"config": "prefix=X"}, "config"),
        (["config"], "body"),
    ],
)
def test_reload_with_a_bad_config_keeps_the_old_instance_serving(api, admin, echo, body, field):
    before = runtime.registry.get("echo")
    response = api.post("/plugins/echo/reload", body, format="json", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] == field
    assert runtime.registry.get("echo") is before
    assert ProviderConfig.objects.get(name="echo").settings == {"prefix": "Echo: "}
    answer = runtime.run_in_serving_loop(
        runtime.manager.chat_completion,
        ChatRequest(messages=[ChatMessage(role="user", content="still here")]),
    )
    assert answer.provider == "echo"


def test_reload_that_fails_to_initialize_is_409_and_changes_nothing(api, admin, securetest):
    before = runtime.registry.get("secure")
    body = {"provider_name": "secure", "config": {"timeout": 3, "fail_init": True}}
    response = api.post("/plugins/secure/reload", body, format="json", **admin)
    assert response.status_code == 409
    error = error_of(response)
    assert error["type"] == "initialization_failed"
    assert "refused to start" in error["message"]
    assert error["provider"] == "secure"
    row = ProviderConfig.objects.get(name="secure")
    assert row.settings == {"timeout": 10, "default_model": "secure-1"}
    assert row.secrets == {"api_key": SECRET}
    assert runtime.registry.get("secure") is before
    assert runtime.registry.get("secure").config["timeout"] == 10


def test_reload_of_a_disabled_provider_is_409(api, admin, db):
    ProviderConfig.objects.create(name="off", plugin="echo", enabled=False)
    response = api.post("/plugins/off/reload", {}, format="json", **admin)
    assert response.status_code == 409
    assert error_of(response)["type"] == "provider_disabled"
    assert "off" not in runtime.registry


def test_reload_of_an_unknown_provider_is_404(api, admin, db):
    response = api.post("/plugins/nope/reload", {}, format="json", **admin)
    assert response.status_code == 404


# --- DELETE /plugins/{name} -------------------------------------------------


def test_delete_removes_the_provider_everywhere(
    api, admin, echo, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete("/plugins/echo", **admin)
    assert response.status_code == 204
    assert not ProviderConfig.objects.filter(name="echo").exists()
    assert "echo" not in runtime.registry
    assert api.delete("/plugins/echo", **admin).status_code == 404


# --- health -----------------------------------------------------------------


def test_plugins_health_refresh_checks_and_records_every_enabled_provider(
    api, admin, echo, securetest
):
    ProviderConfig.objects.create(
        name="off", plugin="echo", enabled=False, disabled_reason="Paused."
    )
    ProviderConfig.objects.filter(name="secure").update(settings={"unhealthy": True})
    load("secure")
    response = api.get("/plugins/health?refresh=1", **admin)
    assert response.status_code == 200
    body = response.json()
    assert sorted(body) == ["echo", "off", "secure"]
    assert body["echo"]["available"] is True
    assert body["echo"]["models"] == ["echo-1"]
    assert body["secure"]["available"] is False
    assert (
        body["secure"]["error"] == "key sk-...cret refused"
    )  # the plugin's careless message, masked
    assert body["off"] == {
        "name": "off",
        "available": False,
        "models": [],
        "response_time_ms": None,
        "error": "Paused.",
        "last_error": "Paused.",
        "checked_at": body["off"]["checked_at"],
        "breaker": body["off"]["breaker"],
    }
    assert body["off"]["breaker"]["state"] == "closed"
    recorded = {c.provider.name: c for c in HealthCheck.objects.select_related("provider")}
    assert sorted(recorded) == ["echo", "secure"]  # the disabled provider is not an outage
    assert recorded["secure"].error == "key sk-...cret refused"
    assert SECRET not in response.content.decode()


def test_plugins_health_refresh_times_out_a_slow_provider(
    api, admin, securetest, monkeypatch, settings
):
    import asyncio

    async def slow(self):
        await asyncio.sleep(5)

    monkeypatch.setattr(SecuretestProvider, "health_check", slow)
    settings.ECHO_HEALTH_TIMEOUT_SECONDS = 0.05
    started = time.monotonic()
    body = api.get("/plugins/health?refresh=1", **admin).json()
    assert time.monotonic() - started < 2
    assert body["secure"]["available"] is False
    assert "timed out" in body["secure"]["error"]


def slow_health(monkeypatch, seconds: float) -> list[str]:
    """Make every securetest provider's check take SECONDS; return the names checked, in order."""
    import asyncio

    calls: list[str] = []

    async def slow(self):
        calls.append(self.name)
        await asyncio.sleep(seconds)
        return HealthStatus(available=True, models=["secure-1"])

    monkeypatch.setattr(SecuretestProvider, "health_check", slow)
    return calls


def test_plugins_health_serves_the_latest_state_without_calling_upstreams(
    api, admin, echo, securetest, monkeypatch, settings
):
    calls = slow_health(monkeypatch, 5)

    started = time.monotonic()
    never = api.get("/plugins/health", **admin).json()
    assert time.monotonic() - started < 1
    assert calls == []
    assert never["secure"]["available"] is None  # not checked yet: unknown, not down
    assert never["secure"]["checked_at"] is None
    assert never["secure"]["breaker"]["state"] == "closed"

    settings.ECHO_HEALTH_TIMEOUT_SECONDS = 0.2
    refreshed = api.get("/plugins/health?refresh=1", **admin).json()
    assert calls == ["secure"]
    assert refreshed["secure"]["available"] is False
    assert "timed out" in refreshed["secure"]["error"]
    assert refreshed["secure"]["breaker"]["consecutive_failures"] == 1

    started = time.monotonic()
    latest = api.get("/plugins/health", **admin).json()
    assert time.monotonic() - started < 1
    assert calls == ["secure"]  # the upstream was not asked again
    assert latest == refreshed
    assert HealthCheck.objects.filter(provider__name="secure").count() == 1


def test_plugins_health_refresh_checks_concurrently(api, admin, db, monkeypatch):
    runtime.registry.register(SecuretestProvider, "securetest")
    for name in ("slow-a", "slow-b"):
        provider_config_create(name=name, plugin="securetest", secrets={"api_key": SECRET})
        load(name)
    calls = slow_health(monkeypatch, 0.5)

    started = time.monotonic()
    body = api.get("/plugins/health?refresh=1", **admin).json()

    assert time.monotonic() - started < 0.9
    assert sorted(calls) == ["slow-a", "slow-b"]
    assert body["slow-a"]["available"] is True and body["slow-b"]["available"] is True


def test_plugins_health_reports_a_provider_that_is_not_serving_at_once(api, admin, echo_config):
    body = api.get("/plugins/health", **admin).json()
    assert body["echo"]["available"] is False  # configured, never loaded: known without a check
    assert body["echo"]["error"] == "Not loaded."
    assert body["echo"]["checked_at"] is None


def test_plugins_health_refuses_a_bad_refresh(api, admin, echo):
    response = api.get("/plugins/health?refresh=maybe", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] == "refresh"


def test_failed_checks_open_the_breaker_shown_by_status_and_health(api, admin, securetest):
    ProviderConfig.objects.filter(name="secure").update(settings={"unhealthy": True})
    load("secure")
    for _ in range(20):  # up to the breaker's threshold, whatever it is
        status = api.get("/plugins/secure/status", **admin)
        if status.json()["breaker"]["state"] == "open":
            break
    body = status.json()
    assert body["available"] is False
    assert body["breaker"]["state"] == "open"
    assert body["breaker"]["retry_in_seconds"] > 0
    assert body["breaker"]["last_failure"] == "Health check failed: key sk-...cret refused"
    assert SECRET not in status.content.decode()
    health = api.get("/plugins/health", **admin).json()
    assert health["secure"]["breaker"]["state"] == "open"

    ProviderConfig.objects.filter(name="secure").update(settings={})
    load("secure")
    healed = api.get("/plugins/secure/status", **admin).json()
    assert healed["available"] is True
    assert healed["breaker"]["state"] == "closed"  # a good check is a free probe


def test_health_of_one_provider_needs_admin_and_records(api, admin, echo):
    assert api.get("/health/echo").status_code == 401
    body = api.get("/health/echo", **admin).json()
    assert body["name"] == "echo"
    assert body["available"] is True
    assert HealthCheck.objects.filter(provider__name="echo").count() == 1
    assert api.get("/health/nope", **admin).status_code == 404


# --- discovery --------------------------------------------------------------

GOOD_PLUGIN = '''
from providers.plugins.echo_provider import EchoProvider


class GoodProvider(EchoProvider):
    """A discovered plugin."""
'''


@pytest.fixture
def plugin_dir(tmp_path, settings):
    (tmp_path / "good_provider.py").write_text(textwrap.dedent(GOOD_PLUGIN))
    (tmp_path / "broken_provider.py").write_text("def oops(:\n")
    (tmp_path / "notes.py").write_text("raise SystemExit('not a plugin file')\n")
    settings.ECHO_PLUGIN_DIRS = [tmp_path]
    return tmp_path


def test_discover_reports_good_and_broken_plugins(api, admin, plugin_dir):
    response = api.post("/plugins/discover", **admin)
    assert response.status_code == 200
    body = response.json()
    assert body["directories"] == [str(plugin_dir)]
    files = {r["name"]: r for r in body["results"] if r["origin"].startswith(str(plugin_dir))}
    assert sorted(files) == ["broken", "good"]
    assert files["good"]["status"] == "registered"
    assert files["good"]["class"] == "GoodProvider"
    assert files["broken"]["status"] == "failed"
    assert "Syntax error at line 1" in files["broken"]["error"]
    assert "good" in runtime.registry.plugins()

    again = api.post("/plugins/discover", {}, format="json", **admin).json()
    statuses = {r["name"]: r["status"] for r in again["results"]}
    assert statuses["good"] == "unchanged"


def test_discover_refuses_a_directory_in_the_body(api, admin, plugin_dir):
    response = api.post("/plugins/discover", {"path": "/tmp"}, format="json", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] == "path"
    assert "good" not in runtime.registry.plugins()


# --- secrets ------------------------------------------------------------------


def test_no_response_ever_shows_a_secret(api, admin, echo, securetest):
    responses = [
        api.get(url, **admin)
        for url in (
            "/plugins/",
            "/plugins/instances",
            "/plugins/metadata",
            "/plugins/health",
            "/plugins/secure/status",
            "/plugins/secure/config-schema",
            "/plugins/secure/metadata",
            "/plugins/secure/models",
            "/plugins/secure/models/secure-1",
            "/health/secure",
            "/health",
            "/api/providers/",
            "/api/providers/secure/",
            "/api/health-checks/",
        )
    ]
    responses.append(api.put("/plugins/secure/config", {"timeout": 9}, format="json", **admin))
    responses.append(
        api.post("/plugins/secure/reload", {"config": {"timeout": 8}}, format="json", **admin)
    )
    responses.append(
        api.post(
            "/plugins/secure/reload",
            {"config": {"api_key": "short", "timeout": 8}},
            format="json",
            **admin,
        )
    )
    for response in responses:
        assert response.status_code < 500 or response.status_code == 503
        assert SECRET not in response.content.decode(), response.request["PATH_INFO"]
    assert "sk-...cret" in responses[0].content.decode()


# --- over real HTTP -----------------------------------------------------------


@pytest.mark.slow
def test_status_over_http(echo_config, admin_key, live_echo):
    auth = {"Authorization": f"Bearer {admin_key[1]}"}
    with httpx.Client(base_url=live_echo.url, timeout=10) as client:
        status = client.get("/plugins/echo/status", headers=auth)
        public = client.get("/health")
        refused = client.get("/plugins/echo/status")
    assert status.status_code == 200, status.text
    assert status.json()["available"] is True
    assert status.json()["live"]["loaded"] is True
    assert public.json() == {"status": "ok", "providers": {"echo": True}}
    assert refused.status_code == 401


@pytest.mark.slow
def test_reload_and_reconfigure_over_http(echo_config, admin_key, live_echo):
    """Both run provider code on the server's loop from a request thread: no deadlock."""
    auth = {"Authorization": f"Bearer {admin_key[1]}"}
    with httpx.Client(base_url=live_echo.url, timeout=10, headers=auth) as client:
        reloaded = client.post("/plugins/echo/reload", json={"provider_name": "echo"})
        changed = client.put("/plugins/echo/config", json={"prefix": "Live: "})
        bad = client.put("/plugins/echo/config", json={"delay_ms": -1})
    assert reloaded.status_code == 200, reloaded.text
    assert changed.status_code == 200, changed.text
    assert changed.json()["live"]["config"]["prefix"] == "Live: "
    assert runtime.registry.get("echo").config["prefix"] == "Live: "
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "delay_ms"
