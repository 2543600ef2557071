"""The audit trail through the API: who changed what via ``/api/`` and ``/plugins/``, and its exports.

Every change made through the API names its caller (``key:<key name>`` for
a Bearer key, the username for a staff session), its source (``api`` for
``/api/providers/``, ``plugins-api`` for ``/plugins/``) and address, and
holds secrets only as masks. ``/api/providers/{name}/history/`` and
``/api/history/`` serve it; their ``export/`` hands it to auditors as
CSV or JSON. Providers whose secrets no key decrypts stay readable.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from rest_framework.test import APIClient

from providers.config.services import provider_config_create, provider_config_update
from providers.models import ProviderConfig, ProviderConfigChange
from providers.runtime import process as runtime
from providers.secrets.box import new_key
from tests.plugins_api.test_plugin_views import SECRET, SecuretestProvider, error_of, load

NEW_SECRET = "sk-new-key-abcdefghijkl"
SECRET_MASK, NEW_SECRET_MASK = "sk-...cret", "sk-...ijkl"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def admin(admin_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


@pytest.fixture
def secure(db) -> ProviderConfig:
    """A live securetest provider holding SECRET, created by the system (one entry)."""
    runtime.registry.register(SecuretestProvider, "securetest")
    config = provider_config_create(
        name="secure",
        plugin="securetest",
        settings={"timeout": 10, "default_model": "secure-1"},
        secrets={"api_key": SECRET},
    )
    load("secure")
    return config


def entries(name: str = "secure") -> list[ProviderConfigChange]:
    """Return the audit entries of NAME, oldest first, the fixture's creation left out."""
    return list(
        ProviderConfigChange.objects.filter(provider_name=name)
        .exclude(actor="system")
        .order_by("id")
    )


def field_changes(entry: ProviderConfigChange) -> dict[str, dict]:
    return {change["field"]: change for change in entry.changes}


# --- each API source writes exactly one entry per change ---------------------


def test_patch_with_a_bearer_key_is_audited_once_with_a_masked_diff(api, admin, secure) -> None:
    body = {"settings": {"timeout": 30}, "secrets": {"api_key": NEW_SECRET}}
    response = api.patch("/api/providers/secure/", body, format="json", **admin)
    assert response.status_code == 200, response.json()

    (entry,) = entries()
    assert (entry.action, entry.actor, entry.source, entry.remote_addr) == (
        "updated",
        "key:test-admin",
        "api",
        "127.0.0.1",
    )
    changes = field_changes(entry)
    assert changes["settings.timeout"] == {"field": "settings.timeout", "before": 10, "after": 30}
    assert changes["secrets.api_key"] == {
        "field": "secrets.api_key",
        "before": SECRET_MASK,
        "after": NEW_SECRET_MASK,
        "secret": True,
        "changed": True,
    }
    assert SECRET not in json.dumps(entry.changes) and NEW_SECRET not in json.dumps(entry.changes)


def test_create_and_delete_through_the_rest_api_are_audited(api, admin, secure) -> None:
    body = {"name": "other", "plugin": "echo", "settings": {"prefix": "O: "}}
    assert api.post("/api/providers/", body, format="json", **admin).status_code == 201
    assert api.delete("/api/providers/other/", **admin).status_code == 204

    created, deleted = entries("other")
    assert (created.action, created.actor, created.source) == ("created", "key:test-admin", "api")
    assert (deleted.action, deleted.actor, deleted.source) == ("deleted", "key:test-admin", "api")
    assert {"field": "settings.prefix", "before": "O: ", "after": None} in deleted.changes


def test_a_staff_session_is_audited_under_its_username(api, secure, admin_user) -> None:
    api.force_login(admin_user)
    response = api.patch("/api/providers/secure/", {"settings": {"timeout": 20}}, format="json")
    assert response.status_code == 200, response.json()
    (entry,) = entries()
    assert (entry.actor, entry.source) == ("admin", "api")


def test_put_plugin_config_is_audited_once_as_the_plugins_api(api, admin, secure) -> None:
    response = api.put(
        "/plugins/secure/config", {"timeout": 30, "api_key": NEW_SECRET}, format="json", **admin
    )
    assert response.status_code == 200, response.json()

    (entry,) = entries()
    assert (entry.action, entry.actor, entry.source) == ("updated", "key:test-admin", "plugins-api")
    assert field_changes(entry)["secrets.api_key"]["after"] == NEW_SECRET_MASK
    assert NEW_SECRET not in json.dumps(entry.changes)


def test_reload_with_a_config_is_audited_and_a_plain_reload_is_not(api, admin, secure) -> None:
    assert api.post("/plugins/secure/reload", {}, format="json", **admin).status_code == 200
    assert entries() == []

    body = {"config": {"timeout": 15, "default_model": "secure-1"}}
    assert api.post("/plugins/secure/reload", body, format="json", **admin).status_code == 200
    (entry,) = entries()
    assert (entry.source, entry.actor) == ("plugins-api", "key:test-admin")
    assert field_changes(entry)["settings.timeout"] == {
        "field": "settings.timeout",
        "before": 10,
        "after": 15,
    }


def test_delete_through_the_plugins_api_is_audited(api, admin, secure) -> None:
    assert api.delete("/plugins/secure", **admin).status_code == 204
    (entry,) = entries()
    assert (entry.action, entry.source) == ("deleted", "plugins-api")
    assert field_changes(entry)["secrets.api_key"]["before"] == SECRET_MASK


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("patch", "/api/providers/secure/", {"settings": {"timeout": 0}}),
        ("patch", "/api/providers/secure/", {"secrets": {"api_key": None}}),
        ("put", "/plugins/secure/config", {"timeout": "soon"}),
        ("put", "/plugins/secure/config", {"fail_init": True}),  # fails to start: 409
        ("post", "/plugins/secure/reload", {"config": {"api_key": "short"}}),
    ],
)
def test_a_refused_change_writes_no_entry(api, admin, secure, method, url, body) -> None:
    response = getattr(api, method)(url, body, format="json", **admin)
    assert response.status_code in (400, 409), response.json()
    assert entries() == []
    assert ProviderConfig.objects.get(name="secure").settings["timeout"] == 10


# --- reading the trail -------------------------------------------------------


@pytest.fixture
def trail(secure) -> ProviderConfig:
    """Three more changes of SECURE, by different actors, and one of another provider."""
    from providers.audit.history import Actor

    provider_config_update(
        config=secure,
        changes={"settings": {"timeout": 20}},
        actor=Actor("alice", "admin", "10.0.0.1"),
    )
    provider_config_update(
        config=secure,
        changes={"secrets": {"api_key": NEW_SECRET}},
        actor=Actor("key:ops", "api", "10.0.0.2"),
    )
    provider_config_update(config=secure, changes={"enabled": False}, actor=Actor("bob", "admin"))
    provider_config_create(name="other", plugin="echo", actor=Actor("carol", "yaml-import"))
    return secure


def test_provider_history_is_paginated_newest_first(api, admin, trail) -> None:
    body = api.get("/api/providers/secure/history/", **admin).json()
    assert body["count"] == 4
    assert [e["action"] for e in body["results"]] == ["disabled", "updated", "updated", "created"]
    latest = body["results"][0]
    assert set(latest) == {
        "id",
        "changed_at",
        "provider",
        "action",
        "actor",
        "source",
        "remote_addr",
        "changes",
    }
    assert (latest["provider"], latest["actor"], latest["source"]) == ("secure", "bob", "admin")
    assert latest["changed_at"].endswith("Z")
    assert SECRET not in json.dumps(body) and NEW_SECRET not in json.dumps(body)


def test_history_outlives_the_provider_and_an_unknown_one_is_404(api, admin, trail) -> None:
    api.delete("/api/providers/secure/", **admin)
    body = api.get("/api/providers/secure/history/", **admin).json()
    assert body["results"][0]["action"] == "deleted"
    missing = api.get("/api/providers/nothing/history/", **admin)
    assert missing.status_code == 404
    assert error_of(missing)["type"] == "provider_not_found"


def test_history_needs_an_admin(api, chat_key, trail) -> None:
    assert api.get("/api/providers/secure/history/").status_code == 401
    chat = {"HTTP_AUTHORIZATION": f"Bearer {chat_key[1]}"}
    assert api.get("/api/history/", **chat).status_code == 403
    assert api.get("/api/history/export/?format=csv", **chat).status_code == 403


def test_export_csv_has_one_row_per_changed_field(api, admin, trail) -> None:
    response = api.get("/api/providers/secure/history/export/?format=csv", **admin)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert 'attachment; filename="echo-history-secure-' in response["Content-Disposition"]
    text = response.content.decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "changed_at",
        "provider",
        "action",
        "actor",
        "source",
        "remote_addr",
        "field",
        "before",
        "after",
        "secret",
    ]
    by_field = {(r["actor"], r["field"]): r for r in rows}
    assert by_field[("alice", "settings.timeout")] | {"changed_at": ""} == {
        "changed_at": "",
        "provider": "secure",
        "action": "updated",
        "actor": "alice",
        "source": "admin",
        "remote_addr": "10.0.0.1",
        "field": "settings.timeout",
        "before": "10",
        "after": "20",
        "secret": "false",
    }
    secret = by_field[("key:ops", "secrets.api_key")]
    assert (secret["before"], secret["after"], secret["secret"]) == (
        f'"{SECRET_MASK}"',
        f'"{NEW_SECRET_MASK}"',
        "true",
    )
    assert {r["provider"] for r in rows} == {"secure"}
    assert SECRET not in text and NEW_SECRET not in text


def test_export_json_is_every_entry(api, admin, trail) -> None:
    response = api.get("/api/providers/secure/history/export/?format=json", **admin)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert [e["action"] for e in body] == ["disabled", "updated", "updated", "created"]
    assert body == api.get("/api/providers/secure/history/", **admin).json()["results"]
    # Asking by media type works too.
    by_accept = api.get("/api/providers/secure/history/export/", HTTP_ACCEPT="text/csv", **admin)
    assert by_accept["Content-Type"].startswith("text/csv")


def test_csv_cells_cannot_become_spreadsheet_formulas(api, admin, secure) -> None:
    from providers.audit.history import Actor

    provider_config_update(
        config=secure, changes={"settings": {"timeout": 11}}, actor=Actor("=HYPERLINK(1)", "admin")
    )
    text = api.get("/api/history/export/?format=csv&source=admin", **admin).content.decode()
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["actor"] == "'=HYPERLINK(1)"


def test_history_across_providers_filters(api, admin, trail) -> None:
    def actions(query: str) -> list[tuple[str, str]]:
        response = api.get(f"/api/history/{query}", **admin)
        assert response.status_code == 200, response.json()
        return [(e["provider"], e["actor"]) for e in response.json()["results"]]

    assert len(actions("")) == 5
    assert actions("?provider=other") == [("other", "carol")]
    assert actions("?actor=alice") == [("secure", "alice")]
    assert actions("?source=admin") == [("secure", "bob"), ("secure", "alice")]
    assert actions("?action=disabled") == [("secure", "bob")]
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert actions(f"?since={future}") == []
    assert len(actions(f"?until={future}")) == 5
    exported = api.get("/api/history/export/?source=admin", **admin).json()
    assert [e["actor"] for e in exported] == ["bob", "alice"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("until=2025-13-01T00:00:00Z", "until"),
        ("since=2025-02-01T00:00:00Z&until=2025-01-01T00:00:00Z", "until"),
        ("action=renamed", "action"),
    ],
)
def test_a_bad_history_filter_names_the_field(api, admin, trail, query, field) -> None:
    for url in ("/api/history/", "/api/history/export/", "/api/history/export/?format=csv&"):
        separator = "" if url.endswith("&") else "?"
        response = api.get(f"{url}{separator}{query}", **admin)
        assert response.status_code == 400, url
        assert error_of(response)["field"] == field


# --- secrets that no key decrypts --------------------------------------------


@pytest.fixture
def lost_key(settings, secure) -> ProviderConfig:
    """SECURE, after the key that encrypted its secrets left ECHO_ENCRYPTION_KEYS."""
    settings.ECHO_ENCRYPTION_KEYS = [new_key()]
    runtime.run_in_serving_loop(runtime.load_provider_from_database, "secure")
    assert "secure" not in runtime.registry
    return secure


def test_unreadable_secrets_are_reported_not_crashed_on(api, admin, lost_key) -> None:
    body = api.get("/api/providers/secure/", **admin).json()
    assert body["secrets"] == {}
    assert "cannot be decrypted" in body["secrets_error"]
    assert "cannot be decrypted" in body["live"]["last_error"]
    listed = api.get("/plugins/", **admin).json()["providers"]
    assert "cannot be decrypted" in listed[0]["secrets_error"]
    status = api.get("/plugins/secure/status", **admin)
    assert status.status_code == 200, status.json()
    assert status.json()["available"] is False
    assert "cannot be decrypted" in status.json()["last_error"]
    reload = api.post("/plugins/secure/reload", {}, format="json", **admin)
    assert reload.status_code == 409
    assert "cannot be decrypted" in error_of(reload)["message"]
    assert "secure" not in runtime.registry


def test_a_change_without_new_secrets_is_refused_naming_secrets(api, admin, lost_key) -> None:
    before = ProviderConfig.objects.get(name="secure").secrets_encrypted
    for method, url, body in [
        ("patch", "/api/providers/secure/", {"settings": {"timeout": 20}}),
        ("put", "/plugins/secure/config", {"timeout": 20}),
    ]:
        response = getattr(api, method)(url, body, format="json", **admin)
        assert response.status_code == 400, response.json()
        assert error_of(response)["field"] == "secrets"
        assert "cannot be decrypted" in error_of(response)["message"]
    assert ProviderConfig.objects.get(name="secure").secrets_encrypted == before
    assert entries() == []


def test_new_secrets_replace_unreadable_ones(
    api, admin, lost_key, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = api.patch(
            "/api/providers/secure/", {"secrets": {"api_key": NEW_SECRET}}, format="json", **admin
        )
    assert response.status_code == 200, response.json()
    assert response.json()["secrets"] == {"api_key": NEW_SECRET_MASK}
    assert response.json()["secrets_error"] is None
    assert ProviderConfig.objects.get(name="secure").secrets == {"api_key": NEW_SECRET}
    assert runtime.registry.get("secure").config["api_key"] == NEW_SECRET
    (entry,) = entries()
    assert field_changes(entry)["secrets.api_key"]["before"] == "(cannot be decrypted)"


def test_disabling_keeps_unreadable_secrets_for_a_key_put_back(api, admin, lost_key) -> None:
    before = ProviderConfig.objects.get(name="secure").secrets_encrypted
    response = api.patch("/api/providers/secure/", {"enabled": False}, format="json", **admin)
    assert response.status_code == 200, response.json()
    assert ProviderConfig.objects.get(name="secure").secrets_encrypted == before
