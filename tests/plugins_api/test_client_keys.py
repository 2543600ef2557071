"""Client API keys: stored hashed, verified from a cache, revoked at once, last use recorded."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import OperationalError

from echo_site.request_context import JsonLogFormatter
from plugins_api.access import client_keys
from plugins_api.access.client_keys import KEY_PREFIX, averify_key, hash_key, verify_key
from plugins_api.access.key_changes import client_key_issue, client_key_revoke
from plugins_api.access.key_credentials import bearer_token
from plugins_api.access.key_last_use import key_last_use
from plugins_api.models import ClientAPIKey
from providers.runtime import process as runtime


@pytest.fixture(autouse=True)
def fresh_key_state() -> Iterator[None]:
    """Forget cached verifications and last-use stamps (row ids repeat across rolled-back tests)."""
    client_keys.forget_cached_keys()
    key_last_use.reset()
    yield
    client_keys.forget_cached_keys()
    key_last_use.reset()


def test_key_is_stored_hashed_with_only_a_prefix_kept(db) -> None:
    row, raw_key = client_key_issue(name="ci", scope="chat")

    stored = ClientAPIKey.objects.filter(pk=row.pk).values().get()
    assert raw_key.startswith(KEY_PREFIX)
    assert len(raw_key) > 40
    assert all(raw_key not in str(value) for value in stored.values())
    assert stored["key_hash"] == hashlib.sha256(raw_key.encode()).hexdigest()
    assert stored["prefix"] == raw_key[: len(KEY_PREFIX) + 6]
    assert stored["last_used_at"] is None
    assert stored["revoked_at"] is None


def test_each_key_is_new(db) -> None:
    _, first = client_key_issue(name="one", scope="chat")
    _, second = client_key_issue(name="two", scope="chat")

    assert first != second


def test_unknown_scope_is_refused(db) -> None:
    with pytest.raises(ValidationError) as refused:
        client_key_issue(name="root", scope="root")
    assert list(refused.value.message_dict) == ["scope"]
    assert not ClientAPIKey.objects.exists()


def test_verify_returns_the_identity_and_scope_rules(db) -> None:
    chat_row, chat_raw = client_key_issue(name="chat", scope="chat")
    _, admin_raw = client_key_issue(name="admin", scope="admin")

    chat = verify_key(chat_raw)
    admin = verify_key(admin_raw)

    assert chat is not None and admin is not None
    assert (chat.key_id, chat.name, chat.scope) == (chat_row.pk, "chat", "chat")
    assert chat.allows("chat") and not chat.allows("admin")
    assert admin.allows("chat") and admin.allows("admin")
    assert verify_key(chat_raw + "x") is None
    assert verify_key("") is None


def test_second_verification_costs_no_query(db, django_assert_num_queries) -> None:
    _, raw_key = client_key_issue(name="ci", scope="chat")

    # The digests' index (read once a worker, and after a key is made), the lookup,
    # and the first last-use stamp.
    with django_assert_num_queries(3):
        assert verify_key(raw_key) is not None
    with django_assert_num_queries(0):
        assert verify_key(raw_key) is not None
        assert async_to_sync(averify_key)(raw_key) is not None


def test_async_verification_is_cached_too(db, django_assert_num_queries) -> None:
    _, raw_key = client_key_issue(name="ci", scope="chat")

    assert async_to_sync(averify_key)(raw_key) is not None
    with django_assert_num_queries(0):
        assert async_to_sync(averify_key)(raw_key) is not None


def test_unknown_key_is_cached_as_unknown(db, django_assert_num_queries) -> None:
    with django_assert_num_queries(1):
        assert verify_key("echo-nobody") is None
    with django_assert_num_queries(0):
        assert verify_key("echo-nobody") is None


def test_revocation_takes_effect_at_once_despite_the_cache(db) -> None:
    row, raw_key = client_key_issue(name="ci", scope="chat")
    assert verify_key(raw_key) is not None  # now cached as valid

    client_key_revoke(name="ci")

    assert verify_key(raw_key) is None
    assert async_to_sync(averify_key)(raw_key) is None
    row.refresh_from_db()
    assert row.revoked_at is not None


def test_a_lookup_racing_the_revocation_does_not_keep_the_key_alive(
    db, django_capture_on_commit_callbacks
) -> None:
    _, raw_key = client_key_issue(name="ci", scope="chat")
    valid = verify_key(raw_key)

    with django_capture_on_commit_callbacks(execute=True):
        client_key_revoke(name="ci")
        # Another request read the key before the revocation committed and cached it
        # as valid. (Simulated: the in-memory test database locks readers out.)
        expires = time.monotonic() + client_keys.CACHE_SECONDS
        runtime.key_cache[hash_key(raw_key)] = (expires, valid)

    assert verify_key(raw_key) is None


def test_revoking_twice_keeps_the_first_date(db) -> None:
    client_key_issue(name="ci", scope="chat")
    first = client_key_revoke(name="ci").revoked_at

    assert client_key_revoke(name="ci").revoked_at == first


def test_revoking_an_unknown_key_raises(db) -> None:
    with pytest.raises(ClientAPIKey.DoesNotExist):
        client_key_revoke(name="nobody")


def test_verification_records_last_use(db) -> None:
    row, raw_key = client_key_issue(name="ci", scope="chat")

    verify_key(raw_key)

    row.refresh_from_db()
    assert row.last_used_at is not None


@pytest.mark.slow
def test_chat_over_http_records_last_use(
    echo_config: Any, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> None:
    row, raw_key = chat_key

    response = httpx.post(
        f"{live_echo.url}/chat",
        json={"prompt": "Hello"},
        headers={"Authorization": f"Bearer {raw_key}"},
        timeout=5,
    )

    assert response.status_code == 200
    deadline = time.monotonic() + 3
    while last_used_at(row.pk) is None:
        assert time.monotonic() < deadline, "last_used_at was never written"
        time.sleep(0.05)


def last_used_at(key_id: int) -> Any:
    """Read a key's last use, beside the live server's writes."""
    try:
        return ClientAPIKey.objects.get(pk=key_id).last_used_at
    except OperationalError:  # the shared in-memory test database: "table is locked"
        return None


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer echo-abc", "echo-abc"),
        ("bearer  echo-abc ", "echo-abc"),
        ("Basic echo-abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_endless_random_keys_keep_the_cache_bounded_and_known_keys_working(db, monkeypatch) -> None:
    monkeypatch.setattr(client_keys, "CACHE_MAX_KEYS", 50)
    _, raw_key = client_key_issue(name="ci", scope="chat")
    assert verify_key(raw_key) is not None

    for n in range(400):
        assert verify_key(f"echo-guess-{n}") is None
        assert len(runtime.key_cache) <= 50

    assert verify_key(raw_key) is not None  # evicted or not, the real key still verifies
    assert len(runtime.key_cache) <= 50


def test_a_client_key_quoted_in_any_log_line_or_redacted_text_is_masked(db, client, caplog) -> None:
    """Echo keeps only keys' hashes, so it masks them by their shape: a URL, an id, a message."""
    from providers.secrets.masking import redact

    _, raw_key = client_key_issue(name="quoted", scope="chat")
    part = raw_key[5:13]
    with caplog.at_level(logging.INFO):
        assert client.get(f"/v1/{raw_key}/x").status_code == 404  # Django logs "Not Found: <path>"
        logging.getLogger("echo.tests").warning("a client said %s", raw_key[:30])
        logging.getLogger("echo.tests").info("ids", extra={"request_id": raw_key})
    assert "Not Found" in caplog.text and "echo-****" in caplog.text
    assert part not in caplog.text
    text = logging.Formatter(settings.LOGGING["formatters"]["text"]["format"])
    for record in caplog.records:
        record.request_id = getattr(record, "request_id", "-")
        # Django's record holds its request object, whose text quotes the raw path.
        assert part not in text.format(record) and part not in JsonLogFormatter().format(record)
    assert redact(f"upstream echoed {raw_key}", ()) == "upstream echoed echo-****"
    assert redact("model echo-1 and echo-shout", ()) == "model echo-1 and echo-shout"
