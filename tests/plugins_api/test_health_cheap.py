"""``GET /health`` is cheap: answered from memory on the event loop, no query, no thread hop.

Requests go through the ASGI application as served (``RequestBodyLimit``
around ``HotPath``), while a serving loop runs in a thread, as in a worker.
Providers change through the services, whose commit hook applies the change
on that loop; the repair pass (``config_sync.repair_all``) stands for a
worker that has read its whole configuration (start-up does the same).

Queries are counted at Django's cursor, on every connection of every thread:
a query run by the view in a thread would use that thread's connection,
which ``CaptureQueriesContext`` on the test's own connection does not see.
Thread hops are counted at ``SyncToAsync.__call__``, as the hot path's
tests do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from django.db.backends.utils import CursorWrapper
from django.test import RequestFactory

from plugins_api.admin_api.plugin_views import HealthView
from providers.config.services import (
    provider_config_create,
    provider_config_delete,
    provider_config_update,
)
from providers.health import status as health
from providers.models import HealthCheck, ProviderConfig
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import config_sync
from providers.runtime import process as runtime
from providers.secrets.box import new_key
from providers.types import HealthStatus
from tests.conftest import LiveEcho
from tests.echo_site.test_hot_path import HOT, Answer, serve_async
from tests.plugins_api.test_plugin_views import SECRET, SecuretestProvider

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every SQL statement run from now on, on any connection, in any thread."""
    seen: list[str] = []
    real = CursorWrapper._execute_with_wrappers

    def counted(self: CursorWrapper, sql: Any, params: Any, many: bool, executor: Any) -> Any:
        seen.append(str(sql))
        return real(self, sql, params, many, executor)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counted)
    return seen


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call from async code into a thread (``sync_to_async``) from now on."""
    seen: list[str] = []
    real_call = SyncToAsync.__call__

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Not repr(): a queryset's would run its query, here on the loop.
        seen.append(getattr(self.func, "__qualname__", None) or type(self.func).__name__)
        return await real_call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    return seen


def get(
    path: str = "/health", headers: dict[str, str] | None = None, method: str = "GET"
) -> Answer:
    """Send one request through the ASGI application as served; return its answer."""
    return async_to_sync(serve_async)(HOT, path, b"", headers or {}, method)


def on_loop(func: Any, *args: Any) -> Any:
    """Run FUNC(*ARGS) on the serving loop, as the repair task and the listener do."""
    return runtime.run_in_serving_loop(func, *args, timeout=20)


def read_configuration() -> None:
    """Have this worker read every row, as its start-up and each repair pass do."""
    on_loop(config_sync.repair_all)
    assert config_sync.enabled_providers() is not None


class Unwell(EchoProvider):
    """Echo whose upstream is always down."""

    async def health_check(self) -> HealthStatus:
        return HealthStatus(available=False, error="the upstream is down")


@pytest.fixture
def securetest(serving_loop) -> None:
    """The securetest plugin (an API key, switches to fail) and unwell in this worker's registry."""
    runtime.registry.register(SecuretestProvider, "securetest")
    runtime.registry.register(Unwell, "unwell")


def create_secure(name: str = "secure", **settings: Any) -> ProviderConfig:
    return provider_config_create(
        name=name,
        plugin="securetest",
        settings={"timeout": 10, **settings},
        secrets={"api_key": SECRET},
    )


@pytest.fixture
def warm(securetest) -> ProviderConfig:
    """Echo and one securetest provider, saved through the services, read, and probed once."""
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "Echo: "})
    secure = create_secure()
    read_configuration()
    first = get()
    assert first.status == 200, first.body
    assert first.json() == {"status": "ok", "providers": {"echo": True, "secure": True}}
    return secure


# --- no query, no thread hop --------------------------------------------------


def test_a_warm_health_runs_no_query_and_no_thread_hop(warm, queries, hops):
    answer = get()

    assert answer.status == 200, answer.body
    assert answer.body == b'{"status":"ok","providers":{"echo":true,"secure":true}}'
    assert answer.header(b"content-type") == b"application/json"
    assert queries == []
    assert hops == [], f"thread hops on /health: {hops}"


def test_the_counters_see_the_query_of_a_worker_that_has_not_read_its_configuration(
    securetest, queries, hops
):
    """Before start-up or a repair pass, the enabled providers come from one query."""
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "Echo: "})
    assert config_sync.enabled_providers() is None
    queries.clear()

    answer = get()

    assert answer.json() == {"status": "ok", "providers": {"echo": True}}
    assert len([sql for sql in queries if "provider" in sql.lower()]) == 1, queries
    assert hops, "the query ran in a thread, which the hop counter must see"


def test_a_needed_probe_runs_on_the_loop_once_for_every_concurrent_caller(
    securetest, queries, hops, monkeypatch
):
    calls: list[str] = []

    async def slow(self: SecuretestProvider) -> HealthStatus:
        calls.append(self.name)
        await asyncio.sleep(0.2)  # long enough for every caller to arrive while it runs
        return HealthStatus(available=True)

    monkeypatch.setattr(SecuretestProvider, "health_check", slow)
    create_secure()
    read_configuration()
    queries.clear()
    hops.clear()

    async def crowd() -> list[Answer]:
        return await asyncio.gather(
            *(serve_async(HOT, "/health", b"", {}, "GET") for _ in range(20))
        )

    answers = async_to_sync(crowd)()
    again = get()  # within PUBLIC_CACHE_SECONDS: the probe's result is reused

    assert {a.status for a in [*answers, again]} == {200}
    assert {a.body for a in [*answers, again]} == {b'{"status":"ok","providers":{"secure":true}}'}
    assert calls == ["secure"]
    assert queries == []
    assert hops == [], f"thread hops on /health: {hops}"


# --- the enabled set follows the configuration ---------------------------------


def test_health_follows_changes_made_through_the_services(warm, queries):
    def providers() -> dict[str, bool]:
        """Return what /health reports now; it must run no query for it."""
        queries.clear()  # the services' own queries ran just before
        answer = get()
        assert queries == []
        return answer.json()["providers"]

    provider_config_create(name="second", plugin="echo")
    assert providers() == {"echo": True, "second": True, "secure": True}

    provider_config_update(config=warm, changes={"enabled": False})
    assert providers() == {"echo": True, "second": True}  # disabled on purpose: not reported

    secure = ProviderConfig.objects.get(name="secure")
    provider_config_update(config=secure, changes={"enabled": True})
    assert providers() == {"echo": True, "second": True, "secure": True}

    provider_config_delete(config=ProviderConfig.objects.get(name="second"))
    assert providers() == {"echo": True, "secure": True}


def test_a_change_behind_the_services_back_shows_after_the_repair_pass(warm):
    ProviderConfig.objects.filter(name="secure").update(enabled=False, revision=99)
    assert "secure" in get().json()["providers"]  # not read yet: what this worker knows

    on_loop(config_sync.repair_all)

    assert get().json() == {"status": "ok", "providers": {"echo": True}}


def test_a_change_from_another_worker_shows_on_its_message(warm):
    row = ProviderConfig.objects.get(name="secure")
    ProviderConfig.objects.filter(name="secure").update(enabled=False, revision=row.revision + 1)

    on_loop(config_sync.handle_message, {"name": "secure", "revision": row.revision + 1})

    assert get().json() == {"status": "ok", "providers": {"echo": True}}


def test_an_enabled_provider_whose_secrets_cannot_be_decrypted_shows_false(warm, settings):
    settings.ECHO_ENCRYPTION_KEYS = [new_key()]  # the key the secrets were sealed with is gone
    on_loop(runtime.load_all_from_database)  # what a restarted worker does
    assert "secure" not in runtime.registry

    answer = get()

    assert answer.status == 200
    assert answer.json() == {"status": "degraded", "providers": {"echo": True, "secure": False}}
    assert SECRET.encode() not in answer.body


def test_503_when_every_provider_is_down(securetest, settings):
    provider_config_create(name="sick", plugin="unwell")
    create_secure(name="locked")
    settings.ECHO_ENCRYPTION_KEYS = [new_key()]
    on_loop(runtime.load_all_from_database)  # "locked" cannot load; "sick" is live but down
    assert runtime.registry.names() == ["sick"]

    answer = get()

    assert answer.status == 503, answer.body
    assert answer.json() == {"status": "down", "providers": {"locked": False, "sick": False}}
    assert not HealthCheck.objects.exists()  # load-balancer probes are not recorded


def test_503_when_nothing_is_configured(serving_loop):
    read_configuration()
    answer = get()
    assert answer.status == 503
    assert answer.json() == {"status": "down", "providers": {}}


# --- methods ---------------------------------------------------------------------


def test_head_answers_like_get(warm, queries, hops):
    answer = get(method="HEAD")

    assert answer.status == 200
    assert answer.header(b"content-type") == b"application/json"
    assert queries == [] and hops == []


def test_other_methods_are_refused_and_change_nothing(warm):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = async_to_sync(serve_async)(HOT, "/health", b"{}", {}, method)
        assert answer.status == 405, method
        assert answer.header(b"allow") == b"GET, HEAD"
    assert ProviderConfig.objects.get(name="secure").enabled is True
    assert get().json()["status"] == "ok"


# --- hostile callers ---------------------------------------------------------------


HOSTILE_HEADERS = [
    {"Authorization": "Bearer " + "x" * 60_000},
    {"Authorization": "Basic " + "\u00e9\u00ff" * 1000},
    {"Authorization": "Bearer"},
    {"Authorization": "garbage garbage garbage"},
    {"x-api-key": "k" * 20_000},
    {"Cookie": "sessionid=" + "s" * 4000 + "; csrftoken=bad"},
]
HOSTILE_QUERIES = [
    "?" + "a=1&" * 20_000,
    "?refresh=1&timeout=-1&max_age=1e309",
    "?providers[0][name]=x&status=ok",
    "?" + "%7B" * 5000,
    "?%ff%fe=%c0%af",
]


@pytest.mark.parametrize("headers", HOSTILE_HEADERS, ids=lambda h: next(iter(h)))
def test_a_hostile_header_changes_nothing(warm, headers, queries):
    answer = get(headers=headers)

    assert answer.status == 200, answer.body
    assert answer.json() == {"status": "ok", "providers": {"echo": True, "secure": True}}
    assert answer.header(b"set-cookie") is None
    assert queries == []  # not even a key lookup


@pytest.mark.parametrize("query", HOSTILE_QUERIES, ids=range(len(HOSTILE_QUERIES)))
def test_a_hostile_query_string_changes_nothing(warm, query, queries):
    answer = get("/health" + query)

    assert answer.status == 200, answer.body[:200]
    assert answer.json() == {"status": "ok", "providers": {"echo": True, "secure": True}}
    assert queries == []
    assert not HealthCheck.objects.exists()


def test_a_nul_in_the_query_is_refused_naming_the_parameter(warm):
    answer = get("/health?probe=%00", headers={"Accept": "application/json"})

    assert answer.status == 400
    assert answer.json()["error"]["field"] == "probe"
    assert get().json()["status"] == "ok"


def test_a_hostile_header_on_a_down_worker_still_gets_503(securetest, settings):
    create_secure(name="locked")
    settings.ECHO_ENCRYPTION_KEYS = [new_key()]
    on_loop(runtime.load_all_from_database)
    read_configuration()

    answer = get(headers={"Authorization": "Bearer " + "y" * 60_000})

    assert answer.status == 503
    assert answer.json() == {"status": "down", "providers": {"locked": False}}


@pytest.mark.slow
def test_a_started_worker_knows_its_providers_from_its_start_up(live_echo_with_echo):
    """Served over real HTTP: start-up read every row, so no repair pass is needed first."""
    assert runtime.current().lifecycle.started
    assert config_sync.enabled_providers() == frozenset({"echo"})
    with httpx.Client(base_url=live_echo_with_echo.url, timeout=10) as client:
        assert client.get("/health").json() == {"status": "ok", "providers": {"echo": True}}
        provider_config_create(name="second", plugin="echo")
        after = client.get("/health")
        head = client.head("/health")
    assert after.json() == {"status": "ok", "providers": {"echo": True, "second": True}}
    assert head.status_code == 200 and head.content == b""


@pytest.fixture
def live_echo_with_echo(transactional_db) -> Iterator[LiveEcho]:
    """Echo configured, then served over real HTTP (it loads its providers at start-up)."""
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "Echo: "})
    server = LiveEcho().start()
    yield server
    server.stop()


# --- the sync face -------------------------------------------------------------------


def test_the_sync_summary_and_the_drf_view_give_the_same_answer(warm):
    assert health.health_summary() == {"status": "ok", "providers": {"echo": True, "secure": True}}
    response = HealthView.as_view()(RequestFactory().get("/health"))
    assert response.status_code == 200
    assert response.data == {"status": "ok", "providers": {"echo": True, "secure": True}}
