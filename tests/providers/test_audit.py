"""Every change to a provider is audited: who, from where, what changed; secrets masked."""

from __future__ import annotations

import json

import pytest
from django.db import transaction

from providers.audit.history import Actor
from providers.config.services import (
    provider_config_create,
    provider_config_delete,
    provider_config_update,
)
from providers.models import ProviderConfigChange

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
def test_making_another_provider_the_default_audits_both(db) -> None:
    provider_config_create(name="echo", plugin="echo", is_default=True)
    other = provider_config_create(name="other", plugin="echo")
    provider_config_update(config=other, changes={"is_default": True}, actor=ALICE)
    assert trail("echo")[-1].changes == [{"field": "is_default", "before": True, "after": False}]
    assert trail("other")[-1].changes == [{"field": "is_default", "before": False, "after": True}]
    assert trail("echo")[-1].actor == trail("other")[-1].actor == "alice"


@pytest.mark.django_db
def test_the_yaml_import_is_audited_as_such(tmp_path) -> None:
    from django.core.management import call_command

    path = tmp_path / "x.yaml"
    path.write_text("ai_providers:\n  echo:\n    prefix: 'From YAML: '\n")
    call_command("sync_providers", file=str(path), stdout=open("/dev/null", "w"))
    (entry,) = trail("echo")
    assert (entry.actor, entry.source) == ("sync_providers", "yaml-import")


# --- who the actor is ---------------------------------------------------------


def test_actor_for_request_names_the_user_the_key_and_the_address(rf, admin_user) -> None:
    from django.contrib.auth.models import AnonymousUser

    from plugins_api.access.authentication import ClientKeyUser
    from plugins_api.access.client_keys import ClientIdentity
    from providers.audit.history import actor_for_request

    request = rf.get("/", REMOTE_ADDR="203.0.113.9")
    request.user = admin_user
    assert actor_for_request(request, "admin") == Actor("admin", "admin", "203.0.113.9")
    request.user = ClientKeyUser(ClientIdentity(key_id=1, name="deploy-bot", scope="admin"))
    assert actor_for_request(request, "api").name == "key:deploy-bot"
    request.user = AnonymousUser()
    request.META["REMOTE_ADDR"] = "not an address"
    assert actor_for_request(request, "api") == Actor("anonymous", "api", None)


# --- the YAML import ------------------------------------------------------------

IMPORT_SECRET = "sk-yaml-0123456789abcdef"
IMPORT_YAML = """
ai_providers:
  openai:
    api_key: ${CANARY_OPENAI_KEY}
    base_url: http://127.0.0.1:9/v1
    timeout: %d
"""


def _sync(tmp_path, timeout: int) -> None:
    from django.core.management import call_command

    path = tmp_path / "providers.yaml"
    path.write_text(IMPORT_YAML % timeout)
    call_command("sync_providers", file=str(path), stdout=open("/dev/null", "w"))


@pytest.mark.django_db
def test_each_import_that_changes_something_writes_one_masked_entry(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CANARY_OPENAI_KEY", IMPORT_SECRET)
    _sync(tmp_path, 30)
    _sync(tmp_path, 30)  # nothing changed: no entry
    _sync(tmp_path, 60)

    created, updated = trail("openai")
    assert (created.action, created.actor, created.source) == (
        "created",
        "sync_providers",
        "yaml-import",
    )
    assert {
        "field": "secrets.api_key",
        "before": None,
        "after": "sk-...cdef",
        "secret": True,
        "changed": True,
    } in created.changes
    assert updated.changes == [{"field": "settings.timeout", "before": 30, "after": 60}]
    assert IMPORT_SECRET not in json.dumps([c.changes for c in trail("openai")])


@pytest.mark.django_db
def test_an_invalid_import_entry_writes_no_entry(tmp_path, monkeypatch) -> None:
    from django.core.management.base import CommandError

    monkeypatch.setenv("CANARY_OPENAI_KEY", IMPORT_SECRET)
    _sync(tmp_path, 30)
    with pytest.raises(CommandError):
        _sync(tmp_path, -1)  # refused by the schema: the whole entry changes nothing
    assert [c.action for c in trail("openai")] == ["created"]


# --- secrets that no key decrypts -------------------------------------------------


@pytest.fixture
def unreadable(db, settings):
    """An openai provider whose encryption key has left ECHO_ENCRYPTION_KEYS."""
    from providers.secrets.box import new_key

    config = provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": "http://127.0.0.1:9/v1"},
        secrets={"api_key": OLD_KEY},
    )
    settings.ECHO_ENCRYPTION_KEYS = [new_key()]
    return config


def test_a_change_that_leaves_unreadable_secrets_enabled_is_refused(unreadable) -> None:
    from providers.errors import ProviderConfigError

    with pytest.raises(ProviderConfigError) as refused:
        provider_config_update(config=unreadable, changes={"settings": {"timeout": 9}})
    assert list(refused.value.errors) == ["secrets"]
    assert "cannot be decrypted" in refused.value.errors["secrets"][0]
    assert [c.action for c in trail("openai")] == ["created"]


def test_unreadable_secrets_are_replaced_or_kept_never_merged(unreadable) -> None:
    from providers.models import ProviderConfig

    ciphertext = unreadable.secrets_encrypted
    provider_config_update(config=unreadable, changes={"enabled": False}, actor=ALICE)
    assert ProviderConfig.objects.get(name="openai").secrets_encrypted == ciphertext

    provider_config_update(
        config=unreadable, changes={"enabled": True, "secrets": {"api_key": NEW_KEY}}, actor=ALICE
    )
    assert ProviderConfig.objects.get(name="openai").secrets == {"api_key": NEW_KEY}
    disabled, enabled = trail("openai")[1:]
    assert disabled.changes == [{"field": "enabled", "before": True, "after": False}]
    assert {
        "field": "secrets.api_key",
        "before": "(cannot be decrypted)",
        "after": "sk-...3210",
        "secret": True,
        "changed": True,
    } in enabled.changes


def test_the_import_reports_unreadable_secrets_and_replaces_them_when_told(
    unreadable, tmp_path, monkeypatch
) -> None:
    from providers.config.files import load_provider_entries
    from providers.config.yaml_import import Outcome, sync_provider_configs
    from providers.models import ProviderConfig

    monkeypatch.setenv("CANARY_OPENAI_KEY", IMPORT_SECRET)
    path = tmp_path / "providers.yaml"
    path.write_text(IMPORT_YAML % 30)
    entries = load_provider_entries(path)

    (kept,) = sync_provider_configs(entries=entries).results
    assert kept.outcome == Outcome.CONFLICT
    assert "cannot be decrypted" in kept.conflict_cause
    assert kept.differences[0].startswith("secrets: the stored ones cannot be decrypted")

    (replaced,) = sync_provider_configs(entries=entries, overwrite=True).results
    assert replaced.outcome == Outcome.OVERWRITTEN
    assert ProviderConfig.objects.get(name="openai").secrets == {"api_key": IMPORT_SECRET}
