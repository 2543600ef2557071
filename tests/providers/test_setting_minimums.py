"""Absurd settings (a 1e-300 s timeout, a 1e-7 s deadline, NaN) are refused by the schema.

Every write path validates through the plugin's schema (providers.config.services),
so each is refused with a 400 naming the field, and nothing changes.
"""

from __future__ import annotations

import io
import json

import pytest

from providers.config.services import provider_config_errors

KEY = "sk-minimums-0000000000000"
BASE_URL = "http://127.0.0.1:9/v1"

# (setting, refused value, part of the message)
ABSURD = [
    ("timeout", 1e-300, "Must be at least 0.1."),
    ("timeout", 0, "Must be at least 0.1."),
    ("timeout", 3601, "Must be at most 3600."),
    ("connect_timeout", 0.001, "Must be at least 0.1."),
    ("connect_timeout", 301, "Must be at most 300."),
    ("deadline_seconds", 1e-7, "Must be at least 0.1."),
    ("deadline_seconds", 1e9, "Must be at most 3600."),
    ("breaker_cooldown_seconds", 0.001, "Must be at least 1."),
    ("breaker_cooldown_seconds", 0, "Must be at least 1."),
    ("breaker_failure_threshold", 0, "Must be at least 1."),
    ("retry_max_wait_seconds", -1, "Must be at least 0."),
    ("max_retries", 1000, "Must be at most 10."),
    ("max_retries", -1, "Must be at least 0."),
    ("max_connections", 0, "Must be at least 1."),
    ("timeout", float("nan"), "Must be a finite number."),
    ("deadline_seconds", float("inf"), "Must be a finite number."),
]


@pytest.mark.parametrize(("field", "value", "message"), ABSURD)
def test_the_schema_refuses_absurd_values(db, field, value, message) -> None:
    errors = provider_config_errors(
        plugin="openai", settings={"base_url": BASE_URL, field: value}, secrets={"api_key": KEY}
    )
    assert list(errors) == [field]
    assert message in errors[field]


@pytest.mark.parametrize(
    ("plugin", "settings"),
    [
        ("anthropic", {"max_tokens": 10**12}),
        ("ollama", {"base_url": "http://127.0.0.1:11434/" + "a" * 3000}),
    ],
)
def test_plugin_settings_have_maximums_too(db, plugin, settings) -> None:
    secrets = {"api_key": KEY} if plugin == "anthropic" else {}
    errors = provider_config_errors(plugin=plugin, settings=settings, secrets=secrets)
    assert list(errors) == list(settings)


def test_sane_values_at_the_bounds_pass(db) -> None:
    settings = {
        "base_url": BASE_URL,
        "timeout": 0.1,
        "connect_timeout": 0.1,
        "deadline_seconds": 0.1,
        "breaker_cooldown_seconds": 1,
        "breaker_failure_threshold": 1,
        "retry_max_wait_seconds": 0,
        "max_retries": 10,
    }
    assert (
        provider_config_errors(plugin="openai", settings=settings, secrets={"api_key": KEY}) == {}
    )


# --- through every write path: 400 naming the field, nothing changed ---------------


@pytest.fixture
def admin_api(admin_key):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key[1]}")
    return client


@pytest.fixture
def openai_config(db):
    from providers.config.services import provider_config_create

    return provider_config_create(
        name="openai", plugin="openai", settings={"base_url": BASE_URL}, secrets={"api_key": KEY}
    )


def _stored_settings() -> dict:
    from providers.models import ProviderConfig

    return ProviderConfig.objects.get(name="openai").settings


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", 1e-300), ("deadline_seconds", 1e-7), ("breaker_cooldown_seconds", 0)],
)
def test_api_patch_and_plugins_put_refuse_absurd_values(
    admin_api, openai_config, field, value
) -> None:
    patch = admin_api.patch("/api/providers/openai/", {"settings": {field: value}}, format="json")
    put = admin_api.put("/plugins/openai/config", {field: value}, format="json")
    for response in (patch, put):
        assert response.status_code == 400, response.content
        assert response.json()["error"]["field"] == field
    assert _stored_settings() == {"base_url": BASE_URL}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_in_the_json_body_is_refused(admin_api, openai_config, literal) -> None:
    # Python's JSON parser reads these literals; NaN passes every minimum and maximum.
    body = '{"settings": {"timeout": ' + literal + "}}"
    response = admin_api.generic(
        "PATCH", "/api/providers/openai/", body, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    # Refused by the JSON parser, or else by the schema's finite-number rule.
    assert response.json()["error"]["field"] in ("timeout", "settings.timeout")
    assert _stored_settings() == {"base_url": BASE_URL}


def test_creating_a_provider_refuses_a_tiny_deadline(admin_api, db) -> None:
    from providers.models import ProviderConfig

    body = {
        "name": "openai",
        "plugin": "openai",
        "settings": {"base_url": BASE_URL, "deadline_seconds": 1e-7},
        "secrets": {"api_key": KEY},
    }
    response = admin_api.post("/api/providers/", json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["field"] == "deadline_seconds"
    assert not ProviderConfig.objects.exists()


def test_the_admin_form_refuses_a_tiny_timeout(client, admin_user, openai_config) -> None:
    from django.urls import reverse

    from tests.providers.test_admin import form_data

    client.force_login(admin_user)
    page = reverse("admin:providers_providerconfig_change", args=[openai_config.pk])
    response = client.post(page, form_data(client.get(page), setting__timeout="1e-300"))
    assert response.status_code == 200
    assert "setting__timeout" in response.context["adminform"].form.errors
    assert _stored_settings() == {"base_url": BASE_URL}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("timeout: 1.0e-300", "timeout"),
        ("deadline_seconds: 1.0e-7", "deadline_seconds"),
        ("timeout: .nan", "timeout"),
        ("breaker_cooldown_seconds: .inf", "breaker_cooldown_seconds"),
    ],
)
def test_the_yaml_import_refuses_absurd_values(db, tmp_path, line, field) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from providers.models import ProviderConfig

    path = tmp_path / "providers.yaml"
    path.write_text(
        f"ai_providers:\n  openai:\n    api_key: {KEY}\n    base_url: {BASE_URL}\n    {line}\n"
    )
    out = io.StringIO()
    with pytest.raises(CommandError, match="invalid and were not imported"):
        call_command("sync_providers", "--file", str(path), stdout=out, stderr=out)
    assert f"{field}:" in out.getvalue()
    assert not ProviderConfig.objects.filter(name="openai").exists()
