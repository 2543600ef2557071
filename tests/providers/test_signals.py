"""A committed save reloads the provider in this process; a rollback does not.

These run with a serving loop, as a worker's request threads do; a process
with none (a management command) starts no provider for a save.
"""

from __future__ import annotations

import pytest
from django.db import transaction

from providers.config.services import (
    provider_config_create,
    provider_config_delete,
    provider_config_update,
)
from providers.models import ProviderConfig
from providers.runtime import config_sync
from providers.runtime import process as runtime
from tests.serving_loop_thread import serving_loop_thread


@pytest.fixture(autouse=True)
def serving_loop():
    with serving_loop_thread() as loop:
        yield loop


@pytest.mark.django_db(transaction=True)
def test_save_reloads_and_delete_removes_after_commit() -> None:
    config = provider_config_create(name="echo", plugin="echo", settings={"prefix": "one: "})
    assert runtime.registry.get("echo").config["prefix"] == "one: "

    provider_config_update(config=config, changes={"settings": {"prefix": "two: "}})
    assert runtime.registry.get("echo").config["prefix"] == "two: "

    provider_config_update(config=config, changes={"enabled": False, "disabled_reason": "Paused."})
    assert "echo" not in runtime.registry
    assert runtime.registry.last_error("echo") == "Paused."

    provider_config_update(config=config, changes={"enabled": True})
    assert "echo" in runtime.registry
    provider_config_delete(config=ProviderConfig.objects.get(name="echo"))
    assert "echo" not in runtime.registry


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_does_not_reload() -> None:
    config = provider_config_create(name="echo", plugin="echo", settings={"prefix": "kept: "})
    with pytest.raises(RuntimeError), transaction.atomic():
        provider_config_update(config=config, changes={"settings": {"prefix": "lost: "}})
        raise RuntimeError("the surrounding request failed")
    assert runtime.registry.get("echo").config["prefix"] == "kept: "
    assert ProviderConfig.objects.get(name="echo").settings["prefix"] == "kept: "


@pytest.mark.django_db(transaction=True)
def test_invalid_update_changes_nothing() -> None:
    from providers.errors import ProviderConfigError

    config = provider_config_create(name="echo", plugin="echo", settings={"prefix": "kept: "})
    with pytest.raises(ProviderConfigError) as caught:
        provider_config_update(
            config=config, changes={"settings": {"delay_ms": "slow"}, "fallbacks": ["echo"]}
        )
    assert set(caught.value.errors) == {"delay_ms", "fallbacks"}
    assert ProviderConfig.objects.get(name="echo").settings == {"prefix": "kept: "}
    assert runtime.registry.get("echo").config["delay_ms"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_process_that_serves_nothing_starts_no_provider_for_a_save() -> None:
    runtime.set_serving_loop(None)  # a management command: no serving loop
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "one: "})
    assert "echo" not in runtime.registry
    assert config_sync.served_revision("echo") is None
