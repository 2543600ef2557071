"""A call naming a configured provider that does not serve is told why (409), not that it does not exist (404).

Before, ``/chat`` to a disabled provider answered 404 "No provider named
'openai'", and ``model: "anthropic/..."`` with anthropic disabled went to the
default provider, which answered "Unknown model".
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from providers.config.services import provider_config_create, provider_config_delete
from providers.models import ProviderConfig
from providers.runtime import config_sync
from providers.runtime import process as runtime
from providers.secrets.box import new_key
from tests.plugins_api.test_plugin_views import SECRET, SecuretestProvider


@pytest.fixture
def configured(transactional_db, serving_loop) -> None:
    runtime.registry.register(SecuretestProvider, "securetest")
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "E: "}, is_default=True)
    provider_config_create(
        name="resting",
        plugin="echo",
        enabled=False,
        disabled_reason="Paused for maintenance until 3 a.m.",
    )
    runtime.run_in_serving_loop(config_sync.repair_all, timeout=20)


@pytest.fixture
def api(configured, chat_key: tuple[Any, str]) -> Client:
    return Client(headers={"Authorization": f"Bearer {chat_key[1]}"})


def post(api: Client, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = api.post(path, json.dumps(body), content_type="application/json")
    return response.status_code, json.loads(response.content)


def test_every_endpoint_says_the_provider_is_disabled_and_why(api) -> None:
    status, body = post(api, "/chat", {"prompt": "hi", "provider": "resting"})
    assert status == 409
    assert body["error"]["type"] == "provider_disabled"
    assert "Paused for maintenance until 3 a.m." in body["error"]["message"]
    assert body["error"]["field"] == "provider"

    messages = [{"role": "user", "content": "hi"}]
    status, body = post(api, "/v1/chat/completions", {"model": "resting/x", "messages": messages})
    assert status == 409 and "Paused for maintenance" in body["error"]["message"]
    status, body = post(
        api, "/v1/messages", {"model": "resting/x", "max_tokens": 5, "messages": messages}
    )
    assert status == 409 and body["type"] == "error"
    assert "Paused for maintenance" in body["error"]["message"]


def test_a_provider_that_cannot_start_says_why_without_its_secret(api, settings) -> None:
    provider_config_create(
        name="locked", plugin="securetest", settings={"timeout": 10}, secrets={"api_key": SECRET}
    )
    settings.ECHO_ENCRYPTION_KEYS = [new_key()]  # the key its secret was sealed with is gone
    runtime.run_in_serving_loop(runtime.load_all_from_database, timeout=20)
    status, body = post(api, "/chat", {"prompt": "hi", "provider": "locked"})
    assert status == 409
    assert "decrypt" in body["error"]["message"].lower()
    assert SECRET not in json.dumps(body)


def test_once_deleted_it_is_unknown_again(api) -> None:
    provider_config_delete(config=ProviderConfig.objects.get(name="resting"))
    runtime.run_in_serving_loop(config_sync.repair_all, timeout=20)
    status, body = post(api, "/chat", {"prompt": "hi", "provider": "resting"})
    assert status == 404 and body["error"]["type"] == "provider_not_found"
    assert "resting" not in runtime.manager.out_of_service


def test_enabling_it_serves_again(api) -> None:
    from providers.config.services import provider_config_update

    provider_config_update(
        config=ProviderConfig.objects.get(name="resting"), changes={"enabled": True}
    )
    runtime.run_in_serving_loop(config_sync.repair_all, timeout=20)
    status, body = post(api, "/chat", {"prompt": "hi", "provider": "resting"})
    assert status == 200, body
    assert "resting" not in runtime.manager.out_of_service


def test_a_bare_model_of_a_resting_provider_names_it_and_why(api) -> None:
    import dataclasses

    from providers.base import PluginMetadata
    from providers.plugins.echo_provider import EchoProvider

    class Snoozy(EchoProvider):
        metadata = dataclasses.replace(EchoProvider.metadata, models=["snooze-1"])

    assert isinstance(Snoozy.metadata, PluginMetadata)
    runtime.registry.register(Snoozy, "snoozy")
    provider_config_create(
        name="sleeper", plugin="snoozy", enabled=False, disabled_reason="Quota spent."
    )
    runtime.run_in_serving_loop(config_sync.repair_all, timeout=20)
    messages = [{"role": "user", "content": "hi"}]
    status, body = post(api, "/v1/chat/completions", {"model": "snooze-1", "messages": messages})
    assert status == 409, body
    assert "'sleeper'" in body["error"]["message"] and "Quota spent." in body["error"]["message"]


def test_a_group_whose_every_deployment_rests_says_why(api) -> None:
    from providers.config.services import model_group_create

    model_group_create(name="sleepy", deployments=[{"provider": "resting", "model": "r-1"}])
    runtime.run_in_serving_loop(config_sync.repair_all, timeout=20)
    messages = [{"role": "user", "content": "hi"}]
    status, body = post(api, "/v1/chat/completions", {"model": "sleepy", "messages": messages})
    assert status == 409, body
    assert "sleepy" in body["error"]["message"]
    assert "Paused for maintenance" in body["error"]["message"]
