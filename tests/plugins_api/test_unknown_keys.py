"""Made-up keys cost their sender, not the other clients (``plugins_api.access.unknown_keys``).

Hostile: a client sending endless unknown keys is refused (429, ``Retry-After``)
before they cost a query, in every API's shape and on every way in (the hot
path, Django's, DRF's REST API, the websocket); a known key from the same
address still works, another address is not touched, and unknown keys never
push a known key out of the cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from plugins_api.access import client_keys
from plugins_api.access.client_keys import averify_key, hash_key, verify_key
from plugins_api.access.key_changes import client_key_issue
from plugins_api.access.unknown_keys import (
    KeyLookupRefused,
    UnknownKeyGuard,
    address_bucket,
)
from providers.runtime import process as runtime
from tests.echo_site.test_hot_path import (  # noqa: F401  (``started``: a fixture)
    CASES,
    DJANGO,
    HOT,
    go_live,
    serve_async,
    started,
)

#: A chat call each endpoint answers 200 for a valid key.
BODIES = {path: json.dumps(cases["json"][0]).encode() for path, cases in CASES.items()}
BODY = BODIES["/chat"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limits(settings) -> None:
    settings.ECHO_UNKNOWN_KEYS_PER_ADDRESS = 3
    settings.ECHO_UNKNOWN_KEYS_WINDOW_SECONDS = 60


@pytest.fixture
def queries(monkeypatch) -> list[str]:
    """The digests the database was asked for."""
    asked: list[str] = []
    real = client_keys.stored_key_row

    async def counting(digest: str) -> Any:
        asked.append(digest)
        return await real(digest)

    monkeypatch.setattr(client_keys, "stored_key_row", counting)
    return asked


def made_up(n: int) -> dict[str, str]:
    return {"Authorization": f"Bearer echo-made-up-{n:030d}"}


# --- the guard by itself --------------------------------------------------------


def test_an_address_past_its_limit_is_refused_until_its_window_ends(limits) -> None:
    windows: dict[str, list[float]] = {}
    clock = Clock()
    guard = UnknownKeyGuard(windows=lambda: windows, clock=clock)
    for _ in range(3):
        guard.check("203.0.113.7")
        guard.failed("203.0.113.7")

    clock.now += 20
    with pytest.raises(KeyLookupRefused) as refused:
        guard.check("203.0.113.7")
    assert (refused.value.status, refused.value.kind) == (429, "too_many_unknown_keys")
    assert refused.value.retry_after == 40
    guard.check("203.0.113.8")  # another address: nothing counted

    clock.now += 40  # the window is over
    guard.check("203.0.113.7")
    guard.failed("203.0.113.7")  # a new window, counted from one
    guard.check("203.0.113.7")


def test_ipv6_clients_are_counted_by_their_64_block_and_mapped_ipv4_as_ipv4() -> None:
    assert address_bucket("2001:db8:1:2::5") == address_bucket("2001:db8:1:2:ffff::9")
    assert address_bucket("2001:db8:1:2::5") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::5") != address_bucket("2001:db8:1:2::5")
    assert address_bucket("::ffff:192.0.2.4") == "192.0.2.4"
    assert address_bucket("testclient") == "testclient"


def test_one_ipv6_host_cannot_escape_its_limit_by_changing_its_address(limits) -> None:
    windows: dict[str, list[float]] = {}
    guard = UnknownKeyGuard(windows=lambda: windows, clock=Clock())
    for n in range(3):
        guard.failed(f"2001:db8:5:6::{n + 1:x}")
    with pytest.raises(KeyLookupRefused):
        guard.check("2001:db8:5:6::abcd")


def test_the_addresses_kept_are_bounded(limits) -> None:
    windows: dict[str, list[float]] = {}
    guard = UnknownKeyGuard(windows=lambda: windows, clock=Clock(), max_addresses=5)
    for n in range(200):
        guard.failed(f"198.51.100.{n % 250}")
        assert guard.addresses() <= 5


def test_lookups_run_a_few_at_a_time_and_a_crowd_past_the_waiting_room_is_refused(
    settings,
) -> None:
    settings.ECHO_ORM_THREADS = 3  # two lookups at once, one thread kept for known keys
    guard = UnknownKeyGuard(windows=dict, max_waiting=3)
    release = asyncio.Event()
    running = 0
    most = 0

    async def lookup() -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return "found"

    async def scenario() -> list[Any]:
        calls = [asyncio.create_task(guard.run_gated(lookup)) for _ in range(6)]
        for _ in range(10):
            await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*calls, return_exceptions=True)

    results = async_to_sync(scenario)()
    assert most == 2
    assert results[:5] == ["found"] * 5  # two ran, three waited their turn
    assert isinstance(results[5], KeyLookupRefused)
    assert (results[5].status, results[5].kind, results[5].retry_after) == (
        503,
        "key_checks_busy",
        1,
    )


# --- the key store ----------------------------------------------------------------


def test_unknown_keys_never_push_a_known_key_out_of_the_cache(db, monkeypatch, queries) -> None:
    monkeypatch.setattr(client_keys, "CACHE_MAX_KEYS", 50)
    _, raw_key = client_key_issue(name="known", scope="chat")
    assert async_to_sync(averify_key)(raw_key) is not None
    for n in range(400):
        assert verify_key(f"echo-guess-{n}") is None
    assert len(runtime.unknown_key_cache) <= 50

    queries.clear()
    assert async_to_sync(averify_key)(raw_key) is not None
    assert queries == []  # still cached: no query


def test_a_key_change_keeps_known_keys_known_but_asks_the_database_again(
    db, limits, queries
) -> None:
    _, raw_key = client_key_issue(name="known", scope="chat")
    assert async_to_sync(averify_key)(raw_key) is not None
    for n in range(3):
        assert async_to_sync(averify_key)(f"echo-guess-{n}", lambda: "192.0.2.9") is None

    client_keys.forget_cached_keys()  # a save or revoke of any key
    queries.clear()
    # The address is locked, but the key is one this worker knows: looked up, not refused.
    assert async_to_sync(averify_key)(raw_key, lambda: "192.0.2.9") is not None
    assert queries == [hash_key(raw_key)]


def test_a_known_keys_refresh_does_not_wait_behind_lookups_of_unknown_ones(
    db, settings, monkeypatch
) -> None:
    settings.ECHO_ORM_THREADS = 2  # one lookup of an unknown key at a time
    _, raw_key = client_key_issue(name="known", scope="chat")
    assert verify_key(raw_key) is not None  # known to this worker...
    client_keys.forget_cached_keys()  # ...and stale: its next use asks the database
    row = client_keys.ClientAPIKey.objects.get(name="known")
    stuck = asyncio.Event()

    async def slow_for_strangers(digest: str) -> Any:
        if digest != hash_key(raw_key):
            await stuck.wait()  # a flood's lookups, holding every turn
            return None
        return row

    monkeypatch.setattr(client_keys, "stored_key_row", slow_for_strangers)

    async def scenario() -> tuple[bool, Any]:
        flood = [asyncio.create_task(averify_key(f"echo-flood-{n}")) for n in range(20)]
        await asyncio.sleep(0.01)
        known = asyncio.create_task(averify_key(raw_key))
        done, _ = await asyncio.wait({known}, timeout=5)
        stuck.set()
        await asyncio.gather(*flood, known)
        return known in done, known.result()

    answered_meanwhile, identity = async_to_sync(scenario)()
    assert answered_meanwhile and identity is not None


# --- every way in -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic"), ("/chat", "echo")],
)
@pytest.mark.parametrize("app", [HOT, DJANGO], ids=["hot path", "django"])
@pytest.mark.usefixtures("started")  # Django's way in must not close the test's connection
def test_made_up_keys_past_the_limit_get_429_without_a_query(
    echo_config, chat_key, limits, queries, caplog, path: str, shape: str, app: Any
) -> None:
    go_live(echo_config)
    body = BODIES[path]
    attacker = ("203.0.113.50", 5000)
    for n in range(3):
        answer = async_to_sync(serve_async)(app, path, body, made_up(n), client=attacker)
        assert answer.status == 401, answer.body
    asked = len(queries)

    with caplog.at_level(logging.INFO):
        refused = async_to_sync(serve_async)(app, path, body, made_up(99), client=attacker)
    assert refused.status == 429, refused.body
    assert len(queries) == asked  # refused before any query
    headers = {name.decode().lower(): value.decode() for name, value in refused.headers}
    assert 1 <= int(headers["retry-after"]) <= 60
    error = json.loads(refused.body)["error"]
    if shape == "openai":
        # OpenAI's type for a 429 (``_error_type``), Echo's kind as the code.
        assert (error["type"], error["code"]) == ("requests", "too_many_unknown_keys")
    elif shape == "anthropic":
        assert error["type"] == "rate_limit_error"
    else:
        assert error["type"] == "too_many_unknown_keys"
        assert error["retry_after"] == int(headers["retry-after"])
    assert "unknown or revoked API keys" in error["message"]
    assert "echo-made-up" not in caplog.text  # the key is never logged

    # The same address with a key this worker knows: served. Another address: untouched.
    chat = {"Authorization": f"Bearer {chat_key[1]}"}
    assert async_to_sync(serve_async)(app, path, body, chat).status == 200
    assert async_to_sync(serve_async)(app, path, body, chat, client=attacker).status == 200
    other = async_to_sync(serve_async)(app, path, body, made_up(5), client=("198.51.100.2", 1))
    assert other.status == 401


def test_behind_trusted_proxies_each_client_is_counted_by_its_forwarded_address(
    echo_config, limits, settings
) -> None:
    go_live(echo_config)
    settings.ECHO_TRUSTED_PROXY_COUNT = 1
    proxy = ("10.0.0.2", 443)

    def send(n: int, client: str) -> int:
        headers = {**made_up(n), "X-Forwarded-For": f"1.2.3.4, {client}"}
        return async_to_sync(serve_async)(HOT, "/chat", BODY, headers, client=proxy).status

    assert [send(n, "192.0.2.1") for n in range(4)] == [401, 401, 401, 429]
    assert send(10, "192.0.2.2") == 401  # another client behind the same proxy


def test_the_rest_api_refuses_an_address_past_its_limit(admin_key, limits, client) -> None:
    known = {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}
    assert client.get("/api/providers/", **known).status_code == 200
    for n in range(3):
        answer = client.get("/api/providers/", HTTP_AUTHORIZATION=f"Bearer echo-guess-{n:030d}")
        assert answer.status_code == 401
    refused = client.get("/api/providers/", HTTP_AUTHORIZATION="Bearer echo-guess-last")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused.json()["error"]["type"] == "too_many_unknown_keys"
    # A key this worker knows still passes from that address; one it has never seen waits.
    assert client.get("/api/providers/", **known).status_code == 200
    _, new_key = client_key_issue(name="new-admin", scope="admin")
    new = client.get("/api/providers/", HTTP_AUTHORIZATION=f"Bearer {new_key}")
    assert new.status_code == 429


@pytest.mark.django_db(transaction=True)
def test_a_websocket_from_an_address_past_its_limit_is_refused_with_4429(limits) -> None:
    from echo_site.asgi import router

    async def attempt(n: int) -> tuple[bool, int | None]:
        communicator = WebsocketCommunicator(
            router, "/ws/chat/", headers=[(b"authorization", f"Bearer echo-ws-{n:030d}".encode())]
        )
        communicator.scope["client"] = ("203.0.113.77", 1234)
        connected, code = await communicator.connect(timeout=10)
        if connected:
            await communicator.disconnect()
        return connected, code

    codes = [async_to_sync(attempt)(n) for n in range(4)]
    assert codes == [(False, 4401)] * 3 + [(False, 4429)]
