"""ORM calls from the serving loop, on a few long-lived threads that keep their database connections.

Django's async ORM (``acreate``, ``afirst``...) runs each query through
``sync_to_async`` in the request's thread-sensitive context. On Echo's hot
path (``echo_site.hot_path``) that context has no thread until its first
such call, so a request that touches the database got a thread of its own
and a database connection of its own, both ended with the request: on
PostgreSQL a new server process a request. A stored ``/v1/responses``
answer cost the worker 7.5 ms of CPU and the client 16 ms, against 1.1 ms
for a chat completion (measured in-process, 2026-11-27); every key-cache
miss did the same (forty made-up keys at once, forty connections), and
Channels' ``database_sync_to_async`` closed the chat socket's connection
after each of a turn's two writes. Those calls (``client_keys``,
``responses_store``, ``key_spend``, the chat consumer) come here.

``orm_threads.run(fn, *args)`` runs FN on one of ``ECHO_ORM_THREADS``
threads (default 4, made on first use in each process; 0 under
``ECHO_ENV=test``, see ``OrmThreads.run``), whose connections
are kept from call to call, as the usage writer keeps its own
(``CONN_MAX_AGE`` governs requests' connections, not these). A connection
is dropped, so that the next call connects anew, when a call left it
broken (an error the database driver reported, or a transaction left
open); and before a call, when the server sent it something meanwhile (a
restart's goodbye: PostgreSQL ends its sessions with a message), or when
it sat idle longer than ``IDLE_CHECK_SECONDS`` and fails a liveness check
(``SELECT 1``: a server gone without a word). A connection that breaks
during a call fails that call, as a request's own connection would.
"""

from __future__ import annotations

import asyncio
import functools
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

T = TypeVar("T")

#: A kept connection idle this long is checked (PostgreSQL: ``SELECT 1``) before its next use.
IDLE_CHECK_SECONDS = 5.0


def drop_if_broken(connection: BaseDatabaseWrapper) -> None:
    """Close CONNECTION if an error left it unusable; a working one is kept, whatever its age.

    ``close_if_unusable_or_obsolete`` would also close it for its age, which
    with ``CONN_MAX_AGE=0`` is every call: a new connection (TCP, auth, a
    server process) each time. A connection inside a transaction (a test's) is left alone.
    """
    if connection.in_atomic_block or connection.connection is None:
        return
    if connection.get_autocommit() != connection.settings_dict["AUTOCOMMIT"] or (
        connection.errors_occurred and not connection.is_usable()
    ):
        connection.close()
    else:
        connection.errors_occurred = False


def _server_spoke(connection: BaseDatabaseWrapper) -> bool:
    """Return whether the server sent something to CONNECTION between two calls: its goodbye.

    An idle PostgreSQL connection has nothing to read unless the server is
    ending it (a restart, an administrator's ``pg_terminate_backend``) or
    sent a notice: either way a new connection is the safe next step. One
    ``select`` with no wait, no round trip; a connection with no socket
    (SQLite's) never says so.
    """
    fileno = getattr(connection.connection, "fileno", None)
    if fileno is None:
        return False
    try:
        readable, _, _ = select.select([fileno()], [], [], 0)
    except (OSError, ValueError):  # a socket already closed
        return True
    return bool(readable)


class OrmThreads:
    """SIZE threads for ORM calls from async code, each keeping its connection (0: none, see ``run``)."""

    def __init__(self, size: Callable[[], int] = lambda: settings.ECHO_ORM_THREADS) -> None:
        self._size = size
        self._executor: ThreadPoolExecutor | None = None
        self._made_for: tuple[int, int] = (0, 0)  # (process id, size) of the executor
        self._lock = threading.Lock()
        self._local = threading.local()  # each thread's last use of its connection
        self._kept: set[BaseDatabaseWrapper] = set()  # the threads' connections, closed at shutdown

    def _pool(self, size: int) -> ThreadPoolExecutor:
        # Made per process (a forked worker inherits no threads, only the parent's
        # object) and made again when the size changes (a test's override).
        made_for = (os.getpid(), size)
        if self._executor is None or self._made_for != made_for:
            with self._lock:
                if self._executor is None or self._made_for != made_for:
                    if self._executor is not None and self._made_for[0] == made_for[0]:
                        self._executor.shutdown(wait=False)
                    self._executor = ThreadPoolExecutor(
                        max_workers=size, thread_name_prefix="echo-orm"
                    )
                    self._made_for = made_for
        return self._executor

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Return FN(*ARGS, **KWARGS), called on one of the threads with its kept connection.

        Cancelling the caller does not stop a call already running (as with
        ``sync_to_async``): a write goes on to its end. With a size of 0 FN
        runs as Django's async ORM runs a query (``sync_to_async``, in the
        caller's thread-sensitive context): the test setting, where a test's
        transaction is seen by its own connection only.
        """
        size = self._size()
        if size == 0:
            return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)
        call = functools.partial(self._call, fn, args, kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool(size), call)

    def _call(self, fn: Callable[..., T], args: tuple, kwargs: dict[str, Any]) -> T:
        from django.db import DEFAULT_DB_ALIAS, connections

        connection = connections[DEFAULT_DB_ALIAS]
        self._kept.add(connection)
        # What a call leaves broken is dropped as it ends (below); before one, only
        # what the server did meanwhile is left to find out.
        if connection.connection is not None and (
            _server_spoke(connection) or (self._idle_long() and not connection.is_usable())
        ):
            connection.close()
        try:
            return fn(*args, **kwargs)
        finally:
            self._local.last_used = time.monotonic()
            drop_if_broken(connection)

    def _idle_long(self) -> bool:
        """Whether this thread's connection has been idle longer than ``IDLE_CHECK_SECONDS``."""
        last_used = getattr(self._local, "last_used", None)
        return last_used is not None and time.monotonic() - last_used > IDLE_CHECK_SECONDS

    def shutdown(self) -> None:
        """Let the threads finish their calls and end, and close their connections; the next call makes new ones.

        Called when the process stops serving (``lifecycle``): the database
        sees each session end, rather than a connection dropped at exit.
        """
        from django.db import DatabaseError

        with self._lock:
            executor, self._executor = self._executor, None
            self._made_for = (0, 0)
        if executor is not None:
            executor.shutdown(wait=True)
        kept, self._kept = self._kept, set()
        for connection in kept:
            # Its thread has ended or is idle for good: closing it from here is safe.
            connection.inc_thread_sharing()
            try:
                connection.close()
            except DatabaseError:
                pass  # already broken: closed all the same
            finally:
                connection.dec_thread_sharing()


#: The process's ORM threads.
orm_threads = OrmThreads()
