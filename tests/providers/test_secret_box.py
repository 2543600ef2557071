"""Secrets are encrypted at rest; a wrong key is loud and sends nothing upstream."""

from __future__ import annotations

import dataclasses
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from providers.config.services import provider_config_create
from providers.models import ProviderConfig
from providers.runtime import process as runtime
from providers.secrets.box import SecretDecryptionError, new_key
from providers.testing.fake_openai import FakeOpenAI

SECRET = "sk-at-rest-0123456789abcdef"


def stored_row(name: str) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT settings, secrets_encrypted FROM providers_providerconfig WHERE name = %s",
            [name],
        )
        return cursor.fetchone()


@pytest.mark.django_db
def test_secrets_are_encrypted_in_the_database() -> None:
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": "http://127.0.0.1:9/v1"},
        secrets={"api_key": SECRET},
    )
    settings_json, ciphertext = stored_row("openai")
    assert SECRET not in str(settings_json) and SECRET not in ciphertext
    assert ciphertext.startswith("gAAAA")  # a Fernet token
    assert ProviderConfig.objects.get(name="openai").secrets == {"api_key": SECRET}


@pytest.mark.django_db(transaction=True)
def test_a_wrong_key_keeps_the_provider_out_of_service_and_sends_nothing(
    settings, client, chat_key, admin_key
) -> None:
    with FakeOpenAI() as fake:
        provider_config_create(
            name="openai",
            plugin="openai",
            settings={"base_url": fake.base_url},
            secrets={"api_key": SECRET},
            is_default=True,
        )
        assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "openai") is None
        assert "openai" in runtime.registry
        ciphertext = stored_row("openai")[1]
        settings.ECHO_ENCRYPTION_KEYS = [new_key()]  # the old key is gone
        with pytest.raises(SecretDecryptionError, match="cannot be decrypted"):
            _ = ProviderConfig.objects.get(name="openai").secrets
        runtime.run_in_serving_loop(runtime.load_all_from_database)
        assert "openai" not in runtime.registry
        assert "cannot be decrypted" in runtime.registry.last_error("openai")
        response = client.post(
            "/chat",
            {"prompt": "hi", "provider": "openai"},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {chat_key[1]}",
        )
        # Configured but not serving: said so, with why (issue 19), never the ciphertext.
        assert response.status_code == 409
        assert "cannot be decrypted" in response.json()["error"]["message"]
        # Every other way in that could build the provider again sends nothing either.
        admin = {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}
        assert client.get("/plugins/health?refresh=1", **admin).status_code == 200
        status = client.get("/plugins/openai/status", **admin)
        assert "cannot be decrypted" in status.json()["last_error"]
        assert (
            client.post(
                "/plugins/openai/reload", {}, content_type="application/json", **admin
            ).status_code
            == 409
        )
        with pytest.raises(CommandError, match="Unavailable: openai"):
            call_command("check_providers", stdout=open("/dev/null", "w"))
        assert "openai" not in runtime.registry
        assert fake.requests == []
        assert SECRET not in ciphertext  # and the ciphertext was never sent as a key:
        sent = json.dumps([dataclasses.asdict(r) for r in fake.requests])
        assert ciphertext not in sent and ciphertext[:40] not in sent


@pytest.mark.django_db
def test_rotation_moves_every_secret_to_the_first_key(settings) -> None:
    key_a, key_b = new_key(), new_key()
    settings.ECHO_ENCRYPTION_KEYS = [key_a]
    secrets = {
        "openai": {"api_key": SECRET},
        "backup": {"api_key": SECRET + "-backup", "organization": "org-0123456789"},
        "anthropic": {"api_key": "sk-ant-0123456789abcdef"},
    }
    for name, values in secrets.items():
        plugin = "anthropic" if name == "anthropic" else "openai"
        provider_config_create(name=name, plugin=plugin, settings={}, secrets=values)
    provider_config_create(name="echo", plugin="echo")  # no secrets: nothing to rotate
    under_a = {name: stored_row(name)[1] for name in secrets}
    revisions = dict(ProviderConfig.objects.values_list("name", "revision"))

    settings.ECHO_ENCRYPTION_KEYS = [key_b, key_a]
    call_command("rotate_encryption_keys", stdout=open("/dev/null", "w"))
    settings.ECHO_ENCRYPTION_KEYS = [key_b]  # A is dropped

    for name, values in secrets.items():
        assert stored_row(name)[1] != under_a[name]
        assert ProviderConfig.objects.get(name=name).secrets == values
        # A new revision: every worker's repair pass takes the new ciphertext as served.
        assert ProviderConfig.objects.get(name=name).revision == revisions[name] + 1
    assert stored_row("echo")[1] == ""
    assert ProviderConfig.objects.get(name="echo").revision == revisions["echo"]


@pytest.mark.django_db
def test_rotation_refuses_when_a_secret_cannot_be_decrypted(settings) -> None:
    provider_config_create(name="openai", plugin="openai", settings={}, secrets={"api_key": SECRET})
    before = stored_row("openai")[1]
    settings.ECHO_ENCRYPTION_KEYS = [new_key()]
    with pytest.raises(CommandError, match="decrypts the secrets of: openai"):
        call_command("rotate_encryption_keys")
    assert stored_row("openai")[1] == before
