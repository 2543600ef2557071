"""A burst of calls with a key the cache does not hold costs one query, never stale after a change."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, async_to_sync, sync_to_async
from django.db import close_old_connections

from plugins_api.access import client_keys
from plugins_api.access.client_keys import averify_key, hash_key
from plugins_api.access.key_changes import client_key_issue, client_key_revoke
from plugins_api.access.key_digests import KeyDigests, key_digests
from providers.runtime import process as runtime

# Cached verifications and last-use stamps are forgotten around each test (autouse, imported).
from tests.plugins_api.test_client_keys import fresh_key_state  # noqa: E402, F401


def test_a_burst_of_one_cold_key_costs_one_query(db, counted_queries) -> None:
    row, raw_key = client_key_issue(name="burst", scope="chat")

    async def burst():
        return await asyncio.gather(*(averify_key(raw_key) for _ in range(300)))

    identities = async_to_sync(burst)()
    assert counted_queries == [hash_key(raw_key)]
    assert {identity.key_id for identity in identities} == {row.pk}
    assert client_keys._lookups.running() == 0
    # Then from the cache: no query at all.
    async_to_sync(burst)()
    assert len(counted_queries) == 1


def test_a_flood_of_distinct_unknown_keys_leaves_nothing_running_and_the_cache_bounded(
    db, counted_queries, monkeypatch
) -> None:
    monkeypatch.setattr(client_keys, "CACHE_MAX_KEYS", 50)

    async def flood():
        return await asyncio.gather(*(averify_key(f"echo-guess-{n}") for n in range(200)))

    assert async_to_sync(flood)() == [None] * 200
    assert counted_queries == []  # not in the digests' index: no lookup at all
    assert key_digests().reads == 1  # one read of the index, shared by the whole flood
    assert client_keys._lookups.running() == 0
    assert len(runtime.unknown_key_cache) <= 50
    assert len(runtime.key_cache) == 0


@pytest.fixture
def every_digest_indexed(monkeypatch) -> None:
    """Look every digest up, as if the digests' index held it: these tests are about the lookups."""

    async def indexed(self, digest: str) -> bool:
        return True

    monkeypatch.setattr(KeyDigests, "may_open", indexed)


@pytest.mark.usefixtures("every_digest_indexed")
def test_a_lookup_under_way_when_the_cache_is_dropped_keeps_nothing(db, monkeypatch) -> None:
    row, raw_key = client_key_issue(name="revoked-meanwhile", scope="chat")
    before = type(row).objects.get(pk=row.pk)  # the row as a slow query read it, still live
    client_key_revoke(name=row.name)  # what the database says by the time that query answers
    real = client_keys.stored_key_row
    released = asyncio.Event()
    asked: list[str] = []

    async def slow_then_real(digest: str):
        asked.append(digest)
        if len(asked) == 1:
            await released.wait()  # the first query answers late, with what it read before
            return before
        return await real(digest)

    monkeypatch.setattr(client_keys, "stored_key_row", slow_then_real)

    async def scenario():
        first = asyncio.create_task(averify_key(raw_key))
        for _ in range(100):  # until the first query is under way
            if asked:
                break
            await asyncio.sleep(0)
        assert asked == [hash_key(raw_key)]
        client_keys.forget_cached_keys()  # what a save or a revoke does in this process
        second = await averify_key(raw_key)  # a query of its own, not the one under way
        released.set()
        stale = await first
        third = await averify_key(raw_key)  # from the cache: what the second query read
        return second, stale, third

    second, stale, third = async_to_sync(scenario)()
    assert len(asked) == 2
    assert stale is not None  # the late answer goes to its own caller only...
    assert second is None and third is None  # ...and is never cached for the calls after


@pytest.mark.usefixtures("every_digest_indexed")
def test_a_caller_that_leaves_does_not_cancel_the_query_the_others_wait_for(
    db, monkeypatch
) -> None:
    row, raw_key = client_key_issue(name="left", scope="chat")
    real = client_keys.stored_key_row
    released = asyncio.Event()

    async def gated(digest: str):
        await released.wait()
        return await real(digest)

    monkeypatch.setattr(client_keys, "stored_key_row", gated)

    async def scenario():
        callers = [asyncio.create_task(averify_key(raw_key)) for _ in range(3)]
        for _ in range(100):  # until all three wait for the one query
            if client_keys._lookups.running():
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert client_keys._lookups.running() == 1
        callers[0].cancel()  # its client hung up
        released.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        return results

    results = async_to_sync(scenario)()
    assert isinstance(results[0], asyncio.CancelledError)
    assert [identity.key_id for identity in results[1:]] == [row.pk, row.pk]


def test_the_call_that_started_the_query_waits_for_it_so_no_thread_is_left(
    transactional_db, monkeypatch
) -> None:
    """Served for real (no test thread to borrow): each call in a thread-sensitive context of its own.

    The query runs in the context of the call that started it; if that call
    left first, asgiref would make its finished context a thread (and a
    database connection) that nothing ever closes.
    """
    row, raw_key = client_key_issue(name="starter-left", scope="chat")
    client_keys.forget_cached_keys()
    threads_before = set(SyncToAsync.context_to_thread_executor)
    real = client_keys.stored_key_row

    async def scenario():
        released = asyncio.Event()

        async def held(digest: str):
            await released.wait()
            return await real(digest)

        monkeypatch.setattr(client_keys, "stored_key_row", held)

        async def call():  # as the hot path serves one
            async with ThreadSensitiveContext() as context:
                try:
                    return await averify_key(raw_key)
                finally:
                    if context in SyncToAsync.context_to_thread_executor:
                        await sync_to_async(close_old_connections)()

        calls = [asyncio.create_task(call()) for _ in range(4)]
        for _ in range(100):  # until the first call has started the query
            if client_keys._lookups.running():
                break
            await asyncio.sleep(0)
        calls[0].cancel()  # the call that started the query: its client hung up
        for _ in range(20):
            await asyncio.sleep(0)
        waited = not calls[0].done()  # it stays until the query it started ends
        released.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        return waited, results

    waited, results = asyncio.run(scenario())
    assert waited
    assert isinstance(results[0], asyncio.CancelledError)
    assert [identity.key_id for identity in results[1:]] == [row.pk] * 3
    assert set(SyncToAsync.context_to_thread_executor) == threads_before
