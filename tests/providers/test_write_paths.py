"""Every write path goes through one service: merge, validate, start a candidate, save.

A save that fails after validation (a locked database, a refused byte, a
constraint) must change nothing anywhere: the live instance stays the one
that served before, and no audit entry is written. Each write path is
tried: the admin form, ``/api/providers/`` (POST and PATCH), ``PUT
/plugins/{name}/config``, ``POST /plugins/{name}/reload`` with a config and
the YAML import. Then: a key the provider refuses is a 409 on every path
(the admin shows it next to the field), supplying the secret an import
lacked enables the provider, and every save raises the revision by one.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DatabaseError
from django.urls import reverse
from rest_framework.test import APIClient

from providers.base import AbstractAIProvider, PluginMetadata
from providers.config.files import ProviderEntry
from providers.config.services import merge_provider_config, provider_config_create
from providers.config.yaml_import import sync_provider_configs
from providers.errors import AuthenticationError
from providers.models import ProviderConfig, ProviderConfigChange
from providers.runtime import config_sync
from providers.runtime import process as runtime
from providers.types import ChatRequest, ChatResponse, HealthStatus
from tests.providers.test_admin import form_data

GOOD_KEY = "kc-good-0123456789abcdef"
BAD_KEY = "kc-bad-9876543210fedcba"


class KeycheckProvider(AbstractAIProvider):
    """A provider whose upstream accepts one key, and says the refused one in its error."""

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(name="Keycheck", version="0.1", requires_api_key=True)

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "api_key": {"type": "string", "writeOnly": True, "minLength": 8},
                "base_url": {"type": "string", "default": "https://api.example.com/v1"},
                "timeout": {"type": "integer", "minimum": 1, "default": 60},
            },
            "required": ["api_key"],
            "additionalProperties": False,
        }

    async def initialize(self) -> None:
        if self.config["api_key"] != GOOD_KEY:
            # A careless plugin: the key it refused is in its message.
            raise AuthenticationError(f"key {self.config['api_key']} refused", field="api_key")

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="ok", model="k", provider=self.name)

    async def health_check(self) -> HealthStatus:
        return HealthStatus(available=True, models=["k"])

    async def list_models(self) -> list[str]:
        return ["k"]


@pytest.fixture
def api() -> APIClient:
    # A failed save is a 503 (the admin's a 500 page): the test reads the response.
    return APIClient(raise_request_exception=False)


@pytest.fixture
def admin(admin_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


@pytest.fixture
def staff(client, admin_user):
    client.raise_request_exception = False
    client.force_login(admin_user)
    return client


@pytest.fixture
def keyed(db) -> ProviderConfig:
    """A live keycheck provider, serving with the good key."""
    runtime.registry.register(KeycheckProvider, "keycheck")
    config = provider_config_create(
        name="kc", plugin="keycheck", settings={"timeout": 10}, secrets={"api_key": GOOD_KEY}
    )
    assert runtime.run_in_serving_loop(config_sync.sync_provider, "kc") is None
    return config


@pytest.fixture
def failing_save(monkeypatch):
    """Make every ProviderConfig save fail as a locked database does, after validation."""
    calls = []

    def save(self, *args, **kwargs):
        calls.append(self.name)
        raise DatabaseError("database is locked")

    monkeypatch.setattr(ProviderConfig, "save", save)
    return calls


def assert_nothing_changed(name: str, live: AbstractAIProvider | None, audits: int) -> None:
    """The worker serves LIVE as before, and no audit entry was added."""
    if live is None:
        assert name not in runtime.registry
    else:
        assert runtime.registry.get(name) is live
        assert live.config["timeout"] == 10
        assert live.config["api_key"] == GOOD_KEY
    assert ProviderConfigChange.objects.count() == audits


# --- a failed save changes nothing, on every path ------------------------------


def test_a_save_the_database_itself_refuses_changes_nothing(
    api, admin, keyed, django_capture_on_commit_callbacks
):
    """A real refusal, not a stand-in: a trigger makes the database abort the update."""
    from django.db import connection

    # Created inside the test's transaction: the rollback after the test removes it.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_provider_update() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'refused by the database'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_provider_update BEFORE UPDATE ON providers_providerconfig"
            " FOR EACH ROW EXECUTE FUNCTION refuse_provider_update()"
        )
    live, audits = runtime.registry.get("kc"), ProviderConfigChange.objects.count()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.put("/plugins/kc/config", {"timeout": 99}, format="json", **admin)
    assert response.status_code == 503, response.content
    assert response.json()["error"]["type"] == "not_saved"
    assert "refused by the database" not in response.content.decode()
    assert callbacks == []
    assert_nothing_changed("kc", live, audits)
    row = ProviderConfig.objects.get(name="kc")
    assert (row.settings, row.revision) == ({"timeout": 10}, 1)


def test_failed_save_through_put_config_changes_nothing(
    api, admin, keyed, failing_save, django_capture_on_commit_callbacks
):
    live, audits = runtime.registry.get("kc"), ProviderConfigChange.objects.count()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.put("/plugins/kc/config", {"timeout": 99}, format="json", **admin)
    assert response.status_code == 503
    assert failing_save == ["kc"]  # validated and started, then the save failed
    assert callbacks == []
    assert_nothing_changed("kc", live, audits)
    assert ProviderConfig.objects.get(name="kc").settings == {"timeout": 10}


def test_failed_save_through_reload_with_config_changes_nothing(
    api, admin, keyed, failing_save, django_capture_on_commit_callbacks
):
    live, audits = runtime.registry.get("kc"), ProviderConfigChange.objects.count()
    body = {"config": {"timeout": 99}}
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post("/plugins/kc/reload", body, format="json", **admin)
    assert response.status_code == 503
    assert failing_save == ["kc"]
    assert callbacks == []
    assert_nothing_changed("kc", live, audits)


def test_failed_save_through_api_patch_changes_nothing(
    api, admin, keyed, failing_save, django_capture_on_commit_callbacks
):
    live, audits = runtime.registry.get("kc"), ProviderConfigChange.objects.count()
    body = {"settings": {"timeout": 99}, "secrets": {"api_key": GOOD_KEY}}
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.patch("/api/providers/kc/", body, format="json", **admin)
    assert response.status_code == 503
    assert failing_save == ["kc"]
    assert callbacks == []
    assert_nothing_changed("kc", live, audits)


def test_failed_save_through_api_post_changes_nothing(
    api, admin, keyed, failing_save, django_capture_on_commit_callbacks
):
    audits = ProviderConfigChange.objects.count()
    body = {"name": "kc2", "plugin": "keycheck", "secrets": {"api_key": GOOD_KEY}}
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post("/api/providers/", body, format="json", **admin)
    assert response.status_code == 503
    assert failing_save == ["kc2"]
    assert callbacks == []
    assert_nothing_changed("kc2", None, audits)
    assert not ProviderConfig.objects.filter(name="kc2").exists()


def test_failed_save_through_the_admin_form_changes_nothing(
    staff, keyed, monkeypatch, django_capture_on_commit_callbacks
):
    live, audits = runtime.registry.get("kc"), ProviderConfigChange.objects.count()
    url = reverse("admin:providers_providerconfig_change", args=[keyed.pk])
    data = form_data(staff.get(url), setting__timeout="99")
    calls = []

    def save(self, *args, **kwargs):
        calls.append(self.name)
        raise DatabaseError("database is locked")

    monkeypatch.setattr(ProviderConfig, "save", save)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = staff.post(url, data)
    assert response.status_code == 500  # Django's error page; the admin's form is not saved
    assert calls == ["kc"]
    assert callbacks == []
    assert_nothing_changed("kc", live, audits)


def test_failed_save_through_the_yaml_import_changes_nothing(
    keyed, failing_save, django_capture_on_commit_callbacks
):
    ProviderConfig.objects.filter(name="kc").update(
        import_fingerprint=_fingerprint_of(ProviderConfig.objects.get(name="kc"))
    )
    live, audits = runtime.registry.get("kc"), ProviderConfigChange.objects.count()
    entry = ProviderEntry(name="kc", plugin="keycheck", config={"api_key": GOOD_KEY, "timeout": 99})
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(DatabaseError):
            sync_provider_configs(entries=[entry])
    assert failing_save == ["kc"]
    assert callbacks == []
    assert_nothing_changed("kc", live, audits)


def _fingerprint_of(row: ProviderConfig) -> str:
    from providers.config.yaml_import import ImportedValues

    return ImportedValues.from_row(row).fingerprint()


# --- a key the provider refuses is a 409 wherever it comes from ----------------


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("put", "/plugins/kc/config", {"api_key": BAD_KEY}),
        ("post", "/plugins/kc/reload", {"config": {"api_key": BAD_KEY}}),
        ("patch", "/api/providers/kc/", {"secrets": {"api_key": BAD_KEY}}),
        (
            "put",
            "/api/providers/kc/",
            {"name": "kc", "plugin": "keycheck", "secrets": {"api_key": BAD_KEY}},
        ),
    ],
)
def test_a_refused_key_is_409_on_every_api_path_and_saves_nothing(
    api, admin, keyed, method, url, body
):
    live, audits = runtime.registry.get("kc"), ProviderConfigChange.objects.count()
    response = getattr(api, method)(url, body, format="json", **admin)
    assert response.status_code == 409, response.json()
    error = response.json()["error"]
    assert error["type"] == "initialization_failed"
    assert "refused" in error["message"]
    assert BAD_KEY not in response.content.decode()  # masked, though no live instance knew it
    assert ProviderConfig.objects.get(name="kc").secrets == {"api_key": GOOD_KEY}
    assert_nothing_changed("kc", live, audits)


def test_a_refused_key_on_create_is_409(api, admin, keyed):
    body = {"name": "kc2", "plugin": "keycheck", "secrets": {"api_key": BAD_KEY}}
    response = api.post("/api/providers/", body, format="json", **admin)
    assert response.status_code == 409
    assert not ProviderConfig.objects.filter(name="kc2").exists()


def test_the_admin_shows_a_refused_key_next_to_the_field(staff, keyed):
    live, audits = runtime.registry.get("kc"), ProviderConfigChange.objects.count()
    url = reverse("admin:providers_providerconfig_change", args=[keyed.pk])
    response = staff.post(url, form_data(staff.get(url), setting__api_key=BAD_KEY))
    assert response.status_code == 200  # the form again, with the error
    errors = response.context["adminform"].form.errors
    assert "refused" in " ".join(errors["setting__api_key"])
    assert BAD_KEY not in response.content.decode()
    assert_nothing_changed("kc", live, audits)


# --- supplying the secret an import lacked enables the provider ------------------


@pytest.fixture
def import_disabled(keyed) -> ProviderConfig:
    """A keycheck provider the YAML import added disabled: KC_KEY was not set."""
    entry = ProviderEntry(
        name="kcx",
        plugin="keycheck",
        config={"timeout": 10},
        missing_variables=["KC_KEY"],
        unset_keys=["api_key"],
    )
    report = sync_provider_configs(entries=[entry])
    assert report.get("kcx").outcome == "created"
    row = ProviderConfig.objects.get(name="kcx")
    assert (row.enabled, row.missing_secrets) == (False, ["api_key"])
    assert "KC_KEY" in row.disabled_reason
    return row


def _assert_enabled_by_the_key(body: dict[str, Any]) -> None:
    assert body["enabled"] is True
    assert body["disabled_reason"] == ""
    row = ProviderConfig.objects.get(name="kcx")
    assert (row.enabled, row.disabled_reason, row.missing_secrets) == (True, "", [])
    assert row.secrets == {"api_key": GOOD_KEY}


def test_put_config_with_the_missing_key_enables_an_import_disabled_provider(
    api, admin, import_disabled
):
    response = api.put("/plugins/kcx/config", {"api_key": GOOD_KEY}, format="json", **admin)
    assert response.status_code == 200, response.json()
    _assert_enabled_by_the_key(response.json())


def test_api_patch_with_the_missing_key_enables_an_import_disabled_provider(
    api, admin, import_disabled
):
    body = {"secrets": {"api_key": GOOD_KEY}}
    response = api.patch("/api/providers/kcx/", body, format="json", **admin)
    assert response.status_code == 200, response.json()
    _assert_enabled_by_the_key(response.json())


def test_the_admin_with_the_missing_key_enables_an_import_disabled_provider(staff, import_disabled):
    url = reverse("admin:providers_providerconfig_change", args=[import_disabled.pk])
    response = staff.post(url, form_data(staff.get(url), setting__api_key=GOOD_KEY))
    assert response.status_code == 302
    row = ProviderConfig.objects.get(name="kcx")
    assert (row.enabled, row.disabled_reason, row.missing_secrets) == (True, "", [])


def test_the_missing_key_with_enabled_false_keeps_it_disabled(api, admin, import_disabled):
    body = {"enabled": False, "secrets": {"api_key": GOOD_KEY}}
    response = api.patch("/api/providers/kcx/", body, format="json", **admin)
    assert response.status_code == 200
    assert response.json()["enabled"] is False


def test_a_provider_an_admin_disabled_stays_disabled_when_a_key_is_sent(api, admin, keyed):
    provider_config_create(
        name="off", plugin="keycheck", enabled=False, disabled_reason="Paused by ops."
    )
    response = api.put("/plugins/off/config", {"api_key": GOOD_KEY}, format="json", **admin)
    assert response.status_code == 200
    assert response.json()["enabled"] is False
    assert response.json()["disabled_reason"] == "Paused by ops."


def test_an_import_disabled_provider_with_a_bad_key_stays_disabled(api, admin, import_disabled):
    response = api.put("/plugins/kcx/config", {"api_key": BAD_KEY}, format="json", **admin)
    assert response.status_code == 409
    row = ProviderConfig.objects.get(name="kcx")
    assert (row.enabled, row.missing_secrets) == (False, ["api_key"])


# --- the revision ---------------------------------------------------------------


def test_every_write_raises_the_revision_by_one_and_the_audit_ignores_it(
    api, admin, keyed, django_capture_on_commit_callbacks
):
    assert ProviderConfig.objects.get(name="kc").revision == 1
    with django_capture_on_commit_callbacks(execute=True):
        api.put("/plugins/kc/config", {"timeout": 20}, format="json", **admin)
        api.patch("/api/providers/kc/", {"settings": {"timeout": 30}}, format="json", **admin)
        api.post("/plugins/kc/reload", {"config": {"timeout": 40}}, format="json", **admin)
    assert ProviderConfig.objects.get(name="kc").revision == 4
    fields = {c["field"] for e in ProviderConfigChange.objects.all() for c in e.changes}
    assert "revision" not in fields and "missing_secrets" not in fields

    status = api.get("/plugins/kc/status", **admin).json()
    assert status["revision"] == {"serving": 4, "database": 4}
    detail = api.get("/api/providers/kc/", **admin).json()
    assert detail["revision"] == {"serving": 4, "database": 4}


def test_the_revision_shows_drift_after_an_sql_change(api, admin, keyed):
    ProviderConfig.objects.filter(name="kc").update(revision=7)
    assert api.get("/plugins/kc/status", **admin).json()["revision"] == {
        "serving": 1,
        "database": 7,
    }


def test_taking_the_default_raises_the_revision_of_the_old_default(api, admin, keyed):
    echo = provider_config_create(name="echo", plugin="echo", is_default=True)
    response = api.patch("/api/providers/kc/", {"is_default": True}, format="json", **admin)
    assert response.status_code == 200
    echo.refresh_from_db()
    assert (echo.is_default, echo.revision) == (False, 2)


# --- the merge rules, in one function -------------------------------------------


def test_merge_settings_key_by_key_and_null_removes():
    settings, secrets = merge_provider_config(
        settings={"a": 1, "b": 2},
        secrets={"api_key": GOOD_KEY},
        changes={"settings": {"b": None, "c": 3}},
    )
    assert settings == {"a": 1, "c": 3}
    assert secrets == {"api_key": GOOD_KEY}


def test_merge_replace_settings_still_keeps_secrets_not_sent():
    settings, secrets = merge_provider_config(
        settings={"a": 1, "b": 2},
        secrets={"api_key": GOOD_KEY, "org": "org-123456789"},
        changes={"settings": {"c": 3}, "secrets": {"org": None}, "replace_settings": True},
    )
    assert settings == {"c": 3}
    assert secrets == {"api_key": GOOD_KEY}


def test_merge_a_masked_secret_sent_back_keeps_the_stored_one():
    _, secrets = merge_provider_config(
        settings={}, secrets={"api_key": GOOD_KEY}, changes={"secrets": {"api_key": "kc-...cdef"}}
    )
    assert secrets == {"api_key": GOOD_KEY}


def test_merge_unreadable_secrets_are_replaced_only_when_sent():
    assert merge_provider_config(settings={}, secrets=None, changes={"settings": {"a": 1}}) == (
        {"a": 1},
        None,
    )
    assert merge_provider_config(
        settings={}, secrets=None, changes={"secrets": {"api_key": GOOD_KEY}}
    ) == ({}, {"api_key": GOOD_KEY})


def test_merge_replace_secrets_is_the_whole_set():
    _, secrets = merge_provider_config(
        settings={},
        secrets={"api_key": GOOD_KEY, "org": "org-123456789"},
        changes={"secrets": {"api_key": BAD_KEY}, "replace_secrets": True},
    )
    assert secrets == {"api_key": BAD_KEY}
