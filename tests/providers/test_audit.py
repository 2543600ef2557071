"""Every change to a provider is audited: who, from where, what changed; secrets masked."""

from __future__ import annotations

import json

import pytest
from django.db import transaction

from providers.audit import Actor
from providers.models import ProviderConfigChange
from providers.services import (
    provider_config_create,
    provider_config_delete,
    provider_config_update,
)

ALICE = Actor(name="alice", source="admin", remote_addr="10.0.0.7")
OLD_KEY, NEW_KEY = "sk-old-0123456789abcdef", "sk-new-fedcba9876543210"


def trail(name: str) -> list[ProviderConfigChange]:
    return list(ProviderConfigChange.objects.filter(provider_name=name).order_by("id"))


@pytest.mark.django_db
def test_create_update_disable_delete_are_each_audited_with_a_diff() -> None:
    config = provider_config_create(
        name="openai",
        plugin="openai",
        settings={"timeout": 30},
        secrets={"api_key": OLD_KEY},
        actor=ALICE,
    )
    provider_config_update(
        config=config,
        changes={"settings": {"timeout": 60}, "secrets": {"api_key": NEW_KEY}},
        actor=Actor(name="key:ops", source="api"),
    )
    provider_config_update(config=config, changes={"enabled": False}, actor=ALICE)
    provider_config_delete(config=config, actor=ALICE)

    created, updated, disabled, deleted = trail("openai")
    assert (created.action, created.actor, created.source, created.remote_addr) == (
        "created",
        "alice",
        "admin",
        "10.0.0.7",
    )
    assert {"field": "settings.timeout", "before": None, "after": 30} in created.changes
    assert updated.action == "updated" and updated.actor == "key:ops"
    assert {"field": "settings.timeout", "before": 30, "after": 60} in updated.changes
    secret = next(c for c in updated.changes if c["field"] == "secrets.api_key")
    assert secret == {
        "field": "secrets.api_key",
        "before": "sk-...cdef",
        "after": "sk-...3210",
        "secret": True,
        "changed": True,
    }
    assert disabled.action == "disabled"
    assert {"field": "enabled", "before": True, "after": False} in disabled.changes
    assert deleted.action == "deleted"
    everything = json.dumps([c.changes for c in trail("openai")])
    assert OLD_KEY not in everything and NEW_KEY not in everything


@pytest.mark.django_db
def test_a_save_that_changes_nothing_writes_no_entry() -> None:
    config = provider_config_create(name="echo", plugin="echo", settings={"prefix": "a"})
    provider_config_update(config=config, changes={"settings": {"prefix": "a"}})
    assert [c.action for c in trail("echo")] == ["created"]


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_leaves_no_entry() -> None:
    config = provider_config_create(name="echo", plugin="echo", settings={"prefix": "a"})
    with pytest.raises(RuntimeError), transaction.atomic():
        provider_config_update(config=config, changes={"settings": {"prefix": "b"}}, actor=ALICE)
        raise RuntimeError("rolled back")
    assert [c.action for c in trail("echo")] == ["created"]


@pytest.mark.django_db
def test_taking_the_default_audits_the_provider_that_lost_it() -> None:
    provider_config_create(name="echo", plugin="echo", is_default=True)
    provider_config_create(name="other", plugin="echo", is_default=True, actor=ALICE)
    lost = trail("echo")[-1]
    assert lost.actor == "alice"
    assert lost.changes == [{"field": "is_default", "before": True, "after": False}]


@pytest.mark.django_db
def test_the_yaml_import_is_audited_as_such(tmp_path) -> None:
    from django.core.management import call_command

    path = tmp_path / "x.yaml"
    path.write_text("ai_providers:\n  echo:\n    prefix: 'From YAML: '\n")
    call_command("sync_providers", file=str(path), stdout=open("/dev/null", "w"))
    (entry,) = trail("echo")
    assert (entry.actor, entry.source) == ("sync_providers", "yaml-import")
