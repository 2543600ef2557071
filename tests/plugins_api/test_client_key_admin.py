"""The client key admin: the list's columns, a secret shown once, edits, revoke, rotate, delete, owners.

Forms are posted as a browser posts them (the admin's own field names, the
expiry split into date and time). Every change must reach the database
through ``key_changes`` (so it is audited with the admin user, source
"admin"), and no page but the one answering the POST that made a secret
may hold it; no page at all may hold a key's hash.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from plugins_api.access import client_keys
from plugins_api.access.client_keys import forget_cached_keys, hash_key, verify_key
from plugins_api.access.key_changes import client_key_issue, client_key_revoke, client_key_rotate
from plugins_api.access.key_limits import KeyLimits
from plugins_api.models import ClientAPIKey, ClientKeyChange
from providers.models import UsageRecord

LIST_URL = "/admin/plugins_api/clientapikey/"
ADD_URL = f"{LIST_URL}add/"
SECRET_INPUT = re.compile(r'id="client-key-secret" value="([^"]+)"')


def change_url(row: ClientAPIKey) -> str:
    return reverse("admin:plugins_api_clientapikey_change", args=[row.pk])


def key_form(**changes: Any) -> dict[str, Any]:
    """The add form as a browser posts it, with CHANGES."""
    data = {
        "name": "team-a",
        "scope": "chat",
        "owner": "",
        "requests_per_minute": "60",
        "tokens_per_minute": "10000",
        "max_concurrent_requests": "4",
        "allowed_models": "openai/*\r\necho/echo-1",
        "default_model": "openai/gpt-4o-mini",
        "expires_at_0": "",
        "expires_at_1": "",
        "budget_usd": "5",
        "budget_period": "month",
    }
    data.update(changes)
    return data


def edit_form(row: ClientAPIKey, **changes: Any) -> dict[str, Any]:
    """The change form of ROW as a browser posts it (the stored values), with CHANGES."""
    row.refresh_from_db()

    def text(value: Any) -> str:
        return "" if value is None else str(value)

    expires = timezone.localtime(row.expires_at) if row.expires_at else None
    data = {
        "scope": row.scope,
        "owner": text(row.owner_id),
        "requests_per_minute": text(row.requests_per_minute),
        "tokens_per_minute": text(row.tokens_per_minute),
        "max_concurrent_requests": text(row.max_concurrent_requests),
        "allowed_models": "\n".join(row.allowed_models),
        "default_model": row.default_model,
        "expires_at_0": f"{expires:%Y-%m-%d}" if expires else "",
        "expires_at_1": f"{expires:%H:%M:%S}" if expires else "",
        "budget_usd": text(row.budget_usd),
        "budget_period": row.budget_period,
    }
    data.update(changes)
    return data


def secret_of(response: Any) -> str:
    found = SECRET_INPUT.search(response.content.decode())
    assert found, "the page shows no secret"
    return found.group(1)


def usage(client: str, cost: str | None, *, at: datetime | None = None) -> UsageRecord:
    row = UsageRecord.objects.create(
        client=client,
        endpoint="/v1/chat/completions",
        provider="openai",
        model="gpt-4o-mini",
        latency_ms=12,
        outcome="ok",
        prompt_tokens=3,
        completion_tokens=4,
        cost_usd=None if cost is None else Decimal(cost),
    )
    if at is not None:
        UsageRecord.objects.filter(pk=row.pk).update(created_at=at)
    return row


def assert_no_secret(page: str, *secrets: str) -> None:
    """No secret, nor any 8 characters of one past its shown prefix, nor a hash is in PAGE."""
    for secret in secrets:
        assert secret not in page
        body = secret[len("echo-") + 6 :]
        for start in range(0, len(body) - 8, 4):
            assert body[start : start + 8] not in page
    for row in ClientAPIKey.objects.all():
        assert row.key_hash not in page
        if row.previous_key_hash:
            assert row.previous_key_hash not in page


@pytest.fixture
def staff(client: Any, admin_user: Any) -> Any:
    client.force_login(admin_user)
    return client


@pytest.fixture
def moving_clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``client_keys.clock`` (what keys expire by), moved forward by the test."""

    class Clock:
        now = timezone.now()

        def __call__(self) -> datetime:
            return self.now

    clock = Clock()
    monkeypatch.setattr(client_keys, "clock", clock)
    return clock


# --- the list ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_list_shows_owner_use_limits_spend_and_status(staff: Any, admin_user: Any) -> None:
    forget_cached_keys()
    team, team_key = client_key_issue(
        name="team-a",
        limits=KeyLimits(requests_per_minute=60, tokens_per_minute=10_000, max_concurrent=4),
        budget_usd=Decimal("5"),
        owner=admin_user,
    )
    used_at = timezone.now().replace(microsecond=0) - timedelta(minutes=3)
    ClientAPIKey.objects.filter(pk=team.pk).update(last_used_at=used_at)
    usage("key:team-a", "0.0100")
    usage("key:team-a", "0.0023")
    usage("key:team-a", "0.5", at=timezone.now() - timedelta(days=40))  # an earlier month
    usage("key:team-b", "1.0")  # another key's
    _, revoked_key = client_key_issue(name="gone")
    client_key_revoke(name="gone")
    _, expired_key = client_key_issue(name="old", expires_at=timezone.now() - timedelta(hours=1))
    _, rotating_key = client_key_issue(name="moving", budget_period="day")
    moved, moved_key = client_key_rotate(name="moving", grace=timedelta(hours=1))

    response = staff.get(LIST_URL)
    assert response.status_code == 200
    page = response.content.decode()
    for column in (
        "key_scope",
        "owner",
        "created",
        "last_used",
        "expires",
        "limits",
        "spend",
        "status",
    ):
        assert f"column-{column}" in page, column
    used = timezone.localtime(used_at)
    assert f'{used:%Y-%m-%d} <br><span class="time">{used:%H:%M:%S} UTC</span>' in page
    assert "60 req/min · 10,000 tok/min · 4 at once" in page
    assert "$0.0123 of $5.00 / month" in page
    assert "$0.00 this day (no budget)" in page
    assert "revoked " in page and "expired " in page
    until = timezone.localtime(moved.previous_key_expires_at)
    assert f"active; rotated, the former secret works until {until:%Y-%m-%d %H:%M:%S} UTC" in page
    assert ">never<" in page  # the keys never used
    assert ">admin<" in page  # the owner
    assert_no_secret(page, team_key, revoked_key, expired_key, rotating_key, moved_key)


@pytest.mark.django_db
def test_spend_of_a_whole_page_costs_the_same_queries_for_two_keys_or_eight(staff: Any) -> None:
    def list_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert staff.get(LIST_URL).status_code == 200
        return len(queries)

    for index in range(2):
        client_key_issue(name=f"k{index}", budget_usd=Decimal("1"))
        usage(f"key:k{index}", "0.1")
    two = list_queries()
    for index in range(2, 8):
        client_key_issue(name=f"k{index}", budget_usd=Decimal("1"))
        usage(f"key:k{index}", "0.1")
    assert list_queries() == two


@pytest.mark.django_db
def test_a_spent_budget_is_marked(staff: Any) -> None:
    client_key_issue(name="thrifty", budget_usd=Decimal("0.01"), budget_period="week")
    usage("key:thrifty", "0.02")
    page = staff.get(LIST_URL).content.decode()
    assert "$0.02 of $0.01 / week (budget spent)" in page


@pytest.mark.django_db
def test_search_and_filters_find_keys(staff: Any) -> None:
    live, _ = client_key_issue(name="live-one")
    client_key_issue(name="dead-one")
    client_key_revoke(name="dead-one")
    client_key_issue(name="boss", scope="admin")
    found = staff.get(LIST_URL, {"q": live.prefix}).content.decode()
    assert "live-one" in found and "dead-one" not in found
    revoked = staff.get(LIST_URL, {"status": "revoked"}).content.decode()
    assert "dead-one" in revoked and "live-one" not in revoked
    active = staff.get(LIST_URL, {"status": "active"}).content.decode()
    assert "live-one" in active and "dead-one" not in active
    admins = staff.get(LIST_URL, {"scope__exact": "admin"}).content.decode()
    assert "boss" in admins and "live-one" not in admins


# --- create ---------------------------------------------------------------------


@pytest.mark.django_db
def test_create_shows_the_secret_once_and_keeps_only_its_hash(staff: Any, admin_user: Any) -> None:
    form = staff.get(ADD_URL).content.decode()
    for field in ("name", "scope", "owner", "requests_per_minute", "allowed_models", "budget_usd"):
        assert f'name="{field}"' in form
    assert 'name="expires_at_0"' in form

    response = staff.post(ADD_URL, key_form(owner=str(admin_user.pk)))
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    assert "it will not be shown again" in page and 'id="copy-key"' in page
    assert "navigator.clipboard.writeText" in page
    secret = secret_of(response)
    assert not response.cookies.get("messages")  # nothing kept the secret for a later page

    row = ClientAPIKey.objects.get(name="team-a")
    assert row.key_hash == hash_key(secret) and secret.startswith(row.prefix)
    stored = " ".join(str(getattr(row, f.attname)) for f in ClientAPIKey._meta.concrete_fields)
    assert secret not in stored
    assert (row.requests_per_minute, row.tokens_per_minute, row.max_concurrent_requests) == (
        60,
        10_000,
        4,
    )
    assert row.allowed_models == ["openai/*", "echo/echo-1"]
    assert (row.default_model, row.budget_usd, row.owner) == (
        "openai/gpt-4o-mini",
        Decimal("5"),
        admin_user,
    )
    identity = verify_key(secret)
    assert identity is not None and identity.name == "team-a"

    entry = ClientKeyChange.objects.get(key_name="team-a")
    assert (entry.action, entry.actor, entry.source, entry.remote_addr) == (
        "created",
        "admin",
        "admin",
        "127.0.0.1",
    )
    assert secret not in str(entry.changes)

    # Every later page: the list, the key's page, its history, the changes list, the session.
    for url in (
        LIST_URL,
        change_url(row),
        reverse("admin:plugins_api_clientapikey_history", args=[row.pk]),
        "/admin/plugins_api/clientkeychange/",
        reverse("admin:plugins_api_clientkeychange_change", args=[entry.pk]),
    ):
        later = staff.get(url)
        assert later.status_code == 200, url
        assert_no_secret(later.content.decode(), secret)
    assert secret not in str(dict(staff.session.items()))

    # Posting again (a reload) issues nothing and shows no secret: the name is taken.
    again = staff.post(ADD_URL, key_form(owner=str(admin_user.pk)))
    assert again.status_code == 200
    assert "already exists" in again.content.decode()
    assert not SECRET_INPUT.search(again.content.decode())
    assert ClientAPIKey.objects.count() == 1 and ClientKeyChange.objects.count() == 1


@pytest.mark.django_db
def test_a_key_with_nothing_but_a_name_is_open_and_unlimited(staff: Any) -> None:
    response = staff.post(
        ADD_URL,
        key_form(
            name="plain",
            requests_per_minute="",
            tokens_per_minute="",
            max_concurrent_requests="",
            allowed_models="",
            default_model="",
            budget_usd="",
        ),
    )
    secret = secret_of(response)
    row = ClientAPIKey.objects.get(name="plain")
    assert row.allowed_models == [] and row.budget_usd is None and row.requests_per_minute is None
    assert verify_key(secret) is not None


HOSTILE = [
    ({"requests_per_minute": "0"}, "requests_per_minute"),
    ({"tokens_per_minute": "-5"}, "tokens_per_minute"),
    ({"max_concurrent_requests": "9" * 40}, "max_concurrent_requests"),
    ({"requests_per_minute": "many"}, "requests_per_minute"),
    ({"allowed_models": "nope"}, "allowed_models"),
    ({"allowed_models": "openai/*, bad pattern/x"}, "allowed_models"),
    ({"allowed_models": "a/b\n" * 101}, "allowed_models"),
    ({"allowed_models": "x" * 100_000}, "allowed_models"),
    ({"allowed_models": "openai/\x00"}, "allowed_models"),
    ({"default_model": "nope"}, "default_model"),
    ({"default_model": "openai/gpt\x004"}, "default_model"),
    ({"name": "x" * 100_000}, "name"),
    ({"name": "bad\x00name"}, "name"),
    ({"name": ""}, "name"),
    ({"scope": "root"}, "scope"),
    ({"budget_usd": "-1"}, "budget_usd"),
    ({"budget_usd": "0"}, "budget_usd"),
    ({"budget_usd": "1e400"}, "budget_usd"),
    ({"budget_period": "century"}, "budget_period"),
    ({"expires_at_0": "yesterday", "expires_at_1": "noon"}, "expires_at"),
    ({"owner": "999999"}, "owner"),
    ({"owner": "\x00"}, "owner"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("changes", "field"), HOSTILE, ids=[f for _, f in HOSTILE])
def test_bad_input_to_create_is_named_by_its_field_and_changes_nothing(
    staff: Any, changes: dict[str, str], field: str
) -> None:
    response = staff.post(ADD_URL, key_form(**changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert not SECRET_INPUT.search(response.content.decode())
    assert ClientAPIKey.objects.count() == 0
    assert ClientKeyChange.objects.count() == 0


# --- change -----------------------------------------------------------------------


@pytest.mark.django_db
def test_editing_goes_through_key_changes_and_the_name_stays(staff: Any, admin_user: Any) -> None:
    row, secret = client_key_issue(name="team-a")
    page = staff.get(change_url(row)).content.decode()
    assert 'name="name"' not in page  # read-only
    assert row.prefix in page and 'id="rotate-key"' in page and 'id="revoke-key"' in page
    expires = timezone.now().replace(microsecond=0) + timedelta(days=30)
    response = staff.post(
        change_url(row),
        edit_form(
            row,
            name="renamed",
            requests_per_minute="5",
            allowed_models="openai/gpt-4o, anthropic/*",
            expires_at_0=f"{expires:%Y-%m-%d}",
            expires_at_1=f"{expires:%H:%M:%S}",
            budget_usd="2.50",
            budget_period="day",
            owner=str(admin_user.pk),
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row.refresh_from_db()
    assert row.name == "team-a"
    assert (row.requests_per_minute, row.allowed_models) == (5, ["openai/gpt-4o", "anthropic/*"])
    assert (row.expires_at, row.budget_usd, row.budget_period) == (expires, Decimal("2.5"), "day")
    assert row.owner == admin_user
    entry = ClientKeyChange.objects.get(key_name="team-a", action="updated")
    assert (entry.actor, entry.source) == ("admin", "admin")
    changed = {c["field"] for c in entry.changes}
    assert changed == {
        "requests_per_minute",
        "allowed_models",
        "expires_at",
        "budget_usd",
        "budget_period",
        "owner",
    }
    assert verify_key(secret) is not None
    assert verify_key(secret).limits.requests_per_minute == 5  # the cache was dropped


@pytest.mark.django_db
@pytest.mark.parametrize(("changes", "field"), [h for h in HOSTILE if h[1] not in {"name"}])
def test_bad_input_to_an_edit_is_named_and_changes_nothing(
    staff: Any, changes: dict[str, str], field: str
) -> None:
    row, _ = client_key_issue(name="team-a", limits=KeyLimits(requests_per_minute=7))
    before = ClientAPIKey.objects.filter(pk=row.pk).values().get()
    response = staff.post(change_url(row), edit_form(row, **changes))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert ClientAPIKey.objects.filter(pk=row.pk).values().get() == before
    assert not ClientKeyChange.objects.filter(action="updated").exists()


# --- revoke, rotate, delete -----------------------------------------------------


@pytest.mark.django_db
def test_revoking_from_the_key_page_asks_then_revokes_and_is_audited(staff: Any) -> None:
    row, secret = client_key_issue(name="team-a")
    assert verify_key(secret) is not None
    revoke_url = reverse("admin:plugins_api_clientapikey_revoke", args=[row.pk])
    confirm = staff.get(revoke_url)
    assert confirm.status_code == 200 and "Yes, revoke" in confirm.content.decode()
    row.refresh_from_db()
    assert row.revoked_at is None  # asking changed nothing
    done = staff.post(revoke_url)
    assert done.status_code == 302 and done["Location"] == change_url(row)
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert verify_key(secret) is None
    entry = ClientKeyChange.objects.get(action="revoked")
    assert (entry.key_name, entry.actor, entry.source) == ("team-a", "admin", "admin")
    page = staff.get(change_url(row)).content.decode()
    assert 'id="revoke-key"' not in page and 'id="rotate-key"' not in page
    assert "revoked " in page


@pytest.mark.django_db
def test_the_revoke_action_confirms_then_revokes_each_selected_key(staff: Any) -> None:
    first, first_key = client_key_issue(name="first")
    second, second_key = client_key_issue(name="second")
    keep, keep_key = client_key_issue(name="keep")
    selected = {"action": "revoke_keys", "_selected_action": [first.pk, second.pk]}
    confirm = staff.post(LIST_URL, selected)
    assert confirm.status_code == 200
    assert "first" in confirm.content.decode() and "Yes, revoke" in confirm.content.decode()
    assert not ClientAPIKey.objects.filter(revoked_at__isnull=False).exists()
    done = staff.post(LIST_URL, {**selected, "post": "yes"})
    assert done.status_code == 302
    assert verify_key(first_key) is None and verify_key(second_key) is None
    assert verify_key(keep_key) is not None
    entries = ClientKeyChange.objects.filter(action="revoked")
    assert sorted(e.key_name for e in entries) == ["first", "second"]
    assert {(e.actor, e.source) for e in entries} == {("admin", "admin")}


@pytest.mark.django_db
def test_rotating_shows_the_new_secret_once_and_the_old_works_only_for_the_grace(
    staff: Any, moving_clock: Any
) -> None:
    row, old_key = client_key_issue(name="team-a")
    rotate_url = reverse("admin:plugins_api_clientapikey_rotate", args=[row.pk])
    form = staff.get(rotate_url).content.decode()
    assert "1 hour" in form and "7 days" in form and 'name="hours"' in form
    response = staff.post(rotate_url, {"grace": "3600"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    new_key = secret_of(response)
    assert new_key != old_key
    row.refresh_from_db()
    assert row.key_hash == hash_key(new_key) and row.previous_key_hash == hash_key(old_key)
    assert "former secret keeps working until" in response.content.decode()

    assert verify_key(new_key) is not None
    assert verify_key(old_key) is not None  # within the grace period
    moving_clock.now += timedelta(minutes=59)
    assert verify_key(old_key) is not None
    moving_clock.now += timedelta(minutes=2)
    assert verify_key(old_key) is None  # the grace is over
    forget_cached_keys()
    assert verify_key(old_key) is None  # from the database too
    assert verify_key(new_key) is not None

    entry = ClientKeyChange.objects.get(action="rotated")
    assert (entry.key_name, entry.actor, entry.source) == ("team-a", "admin", "admin")
    assert entry.changes[0]["grace_seconds"] == 3600
    history = staff.get(reverse("admin:plugins_api_clientapikey_history", args=[row.pk]))
    text = history.content.decode()
    assert "the former one works until" in text
    assert_no_secret(text, old_key, new_key)
    assert_no_secret(staff.get(change_url(row)).content.decode(), old_key, new_key)
    assert_no_secret(staff.get(LIST_URL).content.decode(), old_key, new_key)


@pytest.mark.django_db
def test_rotating_with_no_grace_or_some_hours(staff: Any) -> None:
    row, old_key = client_key_issue(name="team-a")
    rotate_url = reverse("admin:plugins_api_clientapikey_rotate", args=[row.pk])
    now_key = secret_of(staff.post(rotate_url, {"grace": "0"}))
    assert verify_key(old_key) is None and verify_key(now_key) is not None
    before = timezone.now()
    secret_of(staff.post(rotate_url, {"grace": "hours", "hours": "36"}))
    row.refresh_from_db()
    grace = row.previous_key_expires_at - before
    assert timedelta(hours=36) <= grace < timedelta(hours=36, seconds=30)
    assert verify_key(now_key) is not None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"grace": "hours", "hours": ""}, "hours"),
        ({"grace": "hours", "hours": "721"}, "hours"),
        ({"grace": "hours", "hours": "-1"}, "hours"),
        ({"grace": "hours", "hours": "1\x00"}, "hours"),
        ({"grace": "99999999"}, "grace"),
        ({"grace": "x" * 10_000}, "grace"),
        ({}, "grace"),
    ],
)
def test_a_bad_grace_is_named_and_rotates_nothing(
    staff: Any, data: dict[str, str], field: str
) -> None:
    row, old_key = client_key_issue(name="team-a")
    rotate_url = reverse("admin:plugins_api_clientapikey_rotate", args=[row.pk])
    response = staff.post(rotate_url, data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not SECRET_INPUT.search(response.content.decode())
    row.refresh_from_db()
    assert row.key_hash == hash_key(old_key) and row.rotated_at is None
    assert not ClientKeyChange.objects.filter(action="rotated").exists()


@pytest.mark.django_db
def test_a_revoked_key_cannot_be_rotated(staff: Any) -> None:
    row, _ = client_key_issue(name="team-a")
    client_key_revoke(name="team-a")
    rotate_url = reverse("admin:plugins_api_clientapikey_rotate", args=[row.pk])
    response = staff.post(rotate_url, {"grace": "0"})
    assert response.status_code == 200
    assert "revoked" in response.content.decode()
    assert not SECRET_INPUT.search(response.content.decode())
    assert not ClientKeyChange.objects.filter(action="rotated").exists()


@pytest.mark.django_db
def test_deleting_one_key_or_many_is_audited(staff: Any) -> None:
    one, one_key = client_key_issue(name="one")
    two, _ = client_key_issue(name="two")
    three, _ = client_key_issue(name="three")
    delete_url = reverse("admin:plugins_api_clientapikey_delete", args=[one.pk])
    assert staff.get(delete_url).status_code == 200
    assert staff.post(delete_url, {"post": "yes"}).status_code == 302
    assert verify_key(one_key) is None
    bulk = {"action": "delete_selected", "_selected_action": [two.pk, three.pk], "post": "yes"}
    assert staff.post(LIST_URL, bulk).status_code == 302
    assert not ClientAPIKey.objects.exists()
    entries = ClientKeyChange.objects.filter(action="deleted")
    assert sorted(e.key_name for e in entries) == ["one", "three", "two"]
    assert {(e.actor, e.source) for e in entries} == {("admin", "admin")}


@pytest.mark.django_db
def test_the_history_page_says_who_when_how_and_what(staff: Any) -> None:
    row, _ = client_key_issue(name="team-a")
    staff.post(change_url(row), edit_form(row, requests_per_minute="9"))
    page = staff.get(reverse("admin:plugins_api_clientapikey_history", args=[row.pk]))
    text = page.content.decode()
    entry = ClientKeyChange.objects.get(action="updated")
    assert f"{timezone.localtime(entry.changed_at):%Y-%m-%d %H:%M:%S} UTC" in text
    assert "<td>updated</td>" in text and "<td>created</td>" in text
    assert "<td>admin</td>" in text and "<td>command</td>" in text  # who and through what
    assert "<code>requests_per_minute</code>: (unset) &rarr; 9" in text
    assert "127.0.0.1" in text
    change_page = staff.get(change_url(row)).content.decode()
    assert "2 changes; the latest: updated" in change_page


@pytest.mark.django_db
def test_key_changes_are_read_only(staff: Any) -> None:
    client_key_issue(name="team-a")
    entry = ClientKeyChange.objects.get()
    assert staff.get("/admin/plugins_api/clientkeychange/add/").status_code == 403
    url = reverse("admin:plugins_api_clientkeychange_change", args=[entry.pk])
    staff.post(url, {"key_name": "other"})
    entry.refresh_from_db()
    assert entry.key_name == "team-a"
    delete = reverse("admin:plugins_api_clientkeychange_delete", args=[entry.pk])
    assert staff.post(delete, {"post": "yes"}).status_code == 403


# --- owners ---------------------------------------------------------------------------


@pytest.fixture
def alice(django_user_model: Any, client: Any) -> Any:
    """A staff user, not a superuser, who may view, add and change keys and view usage."""
    user = django_user_model.objects.create_user("alice", password="pw-alice-123", is_staff=True)
    for codename in (
        "view_clientapikey",
        "add_clientapikey",
        "change_clientapikey",
        "view_clientkeychange",
        "view_usagerecord",
    ):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return user


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="pw-bob-123", is_staff=True)


@pytest.mark.django_db
def test_a_staff_user_sees_and_changes_only_their_own_keys(
    client: Any, alice: Any, bob: Any
) -> None:
    mine, _ = client_key_issue(name="alice-key", owner=alice)
    theirs, bob_key = client_key_issue(name="bob-key", owner=bob)
    client_key_issue(name="nobodys")
    page = client.get(LIST_URL).content.decode()
    assert "alice-key" in page and "bob-key" not in page and "nobodys" not in page
    assert client.get(change_url(theirs)).status_code == 302  # "does not exist"
    for name in ("revoke", "rotate", "history"):
        url = reverse(f"admin:plugins_api_clientapikey_{name}", args=[theirs.pk])
        assert client.get(url).status_code == 404, name
        assert client.post(url, {"grace": "0"}).status_code == 404, name
    assert verify_key(bob_key) is not None
    changes = client.get("/admin/plugins_api/clientkeychange/").content.decode()
    assert "alice-key" in changes and "bob-key" not in changes

    # The owner cannot be given away, and the scope is not theirs to set.
    form = client.get(change_url(mine)).content.decode()
    assert f'<option value="{bob.pk}"' not in form and 'name="scope"' not in form
    response = client.post(change_url(mine), edit_form(mine, owner=str(bob.pk), scope="admin"))
    assert response.status_code == 200
    assert "owner" in response.context["adminform"].form.errors
    mine.refresh_from_db()
    assert (mine.owner, mine.scope) == (alice, "chat")
    assert client.post(change_url(mine), edit_form(mine, owner="")).status_code == 200
    mine.refresh_from_db()
    assert mine.owner == alice


@pytest.mark.django_db
def test_a_staff_users_new_key_is_theirs_and_chat_scoped(client: Any, alice: Any, bob: Any) -> None:
    refused = client.post(ADD_URL, key_form(name="via-bob", owner=str(bob.pk)))
    assert "owner" in refused.context["adminform"].form.errors
    assert not ClientAPIKey.objects.exists()
    response = client.post(ADD_URL, key_form(name="mine", owner=str(alice.pk), scope="admin"))
    secret = secret_of(response)
    row = ClientAPIKey.objects.get(name="mine")
    assert (row.owner, row.scope) == (alice, "chat")
    assert verify_key(secret).scope == "chat"
    entry = ClientKeyChange.objects.get(key_name="mine")
    assert (entry.actor, entry.source) == ("alice", "admin")


@pytest.mark.django_db
def test_a_view_only_staff_user_changes_nothing(client: Any, alice: Any) -> None:
    alice.user_permissions.remove(Permission.objects.get(codename="change_clientapikey"))
    mine, _ = client_key_issue(
        name="alice-key", owner=alice, limits=KeyLimits(requests_per_minute=3)
    )
    page = client.get(change_url(mine)).content.decode()
    assert "alice-key" in page and 'id="revoke-key"' not in page
    edit = client.post(change_url(mine), edit_form(mine, requests_per_minute="300"))
    assert edit.status_code == 403
    revoke = reverse("admin:plugins_api_clientapikey_revoke", args=[mine.pk])
    assert client.post(revoke).status_code == 403
    mine.refresh_from_db()
    assert (mine.requests_per_minute, mine.revoked_at) == (3, None)


@pytest.mark.django_db
def test_a_staff_user_sees_only_their_own_usage(client: Any, alice: Any, bob: Any) -> None:
    client_key_issue(name="alice-key", owner=alice)
    client_key_issue(name="bob-key", owner=bob)
    usage("key:alice-key", "0.01")
    usage("alice", "0.02")  # her own calls from the chat page
    usage("key:bob-key", "0.04")
    usage("bob", "0.08")
    usage("key:orphan", "0.16")
    page = client.get("/admin/providers/usagerecord/").content.decode()
    assert "key:alice-key" in page and ">alice<" in page
    for other in ("key:bob-key", "key:orphan", ">bob<"):
        assert other not in page, other
    assert "0.04" not in page and "0.16" not in page  # nor in the totals


@pytest.mark.django_db
def test_a_superuser_sees_every_key_and_all_usage(staff: Any, bob: Any) -> None:
    client_key_issue(name="bob-key", owner=bob)
    client_key_issue(name="nobodys")
    usage("key:bob-key", "0.04")
    usage("bob", "0.08")
    page = staff.get(LIST_URL).content.decode()
    assert "bob-key" in page and "nobodys" in page
    usage_page = staff.get("/admin/providers/usagerecord/").content.decode()
    assert "key:bob-key" in usage_page and ">bob<" in usage_page
