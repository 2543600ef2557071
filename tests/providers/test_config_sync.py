"""Every worker serves the database's revision: by message, after its own save, by repair.

The in-memory channel layer stands in for Redis here (the multi-process
tests use the real one): messages are handed to ``config_sync`` as the
listener would, saves run through the real signal and ``on_commit`` hook,
and the repair pass reads the real database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from providers.models import ProviderConfig
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import broadcast, config_sync
from providers.runtime import process as runtime
from tests.conftest import LiveEcho
from tests.echo_site.test_settings import settings_of
from tests.serving_loop_thread import serving_loop_thread

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def serving_loop():
    with serving_loop_thread() as loop:
        yield loop


def on_loop(func, *args: Any) -> Any:
    """Run FUNC(*ARGS) on the serving loop, as the listener and the repair task do."""
    return runtime.run_in_serving_loop(func, *args, timeout=20)


async def message(name: str, revision: int | None, force: bool = False) -> None:
    await config_sync.handle_message(
        {"type": broadcast.EVENT_TYPE, "name": name, "revision": revision, "force": force}
    )


def prefix(name: str = "echo") -> str:
    return runtime.registry.get(name).config["prefix"]


def generation(name: str = "echo") -> int:
    return runtime.registry.status(name)["generation"]


def sql_update(name: str = "echo", **fields: Any) -> None:
    """Change the row behind the ORM's back: no signal, no message (a script, a restore)."""
    ProviderConfig.objects.filter(name=name).update(**fields)


def database_revision(name: str = "echo") -> int:
    return ProviderConfig.objects.get(name=name).revision


def wait_until(predicate, timeout: float) -> float:
    """Return how long PREDICATE took to hold; fail after TIMEOUT seconds."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "not converged in time"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def echo_row(serving_loop) -> ProviderConfig:
    """The echo provider saved through the signal: applied here at revision 1."""
    row = ProviderConfig.objects.create(name="echo", plugin="echo", settings={"prefix": "r1: "})
    assert prefix() == "r1: "
    assert config_sync.served_revision("echo") == row.revision == 1
    return row


# --- messages -------------------------------------------------------------


def test_duplicate_out_of_order_and_stale_messages_do_nothing(echo_row) -> None:
    sql_update(revision=3, settings={"prefix": "r3: "})
    on_loop(message, "echo", 3)
    assert (prefix(), config_sync.served_revision("echo")) == ("r3: ", 3)
    applied = generation()

    on_loop(message, "echo", 3)  # duplicate
    on_loop(message, "echo", 2)  # late, out of order
    on_loop(message, "echo", 1)  # stale
    assert generation() == applied

    # Not even read: the row changed without a new revision, and a message
    # that is not news does not look (the repair pass will).
    sql_update(settings={"prefix": "unannounced: "})
    on_loop(message, "echo", 3)
    assert (prefix(), generation()) == ("r3: ", applied)
    on_loop(config_sync.repair_all)
    assert prefix() == "unannounced: "


def test_a_message_never_applies_its_own_content_only_the_row(echo_row) -> None:
    sql_update(revision=5, settings={"prefix": "r5: "})
    on_loop(message, "echo", 2)  # older than the row: the row, read fresh, is applied
    assert (prefix(), config_sync.served_revision("echo")) == ("r5: ", 5)


def test_a_late_read_never_applies_over_a_newer_one(echo_row, monkeypatch) -> None:
    """The issue's stranded worker: a listener's read older than this worker's own save.

    The listener reads revision 2 and is slow to apply it; meanwhile this
    worker commits revision 3 and applies it. Without the per-provider lock
    the listener's older read lands last and stays.
    """
    sql_update(revision=2, settings={"prefix": "r2: "})
    original = config_sync._apply_row
    calls = []
    first_read: asyncio.Event | None = None

    async def slow_first_apply(name: str, row: Any, *, force: bool) -> str | None:
        calls.append(row.revision)
        if len(calls) == 1:
            first_read.set()
            await asyncio.sleep(0.3)
        return await original(name, row, force=force)

    monkeypatch.setattr(config_sync, "_apply_row", slow_first_apply)

    async def race() -> None:
        nonlocal first_read
        first_read = asyncio.Event()
        listener = asyncio.create_task(message("echo", 2))
        await first_read.wait()
        await sync_to_async(sql_update)(revision=3, settings={"prefix": "r3: "})
        await config_sync.sync_provider("echo")  # this worker's own after-commit apply
        await listener

    on_loop(race)
    assert calls == [2, 3]
    assert (prefix(), config_sync.served_revision("echo")) == ("r3: ", 3)
    assert len(runtime.config_sync_state.locks) == 0  # a lock lives only while it is used


def test_messages_about_unknown_providers_leave_nothing_behind(serving_loop) -> None:
    for number in range(50):
        on_loop(message, f"ghost-{number}", number)
    assert len(runtime.config_sync_state.locks) == 0
    assert config_sync.served_revision("ghost-1") is None
    assert runtime.registry.names() == []


def test_a_forced_message_rebuilds_the_served_revision(echo_row) -> None:
    applied = generation()
    on_loop(message, "echo", 1, True)
    assert generation() == applied + 1
    assert config_sync.request_reload_everywhere("echo") is None
    assert generation() == applied + 2


# --- the saving worker ----------------------------------------------------


@pytest.fixture
def admin_headers(admin_key) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


def patch_prefix(client, headers: dict[str, str], value: str):
    return client.patch(
        "/api/providers/echo/",
        data=json.dumps({"settings": {"prefix": value}}),
        content_type="application/json",
        **headers,
    )


def test_a_save_applies_here_before_the_response_returns(echo_row, client, admin_headers) -> None:
    response = patch_prefix(client, admin_headers, "saved: ")
    assert response.status_code == 200, response.content
    # No waiting: the response left after this worker applied the committed row.
    assert prefix() == "saved: "
    assert config_sync.served_revision("echo") == database_revision() > 1


def test_after_commit_failures_are_logged_not_raised_and_repaired(
    echo_row, client, admin_headers, monkeypatch, caplog
) -> None:
    def stuck(*args: Any, **kwargs: Any) -> Any:
        raise TimeoutError  # the serving loop did not answer in time

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("redis is away")

    monkeypatch.setattr(runtime, "run_in_serving_loop", stuck)
    monkeypatch.setattr(broadcast, "publish_provider_changed", unreachable)
    with caplog.at_level(logging.ERROR):
        response = patch_prefix(client, admin_headers, "committed: ")
    assert response.status_code == 200, response.content
    assert ProviderConfig.objects.get(name="echo").settings["prefix"] == "committed: "
    assert "the committed change was not applied here" in caplog.text
    assert "could not be broadcast" in caplog.text
    assert prefix() == "r1: "  # not yet: the repair pass brings it

    monkeypatch.undo()
    on_loop(config_sync.repair_all)
    assert prefix() == "committed: "
    assert config_sync.served_revision("echo") == database_revision()


def test_an_after_commit_hook_that_raises_does_not_fail_the_committed_request(
    echo_row, client, admin_headers, monkeypatch
) -> None:
    def broken(name: str) -> None:
        raise RuntimeError("a bug after commit")

    monkeypatch.setattr(config_sync, "after_commit", broken)
    response = patch_prefix(client, admin_headers, "committed: ")
    assert response.status_code == 200, response.content
    monkeypatch.undo()
    on_loop(config_sync.repair_all)
    assert prefix() == "committed: "


# --- the repair pass ------------------------------------------------------


def test_the_repair_pass_applies_what_differs_and_only_that(echo_row) -> None:
    ProviderConfig.objects.bulk_create(  # no signal: a row this worker never heard of
        [ProviderConfig(name="other", plugin="echo", settings={"prefix": "new: "})]
    )
    applied = generation()
    on_loop(config_sync.repair_all)
    assert prefix("other") == "new: "
    assert generation() == applied  # echo was in step: not rebuilt

    sql_update(revision=1, settings={"prefix": "same revision, new content: "})
    on_loop(config_sync.repair_all)
    assert prefix() == "same revision, new content: "

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM providers_providerconfig")
    on_loop(config_sync.repair_all)
    assert runtime.registry.names() == []
    assert config_sync.served_revision("echo") is None


@pytest.mark.slow
def test_the_repair_pass_restores_a_provider_the_registry_lost(echo_row) -> None:
    on_loop(runtime.registry.unregister, "echo")
    on_loop(config_sync.repair_all)
    assert prefix() == "r1: "


@pytest.fixture
def repairing_echo(settings, transactional_db):
    """Echo served by uvicorn in this process, its repair pass every second."""
    settings.ECHO_CONFIG_REPAIR_SECONDS = 1
    ProviderConfig.objects.bulk_create(
        [ProviderConfig(name="echo", plugin="echo", settings={"prefix": "r1: "}, revision=4)]
    )
    server = LiveEcho().start()
    try:
        wait_until(lambda: "echo" in runtime.registry, timeout=5)
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_sql_updates_and_restores_converge_within_the_repair_interval(repairing_echo) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE providers_providerconfig SET settings = %s, revision = revision + 1"
            " WHERE name = %s",
            [json.dumps({"prefix": "raw sql: "}), "echo"],
        )
    # The new instance serves first, then its revision is noted: wait for both.
    assert (
        wait_until(
            lambda: prefix() == "raw sql: " and config_sync.served_revision("echo") == 5,
            timeout=2.5,
        )
        <= 2.5
    )

    # A restore: the backup's older revision and content come back.
    sql_update(revision=2, settings={"prefix": "restored: "})
    wait_until(
        lambda: prefix() == "restored: " and config_sync.served_revision("echo") == 2,
        timeout=2.5,
    )


@pytest.mark.slow
def test_a_deleted_row_disappears_within_the_repair_interval(repairing_echo) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM providers_providerconfig WHERE name = %s", ["echo"])
    wait_until(lambda: "echo" not in runtime.registry, timeout=2.5)


# --- start-up and settings ------------------------------------------------


class BrokenSchemaProvider(EchoProvider):
    def get_config_schema(self) -> dict[str, Any]:
        raise KeyError("properties")


class LeakyProvider(EchoProvider):
    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        raise ValueError(f"cannot use {config['api_key']}")


def test_a_plugin_bug_does_not_stop_the_other_providers_loading() -> None:
    runtime.registry.register(BrokenSchemaProvider, "broken_schema")
    runtime.registry.register(LeakyProvider, "leaky")
    leaky = ProviderConfig(name="bbb-leaky", plugin="leaky")
    leaky.secrets = {"api_key": "sk-leak-0123456789abcdef"}
    ProviderConfig.objects.bulk_create(
        [
            ProviderConfig(name="aaa-broken", plugin="broken_schema"),
            leaky,
            ProviderConfig(name="echo", plugin="echo", settings={"prefix": "up: "}),
        ]
    )
    results = runtime.run_in_serving_loop(runtime.load_all_from_database)
    assert results["echo"] is None and prefix() == "up: "
    assert "KeyError" in results["aaa-broken"]
    assert "ValueError" in results["bbb-leaky"]
    assert "0123456789" not in results["bbb-leaky"]
    assert runtime.registry.names() == ["echo"]


def test_the_repair_interval_is_at_least_one_second(tmp_path) -> None:
    result = settings_of(tmp_path, ECHO_CONFIG_REPAIR_SECONDS="0")
    assert result.returncode != 0
    assert "ECHO_CONFIG_REPAIR_SECONDS must be at least 1." in result.stderr


def test_apply_config_state_never_raises_and_masks_what_escapes_the_registry(
    monkeypatch, caplog
) -> None:
    from providers.runtime.registry import ProviderSpec

    secret = "sk-escape-0123456789abcdef"

    async def registry_bug(spec: ProviderSpec) -> None:
        raise RuntimeError(f"unexpected state while using {spec.config['api_key']}")

    monkeypatch.setattr(runtime.registry, "apply", registry_bug)
    spec = ProviderSpec(name="echo", plugin="echo", config={"api_key": secret})
    with caplog.at_level(logging.ERROR):
        error = runtime.run_in_serving_loop(runtime.apply_config_state, "echo", spec, "")
    assert error is not None and error.startswith("RuntimeError: unexpected state")
    assert "0123456789" not in error
    assert "0123456789" not in caplog.text
    assert "echo was not (re)loaded" in caplog.text
