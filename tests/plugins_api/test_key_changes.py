"""``key_changes``: each change to a client key is validated and audited in its own transaction.

A change that fails leaves neither a change nor an entry; an entry that
cannot be written undoes the change. A rotation's former secret works for
its grace period and not after (by ``client_keys.clock``), a grace of zero
stops it at once in this process, and revoking ends it too. Deleting a key
keeps its history. Neither a key nor its hash is ever part of an entry.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from plugins_api.access import client_keys, key_changes
from plugins_api.access.client_keys import forget_cached_keys, hash_key, verify_key
from plugins_api.access.key_changes import (
    MAX_GRACE,
    client_key_delete,
    client_key_issue,
    client_key_revoke,
    client_key_rotate,
    client_key_set_limits,
    client_key_update,
)
from plugins_api.access.key_limits import KeyLimits
from plugins_api.models import ClientAPIKey, ClientKeyChange
from providers.audit.history import SOURCE_API, Actor

ALICE_VIA_API = Actor(name="alice", source=SOURCE_API, remote_addr="10.0.0.7")


class MovableClock:
    """A wall clock the test moves forward."""

    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> MovableClock:
    moving = MovableClock()
    monkeypatch.setattr(client_keys, "clock", moving)
    return moving


@pytest.fixture
def key(db: Any) -> tuple[ClientAPIKey, str]:
    """The chat key 'svc', issued by the command actor (one 'created' entry)."""
    forget_cached_keys()
    return client_key_issue(name="svc", scope="chat")


def stored(name: str = "svc") -> tuple:
    row = ClientAPIKey.objects.get(name=name)
    return (
        row.scope,
        row.key_hash,
        row.requests_per_minute,
        list(row.allowed_models),
        row.budget_usd,
        row.revoked_at,
        row.previous_key_hash,
        row.previous_key_expires_at,
    )


def entries(name: str = "svc") -> list[ClientKeyChange]:
    return list(ClientKeyChange.objects.filter(key_name=name).order_by("id"))


class EntryRefused(Exception):
    """The audit trail could not be written (the test says so)."""


@pytest.fixture
def failing_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make writing an audit entry fail, after the change itself was saved."""

    def refuse(**kwargs: Any) -> None:
        raise EntryRefused

    monkeypatch.setattr(key_changes, "record_key_change", refuse)


# --- one transaction: the change and its entry, or neither -----------------------------


def test_issue_writes_one_entry_naming_the_actor_and_no_secret(db) -> None:
    row, raw = client_key_issue(
        name="svc", limits=KeyLimits(requests_per_minute=5), actor=ALICE_VIA_API
    )
    (entry,) = entries()
    assert (entry.action, entry.actor, entry.source, entry.remote_addr) == (
        "created",
        "alice",
        "api",
        "10.0.0.7",
    )
    assert {"field": "requests_per_minute", "before": None, "after": 5} in entry.changes
    text = json.dumps(entry.changes)
    assert raw not in text and row.key_hash not in text


@pytest.mark.parametrize(
    "changes",
    [
        {"requests_per_minute": 0},
        {"allowed_models": ["nope"]},
        {"allowed_models": "openai/*"},
        {"default_model": "no slash"},
        {"budget_usd": Decimal("-1")},
        {"budget_period": "year"},
        {"scope": "root"},
        {"name": "renamed"},
        {"key_hash": "0" * 64},
    ],
)
def test_a_refused_update_changes_nothing_and_leaves_no_entry(key, changes) -> None:
    before = stored()
    with pytest.raises(ValidationError) as refused:
        client_key_update(name="svc", changes=changes, actor=ALICE_VIA_API)
    assert set(refused.value.message_dict) == set(changes)
    assert stored() == before
    assert [e.action for e in entries()] == ["created"]


def test_a_refused_issue_leaves_no_key_and_no_entry(key) -> None:
    with pytest.raises(ValidationError) as taken:
        client_key_issue(name="svc", scope="admin")
    assert "name" in taken.value.message_dict
    with pytest.raises(ValidationError) as bad:
        client_key_issue(name="other", limits=KeyLimits(tokens_per_minute=0))
    assert "tokens_per_minute" in bad.value.message_dict
    assert list(ClientAPIKey.objects.values_list("name", flat=True)) == ["svc"]
    assert ClientKeyChange.objects.count() == 1


def test_an_entry_that_cannot_be_written_undoes_each_change(key, failing_audit) -> None:
    _, raw = key
    before = stored()
    with pytest.raises(EntryRefused):
        client_key_update(name="svc", changes={"requests_per_minute": 7})
    with pytest.raises(EntryRefused):
        client_key_set_limits(name="svc", limits=KeyLimits(max_concurrent=2))
    with pytest.raises(EntryRefused):
        client_key_rotate(name="svc", grace=timedelta(hours=1))
    with pytest.raises(EntryRefused):
        client_key_revoke(name="svc")
    with pytest.raises(EntryRefused):
        client_key_delete(name="svc")
    with pytest.raises(EntryRefused):
        client_key_issue(name="new")
    assert stored() == before
    assert not ClientAPIKey.objects.filter(name="new").exists()
    assert verify_key(raw) is not None  # the key's own secret still works


def test_an_update_that_changes_nothing_writes_no_entry(key) -> None:
    client_key_update(name="svc", changes={"scope": "chat"})
    assert [e.action for e in entries()] == ["created"]


def test_an_update_records_each_field_before_and_after(key, django_user_model) -> None:
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    client_key_update(
        name="svc",
        changes={"owner": bob, "budget_usd": Decimal("2.50"), "allowed_models": ["echo/*"]},
        actor=ALICE_VIA_API,
    )
    entry = entries()[-1]
    assert (entry.action, entry.actor, entry.source) == ("updated", "alice", "api")
    assert {"field": "owner", "before": None, "after": "bob"} in entry.changes
    assert {"field": "budget_usd", "before": None, "after": "2.5"} in entry.changes
    assert {"field": "allowed_models", "before": [], "after": ["echo/*"]} in entry.changes


def test_an_unknown_key_is_does_not_exist_for_every_change(db) -> None:
    for change in (
        lambda: client_key_update(name="ghost", changes={"scope": "admin"}),
        lambda: client_key_rotate(name="ghost", grace=timedelta(0)),
        lambda: client_key_revoke(name="ghost"),
        lambda: client_key_delete(name="ghost"),
    ):
        with pytest.raises(ClientAPIKey.DoesNotExist):
            change()
    assert not ClientKeyChange.objects.exists()


# --- rotation and its grace period ---------------------------------------------------------


def test_the_former_secret_works_within_the_grace_and_not_after(key, clock) -> None:
    _, former = key
    assert verify_key(former) is not None  # cached before the rotation
    row, new = client_key_rotate(name="svc", grace=timedelta(hours=1), actor=ALICE_VIA_API)

    assert new != former and row.key_hash == hash_key(new)
    assert row.previous_key_hash == hash_key(former)
    assert verify_key(new).name == "svc"
    within = verify_key(former)
    assert within is not None and within.name == "svc"
    assert within.expires_at == row.previous_key_expires_at

    clock.now = row.previous_key_expires_at - timedelta(seconds=1)
    assert verify_key(former) is not None
    clock.now = row.previous_key_expires_at  # the grace ends: refused, the cache entry still fresh
    assert verify_key(former) is None
    forget_cached_keys()
    assert verify_key(former) is None  # and from the database
    assert verify_key(new) is not None


def test_a_rotation_is_audited_with_its_grace_and_no_secret(key) -> None:
    _, former = key
    row, new = client_key_rotate(name="svc", grace=timedelta(minutes=10), actor=ALICE_VIA_API)
    entry = entries()[-1]
    assert (entry.action, entry.actor, entry.source) == ("rotated", "alice", "api")
    (change,) = entry.changes
    assert change["field"] == "secret" and change["grace_seconds"] == 600
    assert change["former_valid_until"] == row.previous_key_expires_at.isoformat()
    text = json.dumps(entry.changes)
    for secret in (former, new, hash_key(former), hash_key(new)):
        assert secret not in text


def test_a_grace_of_zero_stops_the_former_secret_at_once_in_this_process(key) -> None:
    _, former = key
    assert verify_key(former) is not None  # cached
    row, new = client_key_rotate(name="svc", grace=timedelta(0))
    assert verify_key(former) is None
    assert row.previous_key_hash is None and row.previous_key_expires_at is None
    assert verify_key(new) is not None


def test_a_second_rotation_ends_the_first_grace(key) -> None:
    _, first = key
    _, second = client_key_rotate(name="svc", grace=timedelta(hours=1))
    _, third = client_key_rotate(name="svc", grace=timedelta(hours=1))
    assert verify_key(first) is None
    assert verify_key(second) is not None and verify_key(third) is not None


def test_revoking_stops_the_former_secret_in_its_grace_too(key) -> None:
    _, former = key
    _, new = client_key_rotate(name="svc", grace=timedelta(days=1))
    assert verify_key(former) is not None
    row = client_key_revoke(name="svc", actor=ALICE_VIA_API)
    assert verify_key(former) is None and verify_key(new) is None
    assert row.previous_key_hash is None
    forget_cached_keys()
    assert verify_key(former) is None and verify_key(new) is None
    assert entries()[-1].action == "revoked"


@pytest.mark.parametrize(
    "grace", [timedelta(seconds=-1), MAX_GRACE + timedelta(seconds=1), 3600, None]
)
def test_a_grace_out_of_bounds_is_refused_naming_it(key, grace) -> None:
    before = stored()
    with pytest.raises(ValidationError) as refused:
        client_key_rotate(name="svc", grace=grace)
    assert set(refused.value.message_dict) == {"grace_seconds"}
    assert stored() == before
    assert [e.action for e in entries()] == ["created"]


def test_a_revoked_key_cannot_be_rotated(key) -> None:
    client_key_revoke(name="svc")
    before = stored()
    with pytest.raises(ValidationError) as refused:
        client_key_rotate(name="svc", grace=timedelta(0))
    assert "revoked" in " ".join(refused.value.messages)
    assert stored() == before
    assert [e.action for e in entries()] == ["created", "revoked"]


def test_revoking_twice_writes_one_entry(key) -> None:
    client_key_revoke(name="svc")
    client_key_revoke(name="svc")
    assert [e.action for e in entries()] == ["created", "revoked"]


# --- delete keeps the history ---------------------------------------------------------------


def test_delete_keeps_the_history_and_a_new_key_may_take_the_name(key) -> None:
    _, raw = key
    client_key_update(name="svc", changes={"requests_per_minute": 3})
    client_key_delete(name="svc", actor=ALICE_VIA_API)

    assert not ClientAPIKey.objects.filter(name="svc").exists()
    assert verify_key(raw) is None
    actions = [e.action for e in entries()]
    assert actions == ["created", "updated", "deleted"]
    deleted = entries()[-1]
    assert (deleted.actor, deleted.source) == ("alice", "api")
    assert {"field": "requests_per_minute", "before": 3, "after": None} in deleted.changes

    _, again = client_key_issue(name="svc")
    assert verify_key(again) is not None and verify_key(raw) is None
    assert [e.action for e in entries()] == ["created", "updated", "deleted", "created"]
