"""``/api/keys/``: client keys over REST, who may use it, hostile input, the audit trail and the schema.

An admin-scoped key (or a superuser's session) manages every key; a signed-in
user reads only their own keys; a chat key gets 403. The key itself is in the
create and rotate responses only (``Cache-Control: no-store``), never in a
listing, a read or the history; the hash never anywhere. Bad input is a 400
naming the field and changes nothing: neither the keys nor their history.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from plugins_api.access import client_keys
from plugins_api.access.client_keys import forget_cached_keys, hash_key, verify_key
from plugins_api.access.key_changes import client_key_issue
from plugins_api.models import ClientAPIKey, ClientKeyChange
from providers.models import UsageRecord


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def admin(admin_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


@pytest.fixture
def alice(django_user_model) -> Any:
    """A signed-in user who is neither staff nor superuser."""
    return django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123")


@pytest.fixture
def web(db) -> tuple[ClientAPIKey, str]:
    """A chat key named 'web' with a limit, a model list and a budget."""
    forget_cached_keys()
    row, raw = client_key_issue(name="web", scope="chat", budget_usd=Decimal("5"))
    return row, raw


def state() -> tuple[list[tuple], int]:
    """Return every key's stored fields (its hash included) and the number of audit entries."""
    keys = [
        (
            row.name,
            row.scope,
            row.key_hash,
            row.owner_id,
            row.requests_per_minute,
            row.tokens_per_minute,
            row.max_concurrent_requests,
            list(row.allowed_models),
            row.default_model,
            row.expires_at,
            row.budget_usd,
            row.budget_period,
            row.revoked_at,
            row.previous_key_hash,
        )
        for row in ClientAPIKey.objects.order_by("name")
    ]
    return keys, ClientKeyChange.objects.count()


def error_of(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def secrets_of_every_key() -> list[str]:
    """Return every stored hash, current and former: none may appear in an answer."""
    hashes = []
    for row in ClientAPIKey.objects.all():
        hashes += [row.key_hash] + ([row.previous_key_hash] if row.previous_key_hash else [])
    return hashes


# --- create ---------------------------------------------------------------------


def test_create_returns_the_key_once_with_no_store_and_audits_the_caller(api, admin) -> None:
    body = {
        "name": "svc-1",
        "scope": "chat",
        "requests_per_minute": 60,
        "tokens_per_minute": 10000,
        "max_concurrent_requests": 2,
        "allowed_models": ["echo/*", "openai/gpt-4o"],
        "default_model": "echo/echo-1",
        "budget_usd": "2.50",
        "budget_period": "day",
    }
    response = api.post("/api/keys/", body, format="json", **admin)

    assert response.status_code == 201, response.json()
    assert response["Cache-Control"] == "no-store"
    data = response.json()
    raw = data["key"]
    row = ClientAPIKey.objects.get(name="svc-1")
    assert row.key_hash == hash_key(raw) and raw not in json.dumps(row.allowed_models)
    assert row.key_hash not in response.content.decode()
    assert "key_hash" not in data
    assert data["prefix"] == row.prefix and raw.startswith(row.prefix)
    assert data["status"] == "active"
    assert (data["requests_per_minute"], data["tokens_per_minute"]) == (60, 10000)
    assert data["max_concurrent_requests"] == 2
    assert data["allowed_models"] == ["echo/*", "openai/gpt-4o"]
    assert (data["budget_usd"], data["budget_period"], data["spent_this_period"]) == (
        "2.5",
        "day",
        "0",
    )
    identity = verify_key(raw)
    assert identity is not None and identity.name == "svc-1" and identity.scope == "chat"

    (entry,) = ClientKeyChange.objects.filter(key_name="svc-1")
    assert (entry.action, entry.actor, entry.source, entry.remote_addr) == (
        "created",
        "key:test-admin",
        "api",
        "127.0.0.1",
    )
    assert {"field": "requests_per_minute", "before": None, "after": 60} in entry.changes
    assert raw not in json.dumps(entry.changes) and row.key_hash not in json.dumps(entry.changes)


def test_create_with_only_a_name_gives_an_open_chat_key(api, admin) -> None:
    response = api.post("/api/keys/", {"name": "plain"}, format="json", **admin)
    assert response.status_code == 201, response.json()
    data = response.json()
    assert (data["scope"], data["owner"], data["budget_usd"], data["budget_period"]) == (
        "chat",
        None,
        None,
        "month",
    )
    assert data["allowed_models"] == [] and data["requests_per_minute"] is None


def test_create_gives_the_key_an_owner_by_username(api, admin, alice) -> None:
    response = api.post("/api/keys/", {"name": "alices", "owner": "alice"}, format="json", **admin)
    assert response.status_code == 201, response.json()
    assert response.json()["owner"] == "alice"
    assert ClientAPIKey.objects.get(name="alices").owner == alice


def test_a_taken_name_is_a_409_naming_it_and_keeps_the_first_key(api, admin, web) -> None:
    before = state()
    response = api.post("/api/keys/", {"name": "web", "scope": "admin"}, format="json", **admin)
    assert response.status_code == 409
    assert error_of(response)["field"] == "name" and error_of(response)["type"] == "conflict"
    assert state() == before


def test_a_model_pattern_the_service_refuses_is_a_400_naming_the_field(api, admin) -> None:
    before = state()
    response = api.post(
        "/api/keys/", {"name": "x", "allowed_models": ["nope"]}, format="json", **admin
    )
    assert response.status_code == 400
    assert error_of(response)["field"] == "allowed_models"
    assert "provider/model" in error_of(response)["message"]
    assert state() == before


# --- read ---------------------------------------------------------------------------


def test_list_shows_each_key_with_its_spend_and_never_a_secret(api, admin, web, chat_key) -> None:
    row, raw = web
    UsageRecord.objects.create(
        client="key:web",
        endpoint="/chat",
        provider="openai",
        model="gpt-4o",
        cost_usd=Decimal("0.0123"),
        latency_ms=5,
        outcome="ok",
    )
    UsageRecord.objects.create(
        client="key:other", endpoint="/chat", cost_usd=Decimal("9"), latency_ms=5, outcome="ok"
    )

    response = api.get("/api/keys/", **admin)

    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 3
    by_name = {item["name"]: item for item in page["results"]}
    assert list(by_name) == ["test-admin", "test-chat", "web"]
    assert by_name["web"]["spent_this_period"] == "0.0123"
    assert by_name["web"]["budget_usd"] == "5"
    assert by_name["test-chat"]["spent_this_period"] == "0"
    assert set(by_name["web"]) >= {
        "name",
        "scope",
        "prefix",
        "owner",
        "status",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "rotated_at",
        "previous_key_valid_until",
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent_requests",
        "allowed_models",
        "default_model",
        "budget_usd",
        "budget_period",
        "spent_this_period",
    }
    text = response.content.decode()
    assert raw not in text and chat_key[1] not in text and "key_hash" not in text
    assert all(digest not in text for digest in secrets_of_every_key())
    assert "key" not in by_name["web"]


def test_list_filters_by_scope_status_and_owner(api, admin, web, alice, monkeypatch) -> None:
    client_key_issue(name="gone", scope="chat")
    api.post("/api/keys/gone/revoke/", format="json", **admin)
    client_key_issue(name="soon", expires_at=timezone.now() + timedelta(hours=1), owner=alice)

    def names(query: str) -> list[str]:
        response = api.get(f"/api/keys/{query}", **admin)
        assert response.status_code == 200, response.json()
        return [item["name"] for item in response.json()["results"]]

    assert names("?scope=admin") == ["test-admin"]
    assert names("?status=revoked") == ["gone"]
    assert names("?status=active") == ["soon", "test-admin", "web"]
    assert names("?owner=alice") == ["soon"]
    assert names("?status=expired") == []
    moved = timezone.now() + timedelta(hours=2)
    monkeypatch.setattr(client_keys, "clock", lambda: moved)
    assert names("?status=expired") == ["soon"]
    assert api.get("/api/keys/soon/", **admin).json()["status"] == "expired"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?status=dead", "status"),
        ("?scope=root", "scope"),
        ("?owner=" + "o" * 200, "owner"),
        ("?colour=red", "colour"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(api, admin, query: str, field: str) -> None:
    response = api.get(f"/api/keys/{query}", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] == field


def test_list_is_paginated(api, admin) -> None:
    for index in range(55):
        client_key_issue(name=f"k{index:02d}")
    first = api.get("/api/keys/", **admin).json()
    assert first["count"] == 56 and len(first["results"]) == 50 and first["next"]
    second = api.get("/api/keys/?page=2", **admin).json()
    assert len(second["results"]) == 6


def test_retrieve_one_key_and_404_for_an_unknown_or_impossible_name(api, admin, web) -> None:
    response = api.get("/api/keys/web/", **admin)
    assert response.status_code == 200
    assert response.json()["name"] == "web" and web[1] not in response.content.decode()
    for name in ("nobody", "%00", "n" * 300):
        missing = api.get(f"/api/keys/{name}/", **admin)
        assert missing.status_code == 404, name
        assert error_of(missing)["type"] == "not_found"


# --- change ---------------------------------------------------------------------------


def test_patch_changes_what_the_key_may_do_and_is_audited(api, admin, web, alice) -> None:
    body = {
        "requests_per_minute": 5,
        "allowed_models": ["echo/*"],
        "budget_usd": 1.25,
        "budget_period": "week",
        "owner": "alice",
        "expires_at": "2031-01-31T00:00:00Z",
    }
    response = api.patch("/api/keys/web/", body, format="json", **admin)

    assert response.status_code == 200, response.json()
    data = response.json()
    assert (data["requests_per_minute"], data["allowed_models"], data["owner"]) == (
        5,
        ["echo/*"],
        "alice",
    )
    assert (data["budget_usd"], data["budget_period"]) == ("1.25", "week")
    assert "key" not in data and web[1] not in response.content.decode()
    row = ClientAPIKey.objects.get(name="web")
    assert (row.requests_per_minute, row.owner, row.budget_usd) == (5, alice, Decimal("1.25"))
    assert verify_key(web[1]).limits.requests_per_minute == 5  # this process sees it at once

    entry = ClientKeyChange.objects.filter(key_name="web", action="updated").get()
    assert (entry.actor, entry.source) == ("key:test-admin", "api")
    changes = {change["field"]: change for change in entry.changes}
    assert changes["requests_per_minute"] == {
        "field": "requests_per_minute",
        "before": None,
        "after": 5,
    }
    assert changes["owner"]["after"] == "alice"
    assert changes["budget_usd"]["before"] == "5" and changes["budget_usd"]["after"] == "1.25"


def test_patch_can_clear_a_limit_and_the_owner(api, admin, alice) -> None:
    client_key_issue(name="mine", owner=alice)
    api.patch("/api/keys/mine/", {"requests_per_minute": 9}, format="json", **admin)
    response = api.patch(
        "/api/keys/mine/", {"requests_per_minute": None, "owner": None}, format="json", **admin
    )
    assert response.status_code == 200, response.json()
    row = ClientAPIKey.objects.get(name="mine")
    assert (row.requests_per_minute, row.owner) == (None, None)


def test_an_empty_patch_changes_nothing_and_writes_no_entry(api, admin, web) -> None:
    before = state()
    assert api.patch("/api/keys/web/", {}, format="json", **admin).status_code == 200
    assert state() == before


def test_patch_of_the_name_is_a_400_naming_it(api, admin, web) -> None:
    before = state()
    response = api.patch("/api/keys/web/", {"name": "web2"}, format="json", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] == "name"
    assert "cannot change" in error_of(response)["message"]
    assert state() == before


def test_patch_of_an_unknown_key_is_a_404(api, admin) -> None:
    response = api.patch("/api/keys/nobody/", {"scope": "admin"}, format="json", **admin)
    assert response.status_code == 404


HUGE = "x" * 200_000
NESTED: Any = []
for _ in range(200):
    NESTED = [NESTED]

HOSTILE_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"requests_per_minute": "5"}, "requests_per_minute"),
    ({"requests_per_minute": True}, "requests_per_minute"),
    ({"requests_per_minute": 1.5}, "requests_per_minute"),
    ({"requests_per_minute": 0}, "requests_per_minute"),
    ({"requests_per_minute": -1}, "requests_per_minute"),
    ({"requests_per_minute": 2**40}, "requests_per_minute"),
    ({"tokens_per_minute": [1]}, "tokens_per_minute"),
    ({"max_concurrent_requests": {"n": 1}}, "max_concurrent_requests"),
    ({"budget_usd": [5]}, "budget_usd"),
    ({"budget_usd": True}, "budget_usd"),
    ({"budget_usd": "-1"}, "budget_usd"),
    ({"budget_usd": "0"}, "budget_usd"),
    ({"budget_usd": "1e999"}, "budget_usd"),
    ({"budget_usd": "123456789012345"}, "budget_usd"),
    ({"budget_usd": "0.0000001"}, "budget_usd"),
    ({"budget_usd": HUGE}, "budget_usd"),
    ({"budget_period": "year"}, "budget_period"),
    ({"budget_period": ["day"]}, "budget_period"),
    ({"scope": "root"}, "scope"),
    ({"scope": True}, "scope"),
    ({"scope": HUGE}, "scope"),
    ({"owner": "nobody"}, "owner"),
    ({"owner": 5}, "owner"),
    ({"owner": HUGE}, "owner"),
    ({"allowed_models": "openai/*"}, "allowed_models"),
    ({"allowed_models": {"a": "b"}}, "allowed_models"),
    ({"allowed_models": [["openai/*"]]}, "allowed_models.0"),
    ({"allowed_models": [5]}, "allowed_models.0"),
    ({"allowed_models": ["nope"]}, "allowed_models"),
    ({"allowed_models": ["a b/c"]}, "allowed_models"),
    ({"allowed_models": [HUGE]}, "allowed_models.0"),
    ({"allowed_models": ["echo/*"] * 101}, "allowed_models"),
    ({"allowed_models": NESTED}, None),
    ({"default_model": 5}, "default_model"),
    ({"default_model": "no-slash"}, "default_model"),
    ({"default_model": HUGE}, "default_model"),
    ({"expires_at": 5}, "expires_at"),
    ({"expires_at": "tomorrow"}, "expires_at"),
    ({"expires_at": HUGE}, "expires_at"),
    ({"expires_at": "9999-12-31T23:59:59-05:00"}, "expires_at"),
    ({"expires_at": ["2030-01-01"]}, "expires_at"),
    ({"key_hash": "0" * 64}, "key_hash"),
    ({"prefix": "echo-abc"}, "prefix"),
    ({"revoked_at": None}, "revoked_at"),
    ({"colour": "red"}, "colour"),
    ({HUGE: 1}, "x" * 64 + "..."),
    ({"default_model": "echo/a\u0000b"}, "default_model"),
]


@pytest.mark.parametrize(("body", "field"), HOSTILE_FIELDS)
def test_hostile_create_is_a_400_naming_the_field_and_changes_nothing(
    api, admin, body: dict[str, Any], field: str | None
) -> None:
    before = state()
    response = api.post("/api/keys/", {"name": "hostile", **body}, format="json", **admin)
    assert response.status_code == 400, response.content[:300]
    if field is None:
        assert error_of(response)["field"].startswith("allowed_models")
    else:
        assert error_of(response)["field"] == field, error_of(response)
    assert len(response.content) < 20_000  # nothing huge is quoted back
    assert state() == before


@pytest.mark.parametrize(("body", "field"), HOSTILE_FIELDS)
def test_hostile_patch_is_a_400_naming_the_field_and_changes_nothing(
    api, admin, web, body: dict[str, Any], field: str | None
) -> None:
    before = state()
    response = api.patch("/api/keys/web/", body, format="json", **admin)
    assert response.status_code == 400, response.content[:300]
    if field is None:
        assert error_of(response)["field"].startswith("allowed_models")
    else:
        assert error_of(response)["field"] == field, error_of(response)
    assert state() == before


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("", "name"),
        ("a/b", "name"),
        ("two words", "name"),
        ("history", "name"),
        ("-leading", "name"),
        ("n" * 101, "name"),
        (HUGE, "name"),
        (5, "name"),
        (None, "name"),
        (["web"], "name"),
        ("a\u0000b", "name"),
    ],
)
def test_a_bad_name_is_a_400_naming_it(api, admin, name: Any, field: str) -> None:
    before = state()
    response = api.post("/api/keys/", {"name": name}, format="json", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] == field
    assert state() == before


@pytest.mark.parametrize("body", [[], "web", 5, None, [{"name": "x"}]])
def test_a_body_that_is_not_an_object_is_a_400(api, admin, body: Any) -> None:
    before = state()
    response = api.post("/api/keys/", json.dumps(body), content_type="application/json", **admin)
    assert response.status_code == 400
    assert state() == before


def test_a_missing_name_a_past_expiry_and_a_form_body_are_refused(api, admin) -> None:
    before = state()
    missing = api.post("/api/keys/", {"scope": "chat"}, format="json", **admin)
    assert missing.status_code == 400 and error_of(missing)["field"] == "name"
    past = api.post(
        "/api/keys/", {"name": "old", "expires_at": "2001-01-01T00:00:00Z"}, format="json", **admin
    )
    assert past.status_code == 400 and error_of(past)["field"] == "expires_at"
    form = api.post("/api/keys/", {"name": "form"}, **admin)  # multipart
    assert form.status_code == 415
    deep = api.post(
        "/api/keys/", "[" * 100_000 + "]" * 100_000, content_type="application/json", **admin
    )
    assert deep.status_code == 400
    nul = api.post("/api/keys/", '{"name": "a\\u0000"}', content_type="application/json", **admin)
    assert nul.status_code == 400 and error_of(nul)["field"] == "name"
    assert state() == before


# --- rotate, revoke, delete ----------------------------------------------------------


def test_rotate_returns_the_new_key_once_and_the_former_works_for_the_grace(
    api, admin, web, monkeypatch
) -> None:
    row, former = web
    response = api.post("/api/keys/web/rotate/", {"grace_seconds": 3600}, format="json", **admin)

    assert response.status_code == 200, response.json()
    assert response["Cache-Control"] == "no-store"
    data = response.json()
    new = data["key"]
    assert new != former and verify_key(new).name == "web"
    assert verify_key(former) is not None  # within the grace period
    assert data["previous_key_valid_until"] is not None and data["rotated_at"] is not None
    assert former not in response.content.decode()
    assert hash_key(former) not in response.content.decode()

    later = timezone.now() + timedelta(hours=1, seconds=1)
    monkeypatch.setattr(client_keys, "clock", lambda: later)
    assert verify_key(former) is None and verify_key(new) is not None

    entry = ClientKeyChange.objects.get(key_name="web", action="rotated")
    assert (entry.actor, entry.source) == ("key:test-admin", "api")
    assert entry.changes[0]["grace_seconds"] == 3600
    text = json.dumps(entry.changes)
    assert former not in text and new not in text and hash_key(new) not in text


def test_rotate_with_no_grace_stops_the_former_key_at_once(api, admin, web) -> None:
    _, former = web
    assert verify_key(former) is not None  # cached now
    response = api.post("/api/keys/web/rotate/", {"grace_seconds": 0}, format="json", **admin)
    assert response.status_code == 200
    assert verify_key(former) is None
    assert response.json()["previous_key_valid_until"] is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"grace_seconds": -1},
        {"grace_seconds": 2_592_001},
        {"grace_seconds": "60"},
        {"grace_seconds": True},
        {"grace_seconds": 1.5},
        {"grace_seconds": [60]},
        {"grace_seconds": None},
        {"grace_seconds": 60, "secret": "mine"},
    ],
)
def test_a_bad_rotation_is_a_400_and_changes_nothing(api, admin, web, body) -> None:
    before = state()
    response = api.post("/api/keys/web/rotate/", body, format="json", **admin)
    assert response.status_code == 400
    assert error_of(response)["field"] in {"grace_seconds", "secret"}
    assert state() == before


def test_a_revoked_key_cannot_be_rotated(api, admin, web) -> None:
    assert api.post("/api/keys/web/revoke/", format="json", **admin).status_code == 200
    before = state()
    response = api.post("/api/keys/web/rotate/", {"grace_seconds": 0}, format="json", **admin)
    assert response.status_code == 400 and "revoked" in error_of(response)["message"]
    assert state() == before


def test_revoke_stops_the_key_and_is_audited_once(api, admin, web) -> None:
    _, raw = web
    assert verify_key(raw) is not None
    response = api.post("/api/keys/web/revoke/", format="json", **admin)
    assert response.status_code == 200
    assert response.json()["status"] == "revoked" and response.json()["revoked_at"]
    assert verify_key(raw) is None
    again = api.post("/api/keys/web/revoke/", {}, format="json", **admin)
    assert again.status_code == 200
    (entry,) = ClientKeyChange.objects.filter(key_name="web", action="revoked")
    assert (entry.actor, entry.source) == ("key:test-admin", "api")
    unknown = api.post("/api/keys/web/revoke/", {"why": "x"}, format="json", **admin)
    assert unknown.status_code == 400 and error_of(unknown)["field"] == "why"


def test_delete_removes_the_key_and_keeps_its_history(api, admin, web) -> None:
    _, raw = web
    assert api.delete("/api/keys/web/", **admin).status_code == 204
    assert not ClientAPIKey.objects.filter(name="web").exists()
    assert verify_key(raw) is None
    assert api.get("/api/keys/web/", **admin).status_code == 404
    history = api.get("/api/keys/web/history/", **admin)
    assert history.status_code == 200
    actions = [entry["action"] for entry in history.json()["results"]]
    assert actions == ["deleted", "created"]
    assert api.delete("/api/keys/web/", **admin).status_code == 404


# --- history ----------------------------------------------------------------------------


def test_history_is_newest_first_filtered_and_never_holds_a_secret(api, admin, web) -> None:
    _, first = web
    api.patch("/api/keys/web/", {"tokens_per_minute": 100}, format="json", **admin)
    rotated = api.post("/api/keys/web/rotate/", {"grace_seconds": 60}, format="json", **admin)
    second = rotated.json()["key"]
    api.post("/api/keys/web/revoke/", format="json", **admin)

    one = api.get("/api/keys/web/history/", **admin)
    assert one.status_code == 200
    records = one.json()["results"]
    assert [r["action"] for r in records] == ["revoked", "rotated", "updated", "created"]
    assert records[0]["key"] == "web" and records[0]["changed_at"].endswith("Z")
    assert records[0]["actor"] == "key:test-admin" and records[0]["source"] == "api"

    every = api.get("/api/keys/history/", **admin)
    assert every.status_code == 200
    assert {r["key"] for r in every.json()["results"]} >= {"web", "test-admin"}
    by_api = api.get("/api/keys/history/?key=web&source=api&action=updated", **admin).json()
    assert [r["action"] for r in by_api["results"]] == ["updated"]
    by_actor = api.get("/api/keys/history/?actor=key:test-admin", **admin).json()
    assert by_actor["count"] == 3

    for response in (one, every):
        text = response.content.decode()
        assert first not in text and second not in text
        assert hash_key(first) not in text and hash_key(second) not in text

    bad = api.get(
        "/api/keys/history/?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z", **admin
    )
    assert bad.status_code == 400 and error_of(bad)["field"] == "until"
    assert api.get("/api/keys/history/?action=exploded", **admin).status_code == 400
    assert api.get("/api/keys/nobody/history/", **admin).status_code == 404


# --- who may call -----------------------------------------------------------------------


def test_a_chat_key_is_refused_403_and_no_credential_401(api, chat_key, web) -> None:
    chat = {"HTTP_AUTHORIZATION": f"Bearer {chat_key[1]}"}
    before = state()
    assert api.get("/api/keys/", **chat).status_code == 403
    assert api.get("/api/keys/test-chat/", **chat).status_code == 403
    assert api.post("/api/keys/", {"name": "x"}, format="json", **chat).status_code == 403
    assert api.post("/api/keys/web/revoke/", format="json", **chat).status_code == 403
    assert api.get("/api/keys/history/", **chat).status_code == 403
    assert api.get("/api/keys/").status_code == 401
    assert api.post("/api/keys/", {"name": "x"}, format="json").status_code == 401
    assert state() == before


def test_a_signed_in_user_reads_only_their_own_keys(api, alice, web, django_user_model) -> None:
    _, raw = client_key_issue(name="alices", owner=alice)
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "pw-bob-123")
    client_key_issue(name="bobs", owner=bob)
    api.force_login(alice)

    listing = api.get("/api/keys/")
    assert listing.status_code == 200
    assert [item["name"] for item in listing.json()["results"]] == ["alices"]
    assert raw not in listing.content.decode()
    assert api.get("/api/keys/?owner=bob").json()["results"] == []
    assert api.get("/api/keys/alices/").json()["owner"] == "alice"
    assert api.get("/api/keys/bobs/").status_code == 404
    assert api.get("/api/keys/web/").status_code == 404

    before = state()
    assert api.post("/api/keys/", {"name": "more"}, format="json").status_code == 403
    assert api.patch("/api/keys/alices/", {"scope": "admin"}, format="json").status_code == 403
    assert (
        api.post("/api/keys/alices/rotate/", {"grace_seconds": 0}, format="json").status_code == 403
    )
    assert api.post("/api/keys/alices/revoke/", format="json").status_code == 403
    assert api.delete("/api/keys/alices/").status_code == 403
    assert api.get("/api/keys/alices/history/").status_code == 403
    assert api.get("/api/keys/history/").status_code == 403
    assert state() == before


def test_a_staff_user_who_is_not_a_superuser_reads_only_their_own(api, django_user_model) -> None:
    staff = django_user_model.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    client_key_issue(name="staffs", owner=staff)
    client_key_issue(name="others")
    api.force_login(staff)
    assert [k["name"] for k in api.get("/api/keys/").json()["results"]] == ["staffs"]
    assert api.post("/api/keys/", {"name": "more"}, format="json").status_code == 403


def test_a_superuser_session_manages_keys_under_its_username(api, admin_user) -> None:
    api.force_login(admin_user)
    response = api.post("/api/keys/", {"name": "by-session"}, format="json")
    assert response.status_code == 201, response.json()
    entry = ClientKeyChange.objects.get(key_name="by-session")
    assert (entry.actor, entry.source) == ("admin", "api")
    assert api.delete("/api/keys/by-session/").status_code == 204


def test_an_admin_key_can_revoke_itself_and_is_then_refused(api, admin, admin_key) -> None:
    assert api.post("/api/keys/test-admin/revoke/", format="json", **admin).status_code == 200
    assert api.get("/api/keys/", **admin).status_code == 401


# --- the schema -------------------------------------------------------------------------


def test_the_schema_documents_the_keys_endpoints(tmp_path, db) -> None:
    path = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    schema = yaml.safe_load(path.read_text())
    paths = schema["paths"]
    expected = {
        "/api/keys/": {"get", "post"},
        "/api/keys/{name}/": {"get", "patch", "delete"},
        "/api/keys/{name}/rotate/": {"post"},
        "/api/keys/{name}/revoke/": {"post"},
        "/api/keys/{name}/history/": {"get"},
        "/api/keys/history/": {"get"},
    }
    for url, methods in expected.items():
        assert url in paths, url
        operations = {m: op for m, op in paths[url].items() if m != "parameters"}
        assert methods == set(operations), url
        assert all(op["tags"] == ["keys"] for op in operations.values()), url
    create = paths["/api/keys/"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ClientKeyCreate"
    }
    assert create["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ClientKeySecret"
    }
    components = schema["components"]["schemas"]
    assert "key" in components["ClientKeySecret"]["properties"]
    assert "key" not in components["ClientKey"]["properties"]
    assert not any("key_hash" in c.get("properties", {}) for c in components.values())
    assert "grace_seconds" in components["ClientKeyRotate"]["properties"]
    rotate = paths["/api/keys/{name}/rotate/"]["post"]["responses"]
    assert rotate["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
