"""``POST /plugins/{name}/reload``: a config merges like PUT; no body re-reads the database everywhere."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from providers.config.services import provider_config_create
from providers.models import ProviderConfig
from providers.runtime import broadcast, config_sync
from providers.runtime import process as runtime
from providers.testing.fake_openai import FakeOpenAI

KEY = "sk-fake-reload-0000000000"
NEW_KEY = "sk-new-key-1111111111"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def admin(admin_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


@pytest.fixture
def openai_compatible(db):
    """An openai provider pointed at an OpenAI-compatible server (the fake), live."""
    with FakeOpenAI() as fake:
        provider_config_create(
            name="openai",
            plugin="openai",
            settings={"base_url": fake.base_url},
            secrets={"api_key": KEY},
        )
        assert runtime.run_in_serving_loop(config_sync.sync_provider, "openai") is None
        yield fake


def test_the_readme_reload_example_keeps_base_url(
    api, admin, openai_compatible, django_capture_on_commit_callbacks
):
    # The README's example, as written: a new key and a default model, nothing else.
    body = {
        "provider_name": "openai",
        "config": {"api_key": NEW_KEY, "default_model": "gpt-4-turbo"},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/plugins/openai/reload", body, format="json", **admin)
    assert response.status_code == 200, response.json()
    row = ProviderConfig.objects.get(name="openai")
    assert row.settings == {"base_url": openai_compatible.base_url, "default_model": "gpt-4-turbo"}
    assert row.secrets == {"api_key": NEW_KEY}
    live = runtime.registry.get("openai")
    assert live.config["base_url"] == openai_compatible.base_url
    assert live.config["api_key"] == NEW_KEY


def test_reload_with_replace_drops_the_settings_left_out_but_keeps_secrets(
    api, admin, openai_compatible
):
    body = {"config": {"base_url": openai_compatible.base_url, "timeout": 30}, "replace": True}
    assert api.post("/plugins/openai/reload", body, format="json", **admin).status_code == 200
    body = {"config": {"base_url": openai_compatible.base_url}, "replace": True}
    assert api.post("/plugins/openai/reload", body, format="json", **admin).status_code == 200
    row = ProviderConfig.objects.get(name="openai")
    assert row.settings == {"base_url": openai_compatible.base_url}
    assert row.secrets == {"api_key": KEY}


def test_replace_without_a_config_is_400_naming_it(api, admin, openai_compatible):
    response = api.post("/plugins/openai/reload", {"replace": True}, format="json", **admin)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "replace"


def test_reload_without_a_body_rereads_the_database_in_every_worker(
    api, admin, openai_compatible, monkeypatch
):
    published = []
    monkeypatch.setattr(
        broadcast,
        "publish_provider_changed",
        lambda name, revision=None, *, force=False: published.append((name, force)),
    )
    before = runtime.registry.get("openai")
    # A change no signal saw (a restore, a script): the reload must pick it up.
    ProviderConfig.objects.filter(name="openai").update(
        settings={"base_url": openai_compatible.base_url, "timeout": 42}
    )
    response = api.post("/plugins/openai/reload", format="json", **admin)
    assert response.status_code == 200, response.json()
    assert runtime.registry.get("openai") is not before
    assert runtime.registry.get("openai").config["timeout"] == 42
    assert ("openai", True) in published  # every other worker is told to re-read, forced


def test_reload_without_a_body_of_an_unchanged_row_still_rebuilds(api, admin, openai_compatible):
    before = runtime.registry.get("openai")
    response = api.post(
        "/plugins/openai/reload", {"provider_name": "openai"}, format="json", **admin
    )
    assert response.status_code == 200
    assert runtime.registry.get("openai") is not before
