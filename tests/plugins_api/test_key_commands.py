"""``issue_api_key --budget/--budget-period/--owner`` and ``rotate_api_key``.

Each bad value is a ``CommandError`` naming its option, whether the command
or the key service (``key_changes.validate_key``) finds it, and leaves no
key. ``rotate_api_key`` prints the new key alone on stdout; the former key
works for ``--grace-hours``. Both changes are audited with the command as
actor.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from plugins_api.access import client_keys
from plugins_api.access.client_keys import forget_cached_keys, hash_key, verify_key
from plugins_api.access.key_changes import client_key_issue, client_key_revoke
from plugins_api.models import ClientAPIKey, ClientKeyChange


def run(*args: str) -> tuple[str, str]:
    """Run a management command; return (stdout, stderr)."""
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def no_cached_keys() -> None:
    forget_cached_keys()


# --- issue_api_key: budget, period, owner ----------------------------------------------------


def test_issue_with_a_budget_a_period_and_an_owner(db, django_user_model) -> None:
    alice = django_user_model.objects.create_user("alice", password="pw-alice-123")
    out, err = run(
        "issue_api_key", "team", "--budget", "2.50", "--budget-period", "week", "--owner", "alice"
    )

    raw = out.strip()
    assert out.count("\n") == 1 and raw not in err
    row = ClientAPIKey.objects.get(name="team")
    assert (row.budget_usd, row.budget_period, row.owner) == (Decimal("2.5"), "week", alice)
    identity = verify_key(raw)
    assert identity.budget_usd == Decimal("2.5") and identity.budget_period == "week"
    (entry,) = ClientKeyChange.objects.filter(key_name="team")
    assert (entry.action, entry.actor, entry.source) == ("created", "command", "command")
    assert {"field": "owner", "before": None, "after": "alice"} in entry.changes
    assert raw not in str(entry.changes)


def test_issue_without_a_budget_has_none_and_a_monthly_period(db) -> None:
    run("issue_api_key", "plain")
    row = ClientAPIKey.objects.get(name="plain")
    assert (row.budget_usd, row.budget_period, row.owner) == (None, "month", None)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--budget", "0"], "--budget"),
        (["--budget", "-5"], "--budget"),
        (["--budget", "five"], "--budget"),
        (["--budget", "NaN"], "--budget"),
        (["--budget", "Infinity"], "--budget"),
        (["--budget", "1" * 100], "--budget"),
        # Found by the key service, named by the command: too many digits for the column.
        (["--budget", "123456789012345"], "--budget"),
        (["--budget", "0.0000001"], "--budget"),
        (["--budget-period", "year"], "--budget-period"),
        (["--owner", "nobody"], "--owner"),
        (["--owner", "a\x00b"], "--owner"),
        (["--owner", "o" * 10_000], "--owner"),
    ],
)
def test_issue_refuses_a_bad_value_naming_its_option_and_creates_nothing(
    db, args: list[str], option: str
) -> None:
    with pytest.raises(CommandError) as refused:
        run("issue_api_key", "team", *args)
    assert option in str(refused.value)
    assert len(str(refused.value)) < 1000
    assert not ClientAPIKey.objects.exists() and not ClientKeyChange.objects.exists()


def test_a_refusal_by_the_key_service_names_the_name_argument(db) -> None:
    # The command checks no name's length; the key service does, and the command names it.
    with pytest.raises(CommandError, match="^NAME: "):
        run("issue_api_key", "n" * 101)
    assert not ClientAPIKey.objects.exists()


# --- rotate_api_key ---------------------------------------------------------------------------


@pytest.fixture
def issued(db) -> str:
    return client_key_issue(name="svc")[1]


def test_rotate_prints_the_new_key_alone_and_stops_the_former_at_once(issued: str) -> None:
    assert verify_key(issued) is not None
    out, err = run("rotate_api_key", "svc")

    new = out.strip()
    assert out.count("\n") == 1 and new.startswith("echo-") and new != issued
    assert new not in err and issued not in err and issued not in out
    assert "svc" in err
    assert ClientAPIKey.objects.get(name="svc").key_hash == hash_key(new)
    assert verify_key(new) is not None and verify_key(issued) is None
    entry = ClientKeyChange.objects.get(key_name="svc", action="rotated")
    assert (entry.actor, entry.source) == ("command", "command")
    assert entry.changes[0]["grace_seconds"] == 0


def test_rotate_with_grace_hours_keeps_the_former_key_until_then(
    issued: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, err = run("rotate_api_key", "svc", "--grace-hours", "1.5")
    new = out.strip()
    row = ClientAPIKey.objects.get(name="svc")
    assert row.previous_key_expires_at is not None
    assert row.previous_key_expires_at.isoformat() in err
    assert verify_key(issued) is not None and verify_key(new) is not None

    after = row.previous_key_expires_at + timedelta(seconds=1)
    monkeypatch.setattr(client_keys, "clock", lambda: after)
    assert verify_key(issued) is None and verify_key(new) is not None
    entry = ClientKeyChange.objects.get(key_name="svc", action="rotated")
    assert entry.changes[0]["grace_seconds"] == 5400


@pytest.mark.parametrize("hours", ["-1", "721", "soon", "nan", "inf", "1" * 100])
def test_rotate_refuses_a_bad_grace_naming_the_option(issued: str, hours: str) -> None:
    before = ClientAPIKey.objects.get(name="svc").key_hash
    with pytest.raises(CommandError, match="--grace-hours"):
        run("rotate_api_key", "svc", "--grace-hours", hours)
    assert ClientAPIKey.objects.get(name="svc").key_hash == before
    assert not ClientKeyChange.objects.filter(action="rotated").exists()


def test_rotate_refuses_an_unknown_or_revoked_key(issued: str) -> None:
    with pytest.raises(CommandError, match="No key named 'ghost'"):
        run("rotate_api_key", "ghost")
    client_key_revoke(name="svc")
    with pytest.raises(CommandError, match="revoked"):
        run("rotate_api_key", "svc")
    assert not ClientKeyChange.objects.filter(action="rotated").exists()
