"""The suite's own database: how a committing test's tables are emptied (tests/suite_database.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connection

from plugins_api.access.key_changes import client_key_issue
from providers.config.services import provider_config_create, provider_config_update
from providers.models import ProviderConfig
from tests.suite_database import KEPT_TABLES, flush_with_delete


@pytest.fixture
def on_postgresql(transactional_db) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the flush is changed on PostgreSQL only (DATABASE_URL names another database)")


def test_a_flush_deletes_every_row_but_the_kept_tables_and_never_truncates(
    on_postgresql, admin_user
) -> None:
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    statements = connection.ops.sql_flush(no_style(), tables)
    assert statements and all(s.startswith("DELETE FROM ") for s in statements), statements
    assert not any(table in s for s in statements for table in KEPT_TABLES)
    # Installed once: a second call leaves it as it is (wrapping it again would recurse).
    flush_with_delete()
    assert connection.ops.sql_flush(no_style(), tables) == statements
    # Asked to reset the sequences, it truncates the same tables.
    reset = connection.ops.sql_flush(no_style(), tables, reset_sequences=True)
    assert len(reset) == 1 and reset[0].startswith("TRUNCATE") and "RESTART IDENTITY" in reset[0]
    assert not any(table in reset[0] for table in KEPT_TABLES)


def test_rows_that_refer_to_each_other_are_all_gone_after_a_flush(
    on_postgresql, admin_user
) -> None:
    # Rows with foreign keys between them, in both directions of the table order:
    # a provider, its change (which points at it), a key and its own change row.
    config = provider_config_create(name="echo", plugin="echo", settings={}, is_default=True)
    provider_config_update(config=config, changes={"settings": {"prefix": "Hi: "}})
    client_key_issue(name="flushed", scope="chat")
    kinds, permissions = ContentType.objects.count(), Permission.objects.count()
    assert kinds and permissions

    call_command("flush", verbosity=0, interactive=False)

    assert not ProviderConfig.objects.exists()
    assert not type(admin_user).objects.exists()
    with connection.cursor() as cursor:
        for table in connection.introspection.django_table_names(only_existing=True):
            cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(table)}")
            left = cursor.fetchone()[0]
            assert (left > 0) == (table in KEPT_TABLES), (table, left)
    # Kept as the migrations made them: no post_migrate was needed to make them again.
    assert (ContentType.objects.count(), Permission.objects.count()) == (kinds, permissions)
