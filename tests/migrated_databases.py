"""Databases already migrated, for the tests that run Echo in processes of their own.

Running ``manage.py migrate`` costs each of those tests a process start and
the whole migration history (seconds of CPU on a small machine, about
twenty-five times a run). Instead, the migrations run once per migration
set into a template: PostgreSQL clones it (``CREATE DATABASE ... TEMPLATE``)
and SQLite copies it (the backup API). The template's name is a digest of
every migration file of every installed app and of Django's version, so a
new migration makes a new template and an old one is never served; the
first pytest worker that needs it builds it under a lock (an advisory lock
in PostgreSQL, a file lock for SQLite) and the others wait for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import django
from django.apps import apps

from tests.server_processes import manage
from tests.services import POSTGRES_ADMIN_URL, require_service, scratch_postgres_database

TEMPLATE_PREFIX = "echo_template_"
#: pg_advisory_lock's key for building the template: any constant the suite uses for nothing else.
TEMPLATE_LOCK_KEY = 0x6563686F  # "echo"


def migrations_digest() -> str:
    """Return a short digest of every installed app's migration files and Django's version."""
    digest = hashlib.sha256(django.get_version().encode())
    for config in sorted(apps.get_app_configs(), key=lambda c: c.label):
        folder = Path(config.path) / "migrations"
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else ():
            digest.update(f"{config.label}/{path.name}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _migrate(database_url: str | None, var_dir: Path) -> None:
    """Run ``manage.py migrate`` into DATABASE_URL (or VAR_DIR's SQLite file when None)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env |= {"ECHO_ENV": "test", "ECHO_VAR_DIR": str(var_dir), "SECRET_KEY": "migrations-template"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    manage(env, "migrate", "--noinput", "-v0")


def _postgres_template() -> str:
    """Return the name of the migrated PostgreSQL template, building it if it is missing."""
    import psycopg

    name = TEMPLATE_PREFIX + migrations_digest()
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK_KEY,))
        try:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                # Templates of older migration sets are of no use to anybody.
                stale = conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s",
                    (TEMPLATE_PREFIX + "%",),
                ).fetchall()
                for (old,) in stale:
                    conn.execute(f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)')
                building = f"{name}_building"
                conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{building}"')
                with tempfile.TemporaryDirectory() as var_dir:
                    _migrate(f"{base}/{building}", Path(var_dir))
                # Published whole or not at all: a build that failed leaves no template.
                conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK_KEY,))
    return name


@contextmanager
def migrated_postgres_database() -> Iterator[str]:
    """Create a PostgreSQL database with every migration applied; yield its URL; drop it afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    with scratch_postgres_database(template=_postgres_template()) as url:
        yield url


def _sqlite_template() -> Path:
    """Return the migrated SQLite template file, building it if it is missing."""
    folder = Path(tempfile.gettempdir()) / "echo-test-templates"
    folder.mkdir(exist_ok=True)
    template = folder / f"{migrations_digest()}.sqlite3"
    with (folder / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            with tempfile.TemporaryDirectory(dir=folder) as var_dir:
                _migrate(None, Path(var_dir))
                built = Path(var_dir) / "echo.sqlite3"
                # One self-contained file (no WAL beside it), then published whole.
                _sqlite_copy(built, Path(var_dir) / "template.sqlite3")
                shutil.move(Path(var_dir) / "template.sqlite3", template)
    return template


def _sqlite_copy(source: Path, target: Path) -> None:
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def install_migrated_sqlite(var_dir: Path) -> Path:
    """Put a migrated ``echo.sqlite3`` into VAR_DIR (where Echo looks by default); return its path."""
    target = var_dir / "echo.sqlite3"
    _sqlite_copy(_sqlite_template(), target)
    return target
