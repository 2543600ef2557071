"""A made-up key costs no query (``plugins_api.access.key_digests``), and costs other clients nothing.

Hostile: endless distinct made-up keys, at once or one after the other, over
HTTP or to the key store, get their 401 after at most one read of the
digests' index a second, never a row lookup each; a real key is never
pushed out of the cache by them, and a key made a moment ago, even in
another worker, is found.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from django.utils import timezone

from plugins_api.access import client_keys
from plugins_api.access import key_digests as key_digests_module
from plugins_api.access.client_keys import averify_key, hash_key, verify_key
from plugins_api.access.key_changes import (
    client_key_issue,
    client_key_revoke,
    client_key_rotate,
    new_secret,
)
from plugins_api.access.key_digests import key_digests, stored_digests
from plugins_api.models import ClientAPIKey
from providers.runtime import process as runtime
from tests.echo_site.test_hot_path import CASES, HOT, go_live, serve_async


def made_in_another_worker(name: str) -> str:
    """Insert a key as another worker would: this worker's index is not told."""
    raw_key, prefix, digest = new_secret()
    ClientAPIKey.objects.create(name=name, scope="chat", prefix=prefix, key_hash=digest)
    return raw_key


def test_the_index_holds_live_keys_and_former_secrets_in_their_grace_period_only(db) -> None:
    live, _ = client_key_issue(name="live", scope="chat")
    revoked, _ = client_key_issue(name="revoked", scope="chat")
    client_key_revoke(name="revoked")
    rotated, _ = client_key_issue(name="rotated", scope="chat")
    former = rotated.key_hash
    client_key_rotate(name="rotated", grace=timedelta(hours=1))
    rotated.refresh_from_db()

    digests = stored_digests()
    assert live.key_hash in digests and rotated.key_hash in digests and former in digests
    assert revoked.key_hash not in digests

    ClientAPIKey.objects.filter(pk=rotated.pk).update(
        previous_key_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert former not in stored_digests()  # its grace period is over


def test_made_up_keys_one_after_another_cost_one_read_of_the_index_a_period(
    db, counted_queries, monkeypatch
) -> None:
    monkeypatch.setattr(key_digests_module, "REFRESH_SECONDS", 0.05)

    async def one_by_one() -> float:
        started = time.monotonic()
        for n in range(12):
            assert await averify_key(f"echo-guess-{n:030d}") is None
        return time.monotonic() - started

    elapsed = async_to_sync(one_by_one)()
    assert counted_queries == []
    reads = key_digests().reads
    # The first read at once, then at most one each period: the flood is paced by it.
    assert reads <= 2 + elapsed / 0.05
    assert elapsed >= 0.05 * (reads - 1) * 0.9


def test_a_key_made_in_another_worker_a_moment_ago_is_found(db, counted_queries) -> None:
    assert async_to_sync(averify_key)("echo-guess-first-000000000000000") is None  # index read
    raw_key = made_in_another_worker("elsewhere")

    # Async: waits for the next read of the index (at most a second), then finds it.
    started = time.monotonic()
    assert async_to_sync(averify_key)(raw_key) is not None
    assert time.monotonic() - started <= key_digests_module.REFRESH_SECONDS + 0.5
    assert counted_queries == [hash_key(raw_key)]


def test_a_sync_caller_never_waits_and_finds_a_new_key_once_a_read_is_due(db, monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(
        runtime.current(), "key_digests", key_digests_module.KeyDigests(clock=lambda: clock[0])
    )
    assert verify_key("echo-guess-first-000000000000000") is None  # the index read
    raw_key = made_in_another_worker("elsewhere")

    started = time.monotonic()
    assert verify_key(raw_key) is None  # read less than a period ago: unknown, no wait
    assert time.monotonic() - started < 0.5
    runtime.unknown_key_cache.clear()  # as CACHE_SECONDS later
    clock[0] += key_digests_module.REFRESH_SECONDS
    assert verify_key(raw_key) is not None


def test_a_key_made_here_is_found_at_once(db) -> None:
    assert verify_key("echo-guess-first-000000000000000") is None  # the index read
    _, raw_key = client_key_issue(name="new", scope="chat")
    started = time.monotonic()
    assert verify_key(raw_key) is not None  # the issue marked the index stale
    assert time.monotonic() - started < 0.5


def test_unknown_keys_never_push_a_known_key_out_of_the_cache(
    db, monkeypatch, counted_queries
) -> None:
    monkeypatch.setattr(client_keys, "CACHE_MAX_KEYS", 50)
    _, raw_key = client_key_issue(name="known", scope="chat")
    assert async_to_sync(averify_key)(raw_key) is not None
    for n in range(400):
        assert verify_key(f"echo-guess-{n}") is None
        assert len(runtime.unknown_key_cache) <= 50

    counted_queries.clear()
    assert async_to_sync(averify_key)(raw_key) is not None
    assert counted_queries == []  # still cached: no query


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/chat"])
def test_a_flood_of_made_up_keys_over_http_costs_no_lookup_and_no_one_else_anything(
    echo_config, chat_key, counted_queries, path: str
) -> None:
    go_live(echo_config)
    body = json.dumps(CASES[path]["json"][0]).encode()

    async def flood() -> list[int]:
        answers = await asyncio.gather(
            *(
                serve_async(HOT, path, body, {"Authorization": f"Bearer echo-made-up-{n:030d}"})
                for n in range(300)
            )
        )
        return [answer.status for answer in answers]

    assert async_to_sync(flood)() == [401] * 300
    assert counted_queries == []
    assert key_digests().reads == 1
    chat = {"Authorization": f"Bearer {chat_key[1]}"}
    assert async_to_sync(serve_async)(HOT, path, body, chat).status == 200


def test_a_wait_that_ends_a_hair_early_still_reads_the_index(monkeypatch) -> None:
    """The loop's timer may fire a little before the period ends: the read is still made."""
    clock = [100.0]
    stored = [frozenset({"a" * 64}), frozenset({"a" * 64, "b" * 64})]
    monkeypatch.setattr(key_digests_module, "stored_digests", lambda: stored.pop(0))

    async def early_sleep(seconds: float) -> None:
        clock[0] += seconds - 1e-6

    monkeypatch.setattr(key_digests_module.asyncio, "sleep", early_sleep)
    index = key_digests_module.KeyDigests(clock=lambda: clock[0])

    async def scenario() -> tuple[bool, bool]:
        first = await index.may_open("c" * 64)  # the first read: not there
        clock[0] += 0.5
        return first, await index.may_open("b" * 64)  # made since: waits, then reads again

    with override_settings(ECHO_ORM_THREADS=0):
        assert async_to_sync(scenario)() == (False, True)
    assert index.reads == 2
