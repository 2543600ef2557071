"""A key's last use is written off the request's path: by the serving loop, in bounded batches."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from plugins_api.access import key_last_use as key_last_use_module
from plugins_api.access.client_keys import averify_key, verify_key
from plugins_api.access.key_changes import client_key_issue
from plugins_api.access.key_last_use import key_last_use
from plugins_api.models import ClientAPIKey
from tests.plugins_api.test_client_keys import fresh_key_state  # noqa: F401 - autouse fixture
from tests.serving_loop_thread import serving_loop_thread


def stamped_names() -> set[str]:
    return set(
        ClientAPIKey.objects.filter(last_used_at__isnull=False).values_list("name", flat=True)
    )


def test_in_a_serving_process_the_request_does_not_write_the_stamp(
    transactional_db, serving_loop: asyncio.AbstractEventLoop
) -> None:
    _, raw_key = client_key_issue(name="ci", scope="chat")

    # As one of DRF's request threads verifies a key while the loop serves.
    with CaptureQueriesContext(connection) as queries:
        assert verify_key(raw_key) is not None
    assert [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")] == []

    deadline = time.monotonic() + 5
    while stamped_names() != {"ci"}:
        assert time.monotonic() < deadline, "the serving loop never wrote the stamp"
        time.sleep(0.05)
    # The writer's connection lives in asgiref's thread: close it, as the lifecycle's stop does.
    asyncio.run_coroutine_threadsafe(sync_to_async(connections.close_all)(), serving_loop).result(5)


async def test_waiting_stamps_are_bounded_and_one_flush_writes_them(
    transactional_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_last_use_module, "MAX_PENDING", 2)
    keys = [await sync_to_async(client_key_issue)(name=f"k{i}", scope="chat") for i in range(3)]

    # A loop that serves nothing (this test's) leaves the stamps to flush().
    for _, raw_key in keys:
        assert await averify_key(raw_key) is not None
    assert await key_last_use.flush() == 2  # the third key found no room
    assert await sync_to_async(stamped_names)() == {"k0", "k1"}

    for _, raw_key in keys:
        assert await averify_key(raw_key) is not None
    # Within the minute only the key that found no room is stamped.
    assert await key_last_use.flush() == 1
    assert await sync_to_async(stamped_names)() == {"k0", "k1", "k2"}
    await sync_to_async(connections.close_all)()


def test_the_stamps_still_waiting_are_written_when_the_worker_stops(
    transactional_db, serving_loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key used once just before a deploy must not look unused: the lifespan's shutdown writes it."""
    monkeypatch.setattr(
        key_last_use_module, "BATCH_SECONDS", 60.0
    )  # the writer would wait a minute
    _, raw_key = client_key_issue(name="used-before-deploy", scope="chat")

    async def use_then_stop() -> int:
        assert await averify_key(raw_key) is not None  # on the serving loop: the writer waits
        await asyncio.sleep(0)
        return await key_last_use.stop()

    future = asyncio.run_coroutine_threadsafe(use_then_stop(), serving_loop)
    assert future.result(10) == 1
    assert stamped_names() == {"used-before-deploy"}
    asyncio.run_coroutine_threadsafe(sync_to_async(connections.close_all)(), serving_loop).result(5)


@pytest.mark.filterwarnings("ignore:coroutine 'sleep' was never awaited:RuntimeWarning")
def test_a_writer_left_on_a_closed_loop_does_not_stop_the_shutdown(
    transactional_db, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that ran in this process before left its writer waiting on a loop now closed."""
    monkeypatch.setattr(key_last_use_module, "BATCH_SECONDS", 60.0)
    key, _ = client_key_issue(name="left-behind", scope="chat")
    leave_a_writer_on_a_closed_loop(key.id, monkeypatch, caplog)  # it waits a minute there
    monkeypatch.setattr(key_last_use_module, "serving_loop", lambda: None)

    assert asyncio.run(key_last_use.stop()) == 1
    assert stamped_names() == {"left-behind"}
    connections.close_all()
    assert_the_dropped_writer_went_quietly(caplog)


def leave_a_writer_on_a_closed_loop(
    key_id: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Note KEY_ID's use on a serving loop that then closes, its writer still waiting there."""
    gc.collect()  # what earlier tests left goes now, not under this test's log
    caplog.clear()
    old = asyncio.new_event_loop()
    monkeypatch.setattr(key_last_use_module, "serving_loop", lambda: old)

    async def note_on_the_old_loop() -> None:
        key_last_use.note(key_id)  # starts the writer there

    old.run_until_complete(note_on_the_old_loop())
    old.close()  # its writer never ran to its end


def assert_the_dropped_writer_went_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """No "Task was destroyed but it is pending!" at ERROR when the old writer is collected."""
    gc.collect()
    assert not [r for r in caplog.records if "destroyed" in r.getMessage()], caplog.text


@pytest.mark.filterwarnings("ignore:coroutine 'sleep' was never awaited:RuntimeWarning")
def test_the_next_serving_loop_takes_over_from_a_writer_left_on_a_closed_loop(
    transactional_db,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server restarted in this process: the new loop's writer writes what the old one held."""
    first, _ = client_key_issue(name="before-restart", scope="chat")
    _, raw_key = client_key_issue(name="after-restart", scope="chat")
    leave_a_writer_on_a_closed_loop(first.id, monkeypatch, caplog)

    with serving_loop_thread() as loop:
        monkeypatch.setattr(key_last_use_module, "serving_loop", lambda: loop)
        assert verify_key(raw_key) is not None  # on a request thread: the new loop's writer
        deadline = time.monotonic() + 5
        while stamped_names() != {"before-restart", "after-restart"}:
            assert time.monotonic() < deadline, stamped_names()
            time.sleep(0.05)
        asyncio.run_coroutine_threadsafe(sync_to_async(connections.close_all)(), loop).result(5)
    assert_the_dropped_writer_went_quietly(caplog)
