"""Shared fixtures: a clean provider runtime per test, and the usual personas."""

from __future__ import annotations

import os

import pytest

from providers.runtime import process as runtime

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(autouse=True)
def clean_runtime():
    """Give every test a runtime of its own: a registry with only the built-in plugins.

    Everything else starts afresh with it: the circuit breakers, the health
    results, the usage queue, the metric labels, the model lists, what
    configuration is served, the verified keys, and no serving loop. The
    process's runtime is put back after the test.
    """
    with runtime.installed(runtime.build_runtime()) as fresh:
        yield fresh


@pytest.fixture(autouse=True)
def access_lines_written():
    """Write the access-log lines a test's requests left waiting (``echo_site.access_log``) at its end.

    In its own captured output, not in a later test's or at the process's exit.
    """
    yield
    from echo_site import access_log

    access_log.flush()


@pytest.fixture
def serving_loop():
    """Run a serving loop in a thread, as a worker has: committed saves start providers on it.

    A process with no serving loop (a management command, a plain test) starts
    no provider for a save; it only tells the workers.
    """
    from tests.serving_loop_thread import serving_loop_thread

    with serving_loop_thread() as loop:
        yield loop


@pytest.fixture
def admin_user(django_user_model):
    """A superuser, as the admin at 2 a.m. is."""
    return django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")


@pytest.fixture
def echo_config(db):
    """The echo provider configured as the default, as `make run` leaves it."""
    from providers.config.services import provider_config_create

    return provider_config_create(
        name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
    )


class LiveEcho:
    """Echo served over real HTTP by uvicorn in a thread of the test process."""

    def __init__(self) -> None:
        import threading

        import uvicorn

        from echo_site.asgi import application

        config = uvicorn.Config(
            application,
            host="127.0.0.1",
            port=0,
            lifespan="on",
            ws="websockets-sansio",  # as `make run` serves
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-echo", daemon=True)

    def start(self) -> LiveEcho:
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live Echo server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_echo(transactional_db):
    """Start Echo on a free loopback port; yield it (``.url``); stop it after the test.

    Create the provider rows before asking for this fixture (they load at
    start-up), or after it: saves reach the running server through the signal.
    """
    server = LiveEcho().start()
    yield server
    server.stop()


@pytest.fixture
def chat_key(db):
    """A chat-scoped client key: (row, raw key)."""
    from plugins_api.access.client_keys import forget_cached_keys
    from plugins_api.access.key_changes import client_key_issue

    forget_cached_keys()
    return client_key_issue(name="test-chat", scope="chat")


@pytest.fixture
def admin_key(db):
    """An admin-scoped client key: (row, raw key)."""
    from plugins_api.access.client_keys import forget_cached_keys
    from plugins_api.access.key_changes import client_key_issue

    forget_cached_keys()
    return client_key_issue(name="test-admin", scope="admin")


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, django_db_blocker):
    """Give this run a PostgreSQL test database of its own (see tests/suite_database.py)."""
    from django.conf import settings

    from tests import suite_database

    suite_database.prepare(settings.DATABASES["default"], django_db_blocker, in_ci=IN_CI)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker, django_db_keepdb):
    """pytest-django's test database; what server threads left connected is ended before the drop."""
    yield
    if not django_db_keepdb:
        from tests import suite_database

        suite_database.release(django_db_blocker)


@pytest.fixture(autouse=True, scope="session")
def fast_password_hashing():
    """Hash the tests' passwords with MD5: PBKDF2's 0.2 s a hash guards real logins, here it only waits."""
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the slow tests (servers, browsers, fuzzers) first, each file's tests kept together.

    With ``--dist loadfile --no-loadscope-reorder`` (the Makefile's) the run then
    ends on short files rather than on one worker finishing a fuzzer alone while
    the others idle.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
