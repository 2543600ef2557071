"""ORM calls from async code on long-lived threads that keep their connections (``providers.runtime.orm_threads``).

Against this suite's PostgreSQL: a kept connection is a real server
process, and a database that went away is one whose process was ended.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection, connections
from django.db.backends.signals import connection_created

from providers.runtime import orm_threads as module
from providers.runtime.orm_threads import OrmThreads

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def threads() -> Iterator[OrmThreads]:
    pool = OrmThreads(size=lambda: 1)
    yield pool
    pool.shutdown()


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """The names of the threads that opened a database connection while the test ran."""
    names: list[str] = []

    def note(sender, connection, **kwargs) -> None:
        names.append(threading.current_thread().name)

    connection_created.connect(note, weak=False)
    yield names
    connection_created.disconnect(note)


def backend_pid() -> int:
    return connections["default"].connection.info.backend_pid


@sync_to_async
def end_server_process(pid: int) -> None:
    """End PostgreSQL's process PID from the test's own connection, as a restart would; wait until it is gone."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_until_gone(pid)


def wait_until_gone(pid: int) -> None:
    """Wait until PostgreSQL's process PID is no more (10 s at most)."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.01)
    raise AssertionError(f"PostgreSQL's process {pid} did not end")


async def test_a_call_runs_on_a_thread_of_its_own_and_gives_back_its_value_or_its_error(
    threads: OrmThreads,
) -> None:
    def where() -> str:
        return threading.current_thread().name

    assert (await threads.run(where)).startswith("echo-orm")
    assert await threads.run(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ZeroDivisionError):
        await threads.run(lambda: 1 / 0)


async def test_calls_share_one_kept_connection(threads: OrmThreads, opened: list[str]) -> None:
    pids = {await threads.run(lambda: (connection.ensure_connection(), backend_pid())[1])}
    for _ in range(10):
        pids.add(await threads.run(backend_pid))

    assert len(pids) == 1  # the same server process served every call
    assert len(opened) == 1 and opened[0].startswith("echo-orm")


async def test_a_connection_left_in_a_transaction_is_dropped_and_the_next_call_reconnects(
    threads: OrmThreads, opened: list[str]
) -> None:
    def leave_a_transaction_open() -> int:
        connection.set_autocommit(False)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return backend_pid()

    first = await threads.run(leave_a_transaction_open)
    second = await threads.run(lambda: (connection.ensure_connection(), backend_pid())[1])

    assert second != first
    assert await threads.run(lambda: connection.get_autocommit()) is True
    assert len(opened) == 2


def count_keys() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM plugins_api_clientapikey")
        return cursor.fetchone()[0]


async def test_a_connection_the_server_ended_between_calls_is_replaced_before_use(
    threads: OrmThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after a database restart: PostgreSQL says goodbye, the next call connects anew, no error."""
    monkeypatch.setattr(module, "IDLE_CHECK_SECONDS", 3600.0)  # the goodbye alone tells
    await threads.run(count_keys)
    gone = await threads.run(backend_pid)
    await end_server_process(gone)

    assert await threads.run(count_keys) == 0
    assert await threads.run(backend_pid) != gone


async def test_the_servers_goodbye_is_seen_without_a_round_trip(threads: OrmThreads) -> None:
    def spoke() -> bool:
        return module._server_spoke(connections["default"])

    async def on_the_thread_as_it_is(fn):  # not through run(), which would act on what it sees
        return await asyncio.get_running_loop().run_in_executor(threads._pool(1), fn)

    await threads.run(count_keys)
    assert await on_the_thread_as_it_is(spoke) is False  # idle and live: nothing to read
    await end_server_process(await threads.run(backend_pid))

    assert await on_the_thread_as_it_is(spoke) is True


async def test_a_connection_gone_silently_is_found_by_the_idle_check(
    threads: OrmThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server gone without a word (a cut network): an idle connection is tried before use."""
    await threads.run(count_keys)
    gone = await threads.run(backend_pid)
    await end_server_process(gone)
    monkeypatch.setattr(module, "_server_spoke", lambda connection: False)  # no goodbye came
    monkeypatch.setattr(module, "IDLE_CHECK_SECONDS", 0.0)

    assert await threads.run(count_keys) == 0
    assert await threads.run(backend_pid) != gone


async def test_a_connection_broken_during_a_call_fails_that_call_only(
    threads: OrmThreads, opened: list[str]
) -> None:
    def end_own_session() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    await threads.run(count_keys)
    with pytest.raises(OperationalError):
        await threads.run(end_own_session)

    assert await threads.run(count_keys) == 0
    assert len(opened) == 2


async def test_a_process_that_is_not_the_one_that_made_the_threads_makes_its_own(
    threads: OrmThreads, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await threads.run(threading.get_ident)
    monkeypatch.setattr(module.os, "getpid", lambda: -1)  # as in a forked worker

    assert await threads.run(threading.get_ident) != first


async def test_at_most_size_threads_serve_calls_made_at_once() -> None:
    pool = OrmThreads(size=lambda: 2)
    gate = threading.Barrier(2, timeout=5)
    names: set[str] = set()

    def meet() -> None:
        names.add(threading.current_thread().name)
        gate.wait()

    try:
        await asyncio.gather(*(pool.run(meet) for _ in range(6)))
    finally:
        await asyncio.to_thread(pool.shutdown)
    assert len(names) == 2


async def test_a_new_size_makes_new_threads() -> None:
    size = [1]
    pool = OrmThreads(size=lambda: size[0])
    gate = threading.Barrier(2, timeout=5)
    try:
        await pool.run(threading.get_ident)
        size[0] = 2
        # Two calls meet at the barrier: only a pool of two can run them at once.
        await asyncio.gather(pool.run(gate.wait), pool.run(gate.wait))
    finally:
        await asyncio.to_thread(pool.shutdown)


async def test_with_no_threads_a_call_runs_as_djangos_async_orm_runs_a_query() -> None:
    """Size 0 (the suite's setting): the caller's thread-sensitive context, where its transaction is."""
    from asgiref.sync import ThreadSensitiveContext

    pool = OrmThreads(size=lambda: 0)
    async with ThreadSensitiveContext():
        first = await pool.run(threading.current_thread)
        again = await pool.run(threading.current_thread)

    assert first is again and not first.name.startswith("echo-orm")
    assert pool._executor is None


async def test_shutdown_ends_every_kept_session_and_the_next_call_starts_again(
    threads: OrmThreads,
) -> None:
    pid = await threads.run(lambda: (connection.ensure_connection(), backend_pid())[1])
    # Held here, so that only a close ends its session (not the wrapper's garbage collection).
    held = await threads.run(lambda: connections["default"])

    await asyncio.to_thread(threads.shutdown)

    await sync_to_async(wait_until_gone)(pid)
    assert held.connection is None
    assert await threads.run(count_keys) == 0  # new threads, a new connection
