"""The hot path answers key clients' chat calls exactly as Django's path does, without its machinery.

Each request is sent twice through ASGI: once as served (``RequestBodyLimit``
around ``HotPath``) and once straight to Django (``RequestBodyLimit`` around
Django's handler). Status, headers and body must be equal, but for the ids
and clocks that differ on every call. Django fires ``request_started`` for
every request it serves; the hot path never does, which is how these tests
know which way a request went.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.db.backends.signals import connection_created
from django.test import Client, override_settings

from echo_site import asgi
from echo_site.hot_path import HotPath
from echo_site.request_body_limit import RequestBodyLimit
from plugins_api.access.client_keys import forget_cached_keys, hash_key
from plugins_api.models import ClientAPIKey
from providers.config.services import provider_config_create
from providers.errors import BadRequestError, ModelNotFoundError
from providers.models import ProviderConfig
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.runtime.lifecycle import ProviderLifecycle
from providers.types import ChatRequest, ChatResponse, StreamingChunk

HOT = RequestBodyLimit(asgi.hot_path)
DJANGO = RequestBodyLimit(asgi.django_http)
REQUEST_ID = "hot-path-test-1"
#: What differs between two answers to the same request: ids, clocks, Echo's own timing.
VOLATILE = [
    (re.compile(rb"chatcmpl-[0-9a-f]{32}"), b"chatcmpl-ID"),
    (re.compile(rb"msg_[0-9a-f]{32}"), b"msg_ID"),
    (re.compile(rb"chat-[0-9a-f]{32}"), b"chat-ID"),
    (re.compile(rb'"upstream_ms": ?[0-9.e-]+'), b'"upstream_ms": 0'),
    (re.compile(rb'"created": ?\d+'), b'"created": 0'),
]

VOLATILE_HEADERS = (b"x-echo-overhead-ms", b"content-length")


class Rejecting(EchoProvider):
    """Refuses every call as malformed: no retry, no failover."""

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        raise BadRequestError("messages: too long for this model", status_code=400)

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        raise BadRequestError("messages: too long for this model", status_code=400)
        yield  # an async generator


class Vectors(EchoProvider):
    """Echo with embeddings: two numbers per text, from its one model ``v-1``."""

    async def embeddings(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        if model != "v-1":
            raise ModelNotFoundError(f"No embedding model {model!r}.", provider=self.name)
        return [[float(len(text)), 0.5] for text in texts]


class Endless(EchoProvider):
    """Streams a chunk every 10 ms until its stream is closed, and notes that it was."""

    closed: threading.Event

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        try:
            while True:
                yield StreamingChunk(content="more ", model="endless-1")
                await asyncio.sleep(0.01)
        finally:
            type(self).closed.set()


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body)

    def normalized(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        body = self.body
        for pattern, replacement in VOLATILE:
            body = pattern.sub(replacement, body)
        length = self.header(b"content-length")
        # The ids and clocks above may differ in length: the length must be true, not equal.
        assert length is None or int(length) == len(self.body)
        headers = [
            (key.lower(), b"-" if key.lower() in VOLATILE_HEADERS else value)
            for key, value in self.headers
        ]
        return self.status, sorted(headers), body


async def serve_async(
    app: Any, path: str, body: bytes | list[bytes], headers: dict[str, str], method: str = "POST"
) -> Answer:
    """Send one request to ASGI APP; return its answer (a declared length, or chunked for a list)."""
    parts = body if isinstance(body, list) else [body]
    raw_headers = [(b"x-request-id", REQUEST_ID.encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if not any(name == b"host" for name, _ in raw_headers):
        raw_headers.insert(0, (b"host", b"testserver"))
    if isinstance(body, list):
        raw_headers.append((b"transfer-encoding", b"chunked"))
    elif method == "POST":
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path.split("?")[0],
        "raw_path": path.encode(),
        "query_string": path.partition("?")[2].encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    finished = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    await app(scope, receive, send)
    start = sent[0]
    return Answer(
        start["status"],
        list(start["headers"]),
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


@pytest.fixture
def started() -> Iterator[list[Any]]:
    """Count ``request_started``; keep Django's path from closing the test's connection.

    (As Django's test client does: the test's transaction lives on that connection.)
    """
    fired: list[Any] = []

    def note(**kwargs: Any) -> None:
        fired.append(kwargs)

    request_started.connect(note)
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield fired
    request_started.disconnect(note)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def go_live(row: ProviderConfig) -> None:
    error = runtime.run_in_serving_loop(runtime.apply_config_state, row.name, row.to_spec(), "")
    assert error is None, error


@pytest.fixture
def providers(echo_config: ProviderConfig) -> None:
    go_live(echo_config)
    for name, cls in (("rejecting", Rejecting), ("vectors", Vectors)):
        runtime.registry.register(cls, name)
        go_live(provider_config_create(name=name, plugin=name))


def odd_scope_key() -> str:
    """Return a key whose scope is neither chat nor admin (as a future scope would be)."""
    raw = "echo-odd-scope-key-0123456789"
    ClientAPIKey.objects.create(name="odd", scope="audit", prefix=raw[:11], key_hash=hash_key(raw))
    return raw


@pytest.fixture
def keys(chat_key: tuple[Any, str]) -> dict[str, dict[str, str]]:
    return {
        "bearer": {"Authorization": f"Bearer {chat_key[1]}"},
        "x-api-key": {"x-api-key": chat_key[1]},
        "bad key": {"Authorization": "Bearer echo-not-a-key"},
        "no key": {},
        "other scope": {"Authorization": f"Bearer {odd_scope_key()}"},
    }


USER = [{"role": "user", "content": "Hello there"}]
#: endpoint -> case -> (JSON body, expected status)
CASES: dict[str, dict[str, tuple[dict[str, Any], int]]] = {
    "/chat": {
        "json": ({"prompt": "Hello there"}, 200),
        "stream": ({"prompt": "Hello there", "stream": True}, 200),
        "bad field": ({"prompt": "Hi", "messages": "nope"}, 400),
        "unknown model": ({"prompt": "Hi", "provider": "nope"}, 404),
        "provider error": ({"prompt": "Hi", "provider": "rejecting"}, 422),
    },
    "/v1/chat/completions": {
        "json": ({"model": "echo/echo-1", "messages": USER}, 200),
        "stream": (
            {
                "model": "echo/echo-1",
                "messages": USER,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            200,
        ),
        "bad field": ({"model": "echo/echo-1", "messages": USER, "n": 9}, 400),
        "unknown model": ({"model": "nope/gpt-x", "messages": USER}, 404),
        "provider error": ({"model": "rejecting/echo-1", "messages": USER}, 422),
    },
    "/v1/messages": {
        "json": ({"model": "echo/echo-1", "max_tokens": 50, "messages": USER}, 200),
        "stream": (
            {"model": "echo/echo-1", "max_tokens": 50, "messages": USER, "stream": True},
            200,
        ),
        "bad field": ({"model": "echo/echo-1", "messages": USER}, 400),
        "unknown model": ({"model": "nope/claude-x", "max_tokens": 50, "messages": USER}, 404),
        "provider error": (
            {"model": "rejecting/echo-1", "max_tokens": 50, "messages": USER},
            422,
        ),
    },
    "/v1/embeddings": {
        "json": ({"model": "vectors/v-1", "input": ["one", "three"]}, 200),
        "bad field": ({"model": "vectors/v-1", "input": [[1, 2]]}, 400),
        "unknown model": ({"model": "vectors/v-2", "input": "x"}, 404),
        "provider error": ({"model": "echo/echo-1", "input": "x"}, 400),
    },
}
KEYED = [(path, case) for path, cases in CASES.items() for case in cases]


def both_ways(
    started: list[Any],
    path: str,
    body: bytes | list[bytes],
    headers: dict[str, str],
    apps: tuple[Any, Any] = (HOT, DJANGO),
) -> tuple[Answer, Answer, int]:
    """Return (hot answer, Django's answer, request_started count of the hot one)."""
    before = len(started)
    hot = async_to_sync(serve_async)(apps[0], path, body, headers)
    hot_started = len(started) - before
    django = async_to_sync(serve_async)(apps[1], path, body, headers)
    return hot, django, hot_started


@pytest.mark.parametrize(("path", "case"), KEYED)
@pytest.mark.parametrize("key", ["bearer", "x-api-key"])
def test_a_key_clients_call_is_answered_the_same_and_skips_django(
    providers, keys, started, path: str, case: str, key: str
) -> None:
    payload, status = CASES[path][case]
    before = len(started)

    hot, django, hot_started = both_ways(started, path, json.dumps(payload).encode(), keys[key])

    assert hot.status == status, hot.body
    assert hot.normalized() == django.normalized()
    assert hot.header(b"x-request-id") == REQUEST_ID.encode()
    assert hot.header(b"x-content-type-options") == b"nosniff"
    assert hot.header(b"x-frame-options") == b"DENY"
    assert hot_started == 0, "the hot path fired request_started: Django served it"
    assert len(started) - before == 1, "Django's path was not Django's"
    if case == "stream":
        assert hot.header(b"content-type") == b"text/event-stream"
        assert hot.body.count(b"data: ") > 2
    if case == "provider error":
        assert b"too long for this model" in hot.body or path == "/v1/embeddings"


@pytest.mark.parametrize("path", list(CASES))
@pytest.mark.parametrize(
    ("who", "body", "status"),
    [
        ("no key", b'{"prompt": "x"}', 401),
        ("bad key", b'{"prompt": "x"}', 401),  # refused before the body is read
        ("bad key", b"", 401),  # no body: the view refuses it, on the hot path
        ("other scope", b'{"prompt": "x"}', 403),
        ("other scope", b"", 403),
    ],
)
def test_refusals_are_the_same(
    providers, keys, started, path: str, who: str, body: bytes, status: int
) -> None:
    hot, django, hot_started = both_ways(started, path, body, keys[who])

    assert hot.status == status, hot.body
    assert hot.normalized() == django.normalized()
    assert hot_started == 0


@pytest.mark.parametrize("path", list(CASES))
def test_oversized_bodies_get_the_same_413(providers, keys, started, path: str, settings) -> None:
    settings.ECHO_MAX_BODY_BYTES = 65536
    big = b" " * 70000

    declared = both_ways(started, path, b"{}" + big, keys["bearer"])
    chunked = both_ways(started, path, [b"{}", big], keys["bearer"])

    for hot, django, _ in (declared, chunked):
        assert hot.status == 413, hot.body
        assert hot.normalized() == django.normalized()


def test_https_redirect_and_hsts_apply_on_the_hot_path(providers, keys, started, settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    body = json.dumps(CASES["/chat"]["json"][0]).encode()
    # Middleware reads these settings when it is built: build both ways anew, as a worker would.
    django = ASGIStaticFilesHandler(ASGIHandler())
    apps = RequestBodyLimit(HotPath(django)), RequestBodyLimit(django)

    plain = both_ways(started, "/chat", body, keys["bearer"], apps)
    secure = both_ways(
        started, "/chat", body, {**keys["bearer"], "X-Forwarded-Proto": "https"}, apps
    )

    assert plain[0].status == 301
    assert plain[0].header(b"location") == b"https://testserver/chat"
    assert secure[0].status == 200
    assert secure[0].header(b"strict-transport-security") == b"max-age=3600"
    for hot, django, hot_started in (plain, secure):
        assert hot.normalized() == django.normalized()
        assert hot_started == 0


def test_a_nul_in_the_query_is_refused_on_the_hot_path_too(providers, keys, started) -> None:
    hot, django, hot_started = both_ways(started, "/chat?a=%00", b'{"prompt": "x"}', keys["bearer"])

    assert hot.status == 400
    assert hot.normalized() == django.normalized()
    assert hot_started == 0


# --- what still goes to Django -------------------------------------------------


def test_a_session_caller_of_chat_goes_through_django_with_its_csrf_check(
    providers, started, admin_user
) -> None:
    browser = Client()
    browser.force_login(admin_user)
    token = "a" * 32
    cookie = f"sessionid={browser.cookies['sessionid'].value}; csrftoken={token}"
    body = b'{"prompt": "Hello"}'

    without = async_to_sync(serve_async)(HOT, "/chat", body, {"Cookie": cookie})
    with_token = async_to_sync(serve_async)(
        HOT, "/chat", body, {"Cookie": cookie, "X-CSRFToken": token}
    )

    assert without.status == 403
    assert without.json()["error"]["type"] == "csrf_failed"
    assert with_token.status == 200, with_token.body
    assert with_token.json()["content"] == "Echo: Hello"
    assert len(started) == 2


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/models", 200), ("GET", "/admin/", 302), ("GET", "/chat", 405)],
)
def test_other_requests_go_to_django(
    providers, keys, started, method: str, path: str, status: int
) -> None:
    answer = async_to_sync(serve_async)(HOT, path, b"", keys["bearer"], method)

    assert answer.status == status
    assert len(started) == 1


# --- what the hot path must still do itself -------------------------------------


def leave_mid_stream(key: str, body: bytes, after_messages: int) -> list[dict[str, Any]]:
    """POST BODY to the hot path's ``/chat`` with KEY; go away after AFTER_MESSAGES; return them."""
    seen: list[dict[str, Any]] = []

    async def go() -> None:
        request = {"type": "http.request", "body": body}
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if request["body"]:
                message, request["body"] = dict(request), b""
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            seen.append(message)
            if len(seen) == after_messages:
                gone.set()

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/chat",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", f"Bearer {key}".encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        await asyncio.wait_for(HOT(scope, receive, send), timeout=5)

    async_to_sync(go)()
    return seen


def test_a_client_that_goes_away_mid_stream_stops_the_provider(started, chat_key) -> None:
    Endless.closed = threading.Event()
    runtime.registry.register(Endless, "endless")
    go_live(provider_config_create(name="endless", plugin="endless"))

    seen = leave_mid_stream(
        chat_key[1], b'{"prompt": "go", "provider": "endless", "stream": true}', 4
    )

    assert seen[0]["status"] == 200
    assert b"more" in seen[1]["body"]
    assert Endless.closed.wait(2), "the provider's stream was not closed"
    assert started == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("body", [b"", b'{"prompt": "Hello"}'])
def test_a_key_looked_up_in_the_database_opens_no_connection_for_the_request(
    echo_config, chat_key, body: bytes
) -> None:
    """On a key-cache miss the key is read on the ORM threads' kept connections, never the request's.

    Each request used to open a connection (on PostgreSQL a server process) in
    a thread of its own for its lookup, and close it: a client sending unknown
    keys could make one per request. Six misses in a row here open at most the
    ORM threads' few, every one of them kept, and none in any other thread.
    """
    go_live(echo_config)
    opened: list[tuple[str, Any]] = []

    def note(sender: Any, connection: Any, **kwargs: Any) -> None:
        opened.append((threading.current_thread().name, connection))

    connection_created.connect(note)
    headers = {"Authorization": f"Bearer {chat_key[1]}"}
    try:
        # A loop of its own, in a thread of its own, as a server's: no test thread to borrow.
        result: list[Answer] = []

        def six_misses() -> None:
            for _ in range(6):
                forget_cached_keys()
                result.append(asyncio.run(serve_async(HOT, "/chat", body, headers)))

        worker = threading.Thread(target=six_misses)
        with override_settings(ECHO_ORM_THREADS=4):  # the suite's default is 0 (see settings)
            worker.start()
            worker.join(20)
    finally:
        connection_created.disconnect(note)

    assert [answer.status for answer in result] == [200 if body else 400] * 6, result[0].body
    assert all(name.startswith("echo-orm") for name, _ in opened), opened
    assert len(opened) <= 4


@pytest.mark.django_db(transaction=True)
def test_a_flood_of_unknown_keys_holds_no_more_connections_than_the_orm_threads(
    echo_config,
) -> None:
    """Hostile: forty made-up keys at once, each a cache miss, each refused; the database sees two connections."""
    go_live(echo_config)
    opened: list[str] = []

    def note(sender: Any, connection: Any, **kwargs: Any) -> None:
        opened.append(threading.current_thread().name)

    async def flood() -> list[Answer]:
        return await asyncio.gather(
            *(
                serve_async(
                    HOT,
                    "/v1/chat/completions",
                    b"{}",
                    {"Authorization": f"Bearer echo-made-up-{n:030d}"},
                )
                for n in range(40)
            )
        )

    result: list[list[Answer]] = []
    connection_created.connect(note)
    try:
        worker = threading.Thread(target=lambda: result.append(asyncio.run(flood())))
        with override_settings(ECHO_ORM_THREADS=2):
            worker.start()
            worker.join(20)
    finally:
        connection_created.disconnect(note)

    assert [answer.status for answer in result[0]] == [401] * 40
    assert len(opened) <= 2 and all(name.startswith("echo-orm") for name in opened), opened


@pytest.mark.parametrize(
    ("path", "case"),
    [("/chat", "json"), ("/v1/chat/completions", "stream"), ("/v1/messages", "json")],
)
def test_a_call_with_a_cached_key_makes_no_thread_hop(
    providers, keys, started, monkeypatch, path: str, case: str
) -> None:
    """Once the key is cached, a hot call runs on the event loop alone: no sync_to_async at all.

    Django's path makes at least two (the request signals), so this fails if the lane is
    bypassed; background writers (usage, last use) run in their own tasks and are not counted.
    """
    from asgiref.sync import SyncToAsync

    body = json.dumps(CASES[path][case][0]).encode()
    hops: list[str] = []
    real_call = SyncToAsync.__call__

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else ""
        if not name.startswith("echo-"):
            hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await real_call(self, *args, **kwargs)

    warm = async_to_sync(serve_async)(HOT, path, body, keys["bearer"])  # caches the key
    assert warm.status == 200, warm.body
    monkeypatch.setattr(SyncToAsync, "__call__", counted)

    hot = async_to_sync(serve_async)(HOT, path, body, keys["bearer"])
    assert hot.status == 200, hot.body
    assert hops == [], f"thread hops on the hot path: {hops}"

    django = async_to_sync(serve_async)(DJANGO, path, body, keys["bearer"])
    assert django.status == 200
    assert len(hops) >= 2, hops  # the counter sees Django's request signals


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("key", ["bearer", "x-api-key"])
def test_a_key_is_verified_once_per_call(providers, keys, monkeypatch, path: str, key: str) -> None:
    """The body limit verifies the key before the body; the view takes its identity, no second lookup."""
    from plugins_api.access import key_credentials

    lookups: list[str] = []
    real_lookup = key_credentials.alookup_key

    async def counted(raw_key: str) -> Any:
        lookups.append(raw_key[:6])
        return await real_lookup(raw_key)

    monkeypatch.setattr(key_credentials, "alookup_key", counted)
    body = json.dumps(CASES[path]["json"][0]).encode()
    for app in (HOT, DJANGO):  # both ways in: the same rule
        lookups.clear()
        answer = async_to_sync(serve_async)(app, path, body, keys[key])
        assert answer.status == 200, answer.body
        assert len(lookups) == 1, lookups


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("who", ["no key", "bearer", "session cookie"])
def test_the_probes_take_the_hot_path_with_the_same_answers(
    providers, keys, started, monkeypatch, settings, path: str, method: str, who: str
) -> None:
    """A load balancer's probes skip the request signals and the browser middleware, whoever calls."""
    headers = {"session cookie": {"Cookie": "sessionid=abc; csrftoken=" + "f" * 32}}.get(
        who, keys.get(who, {})
    )
    # Readiness needs a started runtime (these calls skip the ASGI start-up) and, here, no Redis.
    monkeypatch.setattr(ProviderLifecycle, "started", property(lambda self: True))
    settings.REDIS_URL = ""
    before = len(started)
    hot = async_to_sync(serve_async)(HOT, path, b"", headers, method)
    hot_started = len(started) - before
    django = async_to_sync(serve_async)(DJANGO, path, b"", headers, method)

    assert hot.status == 200, hot.body
    assert hot.normalized() == django.normalized()
    assert hot_started == 0, "the probe fired request_started: Django served it"
    assert hot.header(b"set-cookie") is None  # no session, no CSRF cookie
    assert b"Cookie" not in (hot.header(b"vary") or b"")
    if method == "GET":
        assert any(f'"{word}"'.encode() in hot.body for word in ("ok", "live", "ready"))


def test_a_provider_health_check_and_other_methods_still_go_to_django(providers, started) -> None:
    for path, method in (("/health/echo", "GET"), ("/health/live", "POST"), ("/health", "DELETE")):
        before = len(started)
        async_to_sync(serve_async)(HOT, path, b"", {}, method)
        assert len(started) - before == 1, (path, method)


async def sent_messages(how) -> list[dict[str, Any]]:
    """Return the ASGI messages HOW sends, given a ``send`` that keeps them."""
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await how(send)
    return messages


def named_and_with(response: Any, cookie: str | None) -> Any:
    """Return RESPONSE with a header of Echo's and, when given, COOKIE (``name=value``) set."""
    response["X-Echo-Provider"] = "echo"
    if cookie:
        name, value = cookie.split("=")
        response.set_cookie(name, value)
    return response


@pytest.mark.parametrize(
    "body, cookie",
    [
        (b'{"ok": true}', None),
        (b"", None),
        (b"x" * (3 * ASGIHandler.chunk_size + 5), None),
        (b"{}", "sessionid=abc"),
    ],
    ids=["json", "empty", "over-a-chunk", "with-a-cookie"],
)
def test_a_whole_answer_is_sent_as_djangos_send_response_sends_it(body: bytes, cookie) -> None:
    """``send_whole`` sends the very messages Django's ``send_response`` sends, the added headers last."""
    from django.http import HttpResponse

    from echo_site.hot_path import _adding, send_whole

    added = [(b"X-Frame-Options", b"DENY"), (b"X-Request-ID", b"r-1")]

    def answer() -> HttpResponse:
        response = HttpResponse(body, content_type="application/json", status=201)
        return named_and_with(response, cookie)

    theirs = async_to_sync(sent_messages)(
        lambda send: ASGIHandler().send_response(answer(), _adding(added, send))
    )
    ours = async_to_sync(sent_messages)(lambda send: send_whole(answer(), added, send))
    for message in theirs:
        if message["type"] == "http.response.body":  # Django may leave it out: it means False
            message.setdefault("more_body", False)
    assert ours == theirs
    assert len(ours) == 1 + max(1, -(-len(body) // ASGIHandler.chunk_size))


@pytest.mark.parametrize("cookie", [None, "sessionid=abc"], ids=["plain", "with-a-cookie"])
def test_an_event_stream_is_sent_as_djangos_send_response_sends_it(cookie) -> None:
    """``send_events`` sends the very messages Django's ``send_response`` sends, the added headers last."""
    from echo_site.hot_path import _adding, send_events
    from plugins_api.edge.sse import event_stream_response

    added = [(b"X-Frame-Options", b"DENY"), (b"X-Request-ID", b"r-1")]
    events = [
        b"event: chunk\ndata: {}\n\n",
        b"",
        b'data: {"a": "\xc3\xa9"}\n\n',
        b"data: [DONE]\n\n",
    ]

    async def stream() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    def answer():
        response = event_stream_response(stream())
        return named_and_with(response, cookie)

    theirs = async_to_sync(sent_messages)(
        lambda send: ASGIHandler().send_response(answer(), _adding(added, send))
    )
    ours = async_to_sync(sent_messages)(lambda send: send_events(answer(), added, send))
    assert ours == theirs
    assert [m.get("body") for m in ours[1:-1]] == events


def test_an_event_stream_is_closed_as_soon_as_its_client_is_gone() -> None:
    """A send that fails (the client left) closes the events, and the upstream under them, at once."""
    from echo_site.hot_path import send_events
    from plugins_api.edge.sse import event_stream_response

    closed: list[bool] = []

    async def stream() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: {}\n\n"
        finally:
            closed.append(True)

    bodies: list[bytes] = []

    async def leave_after_two(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            if len(bodies) == 2:
                raise OSError("the client went away")
            bodies.append(message["body"])

    async def serve() -> None:
        response = event_stream_response(stream())
        with pytest.raises(OSError):
            await send_events(response, [], leave_after_two)
        assert closed == [True], "the events were left open until the garbage collector ran"

    async_to_sync(serve)()


def test_hosts_are_checked_once_each_and_a_client_sending_many_costs_only_itself(
    providers, keys, started, settings
) -> None:
    """A host's check is remembered (bounded), and forgotten when the hosts allowed change."""
    from echo_site.middleware_effects import HOSTS_KEPT

    effects = asgi.hot_path.handler.effects
    body = json.dumps(CASES["/chat"]["json"][0]).encode()
    for n in range(3 * HOSTS_KEPT):
        hot, django, _ = both_ways(
            started, "/chat", body, {**keys["bearer"], "Host": f"evil-{n}.example"}
        )
        assert hot.status == 400, hot.body
        assert hot.normalized() == django.normalized()
        assert len(effects._hosts) <= HOSTS_KEPT
    hot, django, hot_started = both_ways(started, "/chat", body, keys["bearer"])
    assert (hot.status, hot_started) == (200, 0)
    assert effects._hosts["testserver"] is True

    settings.ALLOWED_HOSTS = ["elsewhere.example"]
    hot, django, _ = both_ways(started, "/chat", body, keys["bearer"])
    assert hot.status == django.status == 400
    assert hot.normalized() == django.normalized()
    assert effects._hosts == {"testserver": False}
