"""The suite's own PostgreSQL database: one per run, named after its process, dropped after it.

pytest-django creates ``test_<NAME>``: two runs at once (two terminals, two
checkouts) would share it and drop it under each other. Each run's is
``test_<NAME>_<pid>`` instead. At the end, connections that server threads
left open are ended, so that pytest-django can drop it (PostgreSQL refuses to
drop a database in use, and pytest-django then only warns). A run killed
before its end leaves its database behind; the next run against this
machine's server drops those whose process is gone.
"""

from __future__ import annotations

import os
import re
import weakref
from typing import Any

import pytest

from tests.services import reachable

POSTGRESQL = "django.db.backends.postgresql"
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def prepare(database: dict[str, Any], db_blocker: Any, *, in_ci: bool) -> None:
    """Give this run a test database of its own on DATABASE's server, or stop the run saying why not.

    There is no fallback to SQLite: a run on it is one that asked for it with
    DATABASE_URL, and never one under CI.
    """
    if database["ENGINE"] != POSTGRESQL:
        if in_ci:
            pytest.exit(
                f"CI runs the suite on PostgreSQL; DATABASE_URL names {database['ENGINE']}.",
                returncode=pytest.ExitCode.USAGE_ERROR,
            )
        return
    host, port = database["HOST"] or "localhost", int(database["PORT"] or 5432)
    on_socket = host.startswith("/")
    if not on_socket and not reachable(host, port):
        pytest.exit(
            f"PostgreSQL is not reachable on {host}:{port}, and the suite runs on it:"
            " start it (.ci/run shows how) or name another server with DATABASE_URL.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
    test = database.setdefault("TEST", {})
    shared = test.get("NAME") or f"test_{database['NAME']}"
    test["NAME"] = f"{shared}_{os.getpid()}"
    if on_socket or host in LOOPBACK:  # process ids mean something only on this machine
        with db_blocker.unblock():
            _drop_abandoned(shared)
    flush_with_delete()


def _drop_abandoned(shared: str) -> None:
    """Drop the databases SHARED_<pid> whose process no longer runs."""
    from django.db import connection

    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database")
        for (name,) in cursor.fetchall():
            found = re.fullmatch(re.escape(shared) + r"_(\d+)", name)
            if found and not _running(int(found[1])):
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def release(db_blocker: Any) -> None:
    """End every other connection to this run's test database, so that it can be dropped."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with db_blocker.unblock(), connection._nodb_cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [connection.settings_dict["NAME"]],
        )


#: Tables the migrations fill and no test changes: a flush leaves them as they are.
KEPT_TABLES = frozenset({"django_content_type", "auth_permission"})


def flush_with_delete() -> None:
    """Empty the tables after a transactional test with DELETE, keeping the content types.

    Django's flush after each transactional test runs PostgreSQL's TRUNCATE,
    which gives every table and index a new file, then sends ``post_migrate``
    to make again the content types and permissions it emptied. Measured here
    on 40 empty tests: 125 ms a flush (80 of the server's CPU), 60 once
    DELETE replaced TRUNCATE, of which 50 were that signal's queries; the
    suite flushes after each of its hundreds of transactional tests. So the
    flush deletes the rows of every table but ``KEPT_TABLES``, which no test
    changes, and the signal is not sent: its only receivers make those
    tables' rows, and this asserts that it has no other. The foreign keys
    Django makes are ``DEFERRABLE INITIALLY DEFERRED`` and the flush runs in
    one transaction, so the order of the tables does not matter. A flush
    asked to reset the sequences truncates (the same tables).
    """
    from django.contrib.auth.management import create_permissions
    from django.contrib.contenttypes.management import create_contenttypes
    from django.core.management.commands import flush
    from django.db.backends.postgresql.operations import DatabaseOperations
    from django.db.models.signals import post_migrate

    if getattr(DatabaseOperations.sql_flush, "deletes", False):
        return  # installed already: wrapping it again would make it call itself
    # A receiver is kept as a weak reference unless it was connected with weak=False.
    receivers = {
        entry[1]() if isinstance(entry[1], weakref.ReferenceType) else entry[1]
        for entry in post_migrate.receivers
    }
    if receivers != {create_permissions, create_contenttypes}:
        raise AssertionError(
            f"post_migrate has receivers a kept table would not serve: {receivers}"
        )
    truncate = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        emptied = [table for table in tables if table not in KEPT_TABLES]
        if reset_sequences:
            return truncate(self, style, emptied, reset_sequences=True, allow_cascade=allow_cascade)
        delete = style.SQL_KEYWORD("DELETE FROM")
        return [f"{delete} {self.quote_name(table)};" for table in emptied]

    def no_post_migrate(*args, **kwargs) -> None:
        """The tables its receivers fill were kept."""

    sql_flush.deletes = True  # type: ignore[attr-defined]
    DatabaseOperations.sql_flush = sql_flush
    flush.emit_post_migrate_signal = no_post_migrate
