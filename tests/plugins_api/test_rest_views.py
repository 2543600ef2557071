"""The REST resources: ``/api/providers/`` and ``/api/health-checks/``."""

from __future__ import annotations

import datetime as dt

import pytest
from rest_framework.test import APIClient

from providers.models import HealthCheck, ProviderConfig
from providers.runtime import process as runtime
from tests.plugins_api.test_plugin_views import SECRET, SecuretestProvider, error_of, load

NEW_SECRET = "sk-new-key-abcdefghijkl"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def admin(admin_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


@pytest.fixture
def securetest_plugin(db) -> None:
    runtime.registry.register(SecuretestProvider, "securetest")


@pytest.fixture
def secure(
    api, admin, securetest_plugin, serving_loop, django_capture_on_commit_callbacks
) -> ProviderConfig:
    """A securetest provider created through the API, live."""
    body = {
        "name": "secure",
        "plugin": "securetest",
        "settings": {"timeout": 10, "default_model": "secure-1"},
        "secrets": {"api_key": SECRET},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/providers/", body, format="json", **admin)
    assert response.status_code == 201, response.json()
    return ProviderConfig.objects.get(name="secure")


REST = [
    ("get", "/api/providers/"),
    ("post", "/api/providers/"),
    ("get", "/api/providers/echo/"),
    ("put", "/api/providers/echo/"),
    ("patch", "/api/providers/echo/"),
    ("delete", "/api/providers/echo/"),
    ("get", "/api/health-checks/"),
    ("get", "/api/health-checks/1/"),
]


@pytest.mark.parametrize(("method", "url"), REST)
def test_rest_needs_a_key(api, echo_config, method, url):
    body = {"name": "echo", "plugin": "echo", "settings": {"prefix": "X"}}
    response = getattr(api, method)(url, body, format="json")
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_required"
    assert ProviderConfig.objects.get().settings == {"prefix": "Echo: "}


@pytest.mark.parametrize(("method", "url"), REST)
def test_rest_refuses_a_chat_key(api, echo_config, chat_key, method, url):
    body = {"name": "echo", "plugin": "echo", "settings": {"prefix": "X"}}
    auth = {"HTTP_AUTHORIZATION": f"Bearer {chat_key[1]}"}
    response = getattr(api, method)(url, body, format="json", **auth)
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_denied"
    assert ProviderConfig.objects.get().settings == {"prefix": "Echo: "}


def test_create_stores_the_secret_shows_it_masked_and_goes_live(api, admin, secure):
    assert secure.secrets == {"api_key": SECRET}
    assert secure.settings == {"timeout": 10, "default_model": "secure-1"}
    assert runtime.registry.get("secure").config["api_key"] == SECRET
    body = api.get("/api/providers/secure/", **admin).json()
    assert body["secrets"] == {"api_key": "sk-...cret"}
    assert body["live"]["loaded"] is True
    assert body["live"]["config"]["api_key"] == "sk-...cret"
    assert body["capabilities"] == ["streaming", "vision"]
    assert SECRET not in str(body)


def test_list_is_paginated(api, admin, echo_config):
    body = api.get("/api/providers/", **admin).json()
    assert body["count"] == 1
    assert body["next"] is None
    assert [p["name"] for p in body["results"]] == ["echo"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad Name", "plugin": "echo"}, "name"),
        ({"name": "echo", "plugin": "echo"}, "name"),  # taken
        ({"name": "new"}, "plugin"),
        ({"name": "new", "plugin": "nope"}, "plugin"),
        ({"name": "new", "plugin": "echo", "settings": {"delay_ms": -5}}, "delay_ms"),
        ({"name": "new", "plugin": "echo", "settings": "prefix"}, "settings"),
        ({"name": "new", "plugin": "echo", "fallbacks": ["new"]}, "fallbacks"),
        ({"name": "new", "plugin": "securetest", "secrets": {}}, "api_key"),
        ({"name": "new", "plugin": "securetest", "settings": {"api_key": SECRET}}, "api_key"),
    ],
)
def test_create_with_bad_input_names_the_field_and_creates_nothing(
    api, admin, echo_config, securetest_plugin, body, field
):
    response = api.post("/api/providers/", body, format="json", **admin)
    assert response.status_code == 400, response.json()
    assert error_of(response)["field"] == field
    assert list(ProviderConfig.objects.values_list("name", flat=True)) == ["echo"]
    assert SECRET not in response.content.decode()


def test_a_new_default_takes_over_the_flag(api, admin, echo_config):
    body = {"name": "other", "plugin": "echo", "is_default": True}
    assert api.post("/api/providers/", body, format="json", **admin).status_code == 201
    defaults = ProviderConfig.objects.filter(is_default=True)
    assert list(defaults.values_list("name", flat=True)) == ["other"]


def test_patch_merges_settings_and_secrets(api, admin, secure, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.patch(
            "/api/providers/secure/", {"settings": {"timeout": 30}}, format="json", **admin
        )
    assert response.status_code == 200, response.json()
    secure.refresh_from_db()
    assert secure.settings == {"timeout": 30, "default_model": "secure-1"}
    assert secure.secrets == {"api_key": SECRET}
    assert runtime.registry.get("secure").config["timeout"] == 30

    api.patch(
        "/api/providers/secure/", {"secrets": {"api_key": NEW_SECRET}}, format="json", **admin
    )
    secure.refresh_from_db()
    assert secure.secrets == {"api_key": NEW_SECRET}
    assert secure.settings["timeout"] == 30


def test_sending_back_the_masked_secret_keeps_the_stored_one(api, admin, secure):
    shown = api.get("/api/providers/secure/", **admin).json()
    response = api.patch(
        "/api/providers/secure/", {"secrets": shown["secrets"]}, format="json", **admin
    )
    assert response.status_code == 200
    secure.refresh_from_db()
    assert secure.secrets == {"api_key": SECRET}


def test_put_replaces_settings_but_keeps_unsent_secrets(api, admin, secure):
    body = {"name": "secure", "plugin": "securetest", "settings": {"timeout": 5}}
    response = api.put("/api/providers/secure/", body, format="json", **admin)
    assert response.status_code == 200, response.json()
    secure.refresh_from_db()
    assert secure.settings == {"timeout": 5}
    assert secure.secrets == {"api_key": SECRET}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"settings": {"timeout": 0}}, "timeout"),
        ({"settings": {"surprise": 1}}, "surprise"),
        ({"secrets": {"api_key": None}}, "api_key"),
        ({"name": "renamed"}, "name"),
        ({"plugin": "nope"}, "plugin"),
        ({"fallbacks": "echo"}, "fallbacks"),
    ],
)
def test_patch_with_bad_input_names_the_field_and_changes_nothing(api, admin, secure, body, field):
    before = runtime.registry.get("secure")
    response = api.patch("/api/providers/secure/", body, format="json", **admin)
    assert response.status_code == 400, response.json()
    assert error_of(response)["field"] == field
    row = ProviderConfig.objects.get()
    assert (row.name, row.plugin, row.settings, row.secrets) == (
        "secure",
        "securetest",
        {"timeout": 10, "default_model": "secure-1"},
        {"api_key": SECRET},
    )
    assert runtime.registry.get("secure") is before


def test_unknown_provider_is_404(api, admin, db):
    response = api.get("/api/providers/nope/", **admin)
    assert response.status_code == 404
    assert error_of(response)["type"] == "not_found"


def test_delete_takes_the_provider_out_of_service(
    api, admin, secure, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete("/api/providers/secure/", **admin)
    assert response.status_code == 204
    assert not ProviderConfig.objects.exists()
    assert "secure" not in runtime.registry


# --- /api/health-checks/ -------------------------------------------------------


@pytest.fixture
def history(echo_config) -> dict[str, HealthCheck]:
    other = ProviderConfig.objects.create(name="other", plugin="echo")
    at = dt.datetime(2025, 1, 31, 12, 0, tzinfo=dt.UTC)
    rows = {
        "echo-old": HealthCheck(provider=echo_config, available=True, checked_at=at),
        "echo-new": HealthCheck(
            provider=echo_config,
            available=False,
            error="down",
            checked_at=at + dt.timedelta(hours=2),
        ),
        "other": HealthCheck(
            provider=other, available=True, models=["echo-1"], checked_at=at + dt.timedelta(hours=1)
        ),
    }
    for row in rows.values():
        row.save()
    return rows


def ids(response) -> list[int]:
    assert response.status_code == 200, response.json()
    return [r["id"] for r in response.json()["results"]]


def test_health_checks_newest_first(api, admin, history):
    body = api.get("/api/health-checks/", **admin).json()
    assert body["count"] == 3
    assert [r["id"] for r in body["results"]] == [
        history["echo-new"].pk,
        history["other"].pk,
        history["echo-old"].pk,
    ]
    newest = body["results"][0]
    assert newest["provider"] == "echo"
    assert newest["available"] is False
    assert newest["error"] == "down"
    assert newest["checked_at"] == "2025-01-31T14:00:00Z"


def test_health_checks_filter_by_provider_and_time(api, admin, history):
    assert ids(api.get("/api/health-checks/?provider=other", **admin)) == [history["other"].pk]
    since = api.get("/api/health-checks/?since=2025-01-31T12:30:00Z", **admin)
    assert ids(since) == [history["echo-new"].pk, history["other"].pk]
    window = api.get(
        "/api/health-checks/?provider=echo&since=2025-01-31T11:00:00Z&until=2025-01-31T13:00:00Z",
        **admin,
    )
    assert ids(window) == [history["echo-old"].pk]
    assert ids(api.get("/api/health-checks/?provider=ghost", **admin)) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("until=2025-13-01", "until"),
        ("since=2025-02-01T00:00:00Z&until=2025-01-01T00:00:00Z", "until"),
    ],
)
def test_health_checks_bad_filter_names_the_field(api, admin, history, query, field):
    response = api.get(f"/api/health-checks/?{query}", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] == field


def test_health_checks_are_paginated_and_read_only(api, admin, history):
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    HealthCheck.objects.bulk_create(
        HealthCheck(provider=history["other"].provider, available=True, checked_at=at)
        for _ in range(50)
    )
    first = api.get("/api/health-checks/", **admin).json()
    assert first["count"] == 53
    assert len(first["results"]) == 50  # the site's PAGE_SIZE
    assert first["next"].endswith("page=2")
    second = api.get(first["next"], **admin).json()
    assert len(second["results"]) == 3
    one = api.get(f"/api/health-checks/{history['other'].pk}/", **admin).json()
    assert one["models"] == ["echo-1"]
    assert api.post("/api/health-checks/", {}, format="json", **admin).status_code == 405
    assert api.delete(f"/api/health-checks/{history['other'].pk}/", **admin).status_code == 405


def test_health_checks_written_by_the_health_endpoint_appear(api, admin, echo_config):
    load("echo")
    api.get("/plugins/health?refresh=1", **admin)
    body = api.get("/api/health-checks/?provider=echo", **admin).json()
    assert body["count"] == 1
    assert body["results"][0]["available"] is True
