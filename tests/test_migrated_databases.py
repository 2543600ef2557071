"""The migrated databases the process tests start from hold every migration on disk, and only that."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from django.apps import apps
from django.db.migrations.loader import MigrationLoader

from tests.migrated_databases import (
    install_migrated_sqlite,
    migrated_postgres_database,
    migrations_digest,
)

# Slow: builds (or reuses) the templates with `manage.py migrate` in a process of its own.
pytestmark = pytest.mark.slow


def _migrations_on_disk() -> set[tuple[str, str]]:
    return set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)


def test_a_postgres_clone_has_every_migration_applied_and_is_its_own() -> None:
    with migrated_postgres_database() as first, migrated_postgres_database() as second:
        assert first != second
        with psycopg.connect(first) as conn:
            applied = set(conn.execute("SELECT app, name FROM django_migrations").fetchall())
            conn.execute(
                "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name,"
                " email, is_staff, is_active, date_joined) VALUES"
                " ('', false, 'only-here', '', '', '', false, true, now())"
            )
        with psycopg.connect(second) as conn:
            assert conn.execute("SELECT count(*) FROM auth_user").fetchone() == (0,)
    assert applied == _migrations_on_disk()


def test_a_sqlite_copy_has_every_migration_applied_and_is_its_own(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = install_migrated_sqlite(tmp_path / "a"), install_migrated_sqlite(tmp_path / "b")
    with sqlite3.connect(first) as conn:
        applied = set(conn.execute("SELECT app, name FROM django_migrations").fetchall())
        conn.execute("INSERT INTO django_content_type (app_label, model) VALUES ('x', 'y')")
    with sqlite3.connect(second) as conn:
        found = conn.execute("SELECT count(*) FROM django_content_type WHERE app_label = 'x'")
        assert found.fetchone() == (0,)
    assert applied == _migrations_on_disk()


def test_a_changed_migration_file_changes_the_digest(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "migrations").mkdir()
    migration = tmp_path / "migrations" / "0001_initial.py"
    migration.write_text("operations = []\n")
    config = SimpleNamespace(label="fake", path=str(tmp_path))
    monkeypatch.setattr(apps, "get_app_configs", lambda: [config])
    before = migrations_digest()
    assert migrations_digest() == before
    migration.write_text("operations = ['changed']\n")
    changed = migrations_digest()
    (tmp_path / "migrations" / "0002_more.py").write_text("operations = ['changed']\n")
    assert len({before, changed, migrations_digest()}) == 3
