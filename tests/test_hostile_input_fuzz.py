"""Hostile input against every route and the chat websocket: never a 5xx, never a dead server.

Every HTTP route comes from Django's URL resolver (walked recursively, so a
new route is covered without touching this file), its path parameters
filled with hostile values (NUL, control characters, bytes that are not
UTF-8, huge numbers, ...), and hostile queries. The clients are five (no
credential, a chat key as ``Bearer`` and as ``x-api-key``, an admin key, a
staff session); the methods are those the route does not answer 405. Each
route gets a hand-written list of hostile bodies (JSON nested 100 000 levels
deep, NUL and lone surrogates, bytes that are not UTF-8, multi-megabyte
strings, empty bodies, wrong content types), the clients it lets in taking
turns, and, where its valid body is known, that body with every field
replaced in turn by a value of the wrong type. Path values, bodies and
mutations take the methods and clients in turn, which keeps the run within
seconds. No answer may be a
5xx, and the server must still serve afterwards. The chat websocket gets
the same treatment, frame by frame: it must answer and stay open. The
bodies' fuzzer is in ``test_hostile_input_fuzz_bodies.py``, with this
module's routes, bodies and fixtures: a file of its own runs on another
worker.

Requests go through the real ASGI application (``echo_site.asgi.router``:
the body limit, the middleware, the views) in-process with httpx, so the run
stays within seconds. The suite runs on PostgreSQL, which refuses NUL where
SQLite stores it: the path values reach the database that production runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern

from echo_site.asgi import router
from plugins_api.access.client_keys import forget_cached_keys
from providers.config.services import provider_config_create, provider_config_delete
from providers.models import ProviderConfig
from providers.runtime import process as runtime

# Slow: it fuzzes every route and the chat websocket.
pytestmark = pytest.mark.slow

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
REQUEST_TIMEOUT_SECONDS = 20
CSRF_TOKEN = "f" * 32  # an unmasked CSRF secret: Django accepts it as cookie and header alike

# --- the routes ---------------------------------------------------------------

#: A valid value for each path parameter, by name: with it a call reaches the
#: view's own validation rather than stopping at a 404. Unknown names get "1".
VALID_PARAMETERS = {
    "name": "echo",
    "model": "echo-1",
    "model_id": "echo/echo-1",
    "extension": "csv",
    "app_label": "providers",
}

#: Hostile path parameter values, percent-encoded as a client sends them.
HOSTILE_PATH_VALUES = (
    "%00",
    "echo%00",
    "%01",
    "%0A",
    "%1F",
    "%7F",
    "%ED%A0%80",  # a lone surrogate, UTF-8 encoded: not valid UTF-8
    "%FF%FE",
    "%C0%AF",  # an overlong "/"
    "%E2%80%AE",  # right-to-left override
    "..%2F..%2Fetc",
    "%25",
    "9" * 40,  # past every integer column
    "-1",
    "x" * 5000,
)

#: Hostile query strings, sent to every route with GET.
HOSTILE_QUERIES = (
    "provider=%00",
    "page=%00",
    "page=99999999999999999999999",
    "format=%00",
    "refresh=%ED%A0%80",
    "%00=1",
    "limit=-1&offset=-1&since=%00&until=x",
)

_ROUTE_PARAMETER = re.compile(r"<(?:[^>:]+:)?([^>]+)>")
_REGEX_GROUP = re.compile(r"\(\?P<([^>]+)>[^)]*\)")


@dataclass(frozen=True)
class Route:
    """One URL pattern: its pattern text, its name and its path parameters."""

    pattern: str
    name: str | None
    parameters: tuple[str, ...]

    def url(self, values: dict[str, str]) -> str:
        """Return the path of this route with each parameter set from VALUES."""

        def value(match: re.Match[str]) -> str:
            return values.get(match.group(1), VALID_PARAMETERS.get(match.group(1), "1"))

        text = _ROUTE_PARAMETER.sub(value, _REGEX_GROUP.sub(value, self.pattern))
        return "/" + text.replace("^", "").replace("$", "")

    def __str__(self) -> str:
        return f"/{self.pattern} ({self.name})"


def every_route() -> list[Route]:
    """Return every HTTP route of the site, from the URL resolver."""
    routes: list[Route] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
                continue
            assert isinstance(entry, URLPattern)
            assert isinstance(entry.pattern, RoutePattern | RegexPattern), entry.pattern
            text = prefix + str(entry.pattern)
            names = tuple(_ROUTE_PARAMETER.findall(text) + _REGEX_GROUP.findall(text))
            routes.append(Route(text, entry.name, names))

    walk(get_resolver().url_patterns, "")
    for route in routes:
        leftover = route.url({}).translate(str.maketrans("", "", "/-_."))
        # A pattern this file cannot fill (a new regex construct) must be taught, not skipped.
        assert re.fullmatch(r"[A-Za-z0-9]*", leftover), f"cannot build a URL for {route}"
    return routes


# --- the bodies -----------------------------------------------------------------

JSON = "application/json"
HUGE = 3 * 1024 * 1024

#: (label, content type or None, body): sent whole to every route and method that takes one.
HOSTILE_BODIES: tuple[tuple[str, str | None, bytes], ...] = (
    ("deep array", JSON, b"[" * 100_000),
    ("deep object", JSON, b'{"a":' * 50_000),
    ("deep inside an object", JSON, b'{"messages": ' + b"[" * 100_000),
    ("NUL", JSON, b'{"prompt": "a\\u0000b", "name": "\\u0000", "\\u0000": 1}'),
    ("lone surrogate", JSON, b'{"prompt": "\\ud800", "name": "\\udfff", "\\ud800": 1}'),
    ("invalid UTF-8", JSON, b'{"prompt": "\xff\xfe\xed\xa0\x80", "name": "\xc0\xaf"}'),
    ("huge string", JSON, b'{"prompt": "' + b"a" * HUGE + b'", "name": "x"}'),
    ("empty", JSON, b""),
    ("null", JSON, b"null"),
    ("list", JSON, b"[]"),
    ("number", JSON, b"1"),
    ("string", JSON, b'"s"'),
    ("NaN", JSON, b'{"prompt": NaN, "max_tokens": Infinity, "temperature": 1e999}'),
    ("truncated", JSON, b'{"prompt": "hi'),
    ("utf-16 declared", "application/json; charset=utf-16", b'{"prompt": "hi"}'),
    ("form", "application/x-www-form-urlencoded", b"prompt=%00&name=%ED%A0%80&a=%FF"),
    ("multipart without boundary", "multipart/form-data", b"--x\r\n\r\n"),
    ("broken multipart", "multipart/form-data; boundary=x", b"--x\r\nContent-Disp\x00\r\n\r\n"),
    ("text", "text/plain", b"hello"),
    ("no content type", None, b'{"prompt": "hi"}'),
)

#: Raw JSON values of the wrong type (or hostile), put in place of each field of a valid body.
WRONG_VALUES = (
    "1",
    "-1",
    "1.5",
    "99999999999999999999999999",
    "1e999",
    "true",
    "null",
    "{}",
    "[]",
    '"s"',
    '""',
    '{"a": 1}',
    '["x"]',
    '"\\u0000"',
    '"\\ud800"',
    '"' + "a" * 100_000 + '"',
    "[" * 5_000 + "]" * 5_000,
)

#: A valid body for each route (by route name) and method, whose every field is fuzzed.
VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("chat", "POST"): {
        "provider": "echo",
        "model": "echo-1",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "max_tokens": 5,
        "temperature": 0.5,
        "stop": ["x"],
    },
    ("openai-chat-completions", "POST"): {
        "model": "echo/echo-1",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "stream": False,
        "max_tokens": 5,
        "temperature": 0.5,
        "stop": ["x"],
        "user": "u",
    },
    ("anthropic-messages", "POST"): {
        "model": "echo/echo-1",
        "max_tokens": 5,
        "system": "s",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stop_sequences": ["x"],
        "metadata": {"user_id": "u"},
    },
    ("openai-embeddings", "POST"): {"model": "echo/echo-1", "input": ["hi"]},
    ("provider-list", "POST"): {
        "name": "fuzzed",
        "plugin": "echo",
        "enabled": True,
        "settings": {"prefix": "F: ", "models": ["f-1"]},
        "secrets": {},
        "fallbacks": ["echo"],
    },
    ("provider-detail", "PUT"): {
        "name": "echo",
        "plugin": "echo",
        "enabled": True,
        "is_default": True,
        "settings": {"prefix": "Echo: "},
        "fallbacks": [],
    },
    ("provider-detail", "PATCH"): {"settings": {"prefix": "Echo: "}, "fallbacks": []},
    ("plugin-reload", "POST"): {"provider_name": "echo", "config": {"prefix": "Echo: "}},
    ("plugin-config", "PUT"): {"prefix": "Echo: ", "models": ["echo-1"]},
}

_SENTINEL = "__fuzzed_value__"


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Yield the path of every field and list item in VALUE, outermost first."""
    children = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in children:
        yield (*prefix, key)
        if isinstance(child, dict | list) and child:
            yield from _paths(child, (*prefix, key))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    copy = json.loads(json.dumps(value))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return copy


def mutated_bodies(valid: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """Yield (label, body): VALID with each field in turn replaced by each wrong value, or left out."""
    for path in _paths(valid):
        where = ".".join(str(p) for p in path)
        text = json.dumps(_replaced(valid, path, _SENTINEL))
        for wrong in WRONG_VALUES:
            yield f"{where}={wrong[:20]}", text.replace(f'"{_SENTINEL}"', wrong).encode()
        if isinstance(path[-1], str):
            without = json.loads(text)
            target = without
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
            yield f"{where} missing", json.dumps(without).encode()


# --- running ----------------------------------------------------------------------


@dataclass
class Failure:
    """A request that got a 5xx, hung, or broke the connection."""

    route: str
    method: str
    url: str
    persona: str
    case: str
    outcome: str
    traceback: str = ""

    def __str__(self) -> str:
        where = f"{self.method} {self.url[:120]} [{self.persona}] {self.case}"
        return f"{self.route}: {where} -> {self.outcome}\n    {self.traceback}".rstrip()


class _ErrorLog(logging.Handler):
    """Keep the last lines of the tracebacks Django logs for its 500s."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            lines = traceback.format_exception(*record.exc_info)
            frames = [line.strip() for line in lines if line.strip().startswith("File ")]
            where = frames[-1].splitlines()[0] if frames else ""
            self.tracebacks.append(f"{where} | {lines[-1].strip()}")


@dataclass
class Fuzzer:
    """Sends requests through the ASGI app and keeps what went wrong."""

    client: httpx.AsyncClient
    personas: dict[str, dict[str, str]]
    errors: _ErrorLog
    failures: list[Failure] = field(default_factory=list)
    sent: int = 0

    async def send(
        self,
        route: Route,
        method: str,
        url: str,
        persona: str,
        case: str,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> int | None:
        """Send one request; record it as a failure if it is a 5xx or never answers."""
        headers = dict(self.personas[persona])
        if content_type:
            headers["Content-Type"] = content_type
        self.sent += 1
        seen = len(self.errors.tracebacks)
        try:
            response = await asyncio.wait_for(
                self.client.request(method, url, content=body, headers=headers),
                REQUEST_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            outcome, status = f"no answer in {REQUEST_TIMEOUT_SECONDS} s", None
        except Exception as exc:  # the app raised out of the ASGI call: the server would drop it
            outcome, status = f"{type(exc).__name__}: {exc}"[:300], None
        else:
            status = response.status_code
            # A readiness probe's 503 is its answer: this test never starts the runtime.
            if status < 500 or (status == 503 and url.startswith("/health/ready")):
                return status
            outcome = f"{status} {response.text[:160]!r}"
        tracebacks = " || ".join(self.errors.tracebacks[seen:])
        self.failures.append(Failure(str(route), method, url, persona, case, outcome, tracebacks))
        return status


@pytest.fixture
def site(transactional_db, admin_user, chat_key, admin_key) -> dict[str, dict[str, str]]:
    """The echo provider live and the five clients' headers, by persona."""
    provider_config_create(
        name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
    )
    forget_cached_keys()
    browser = Client()
    browser.force_login(admin_user)
    session = browser.cookies["sessionid"].value
    return {
        "anonymous": {},
        "chat key": {"Authorization": f"Bearer {chat_key[1]}"},
        "chat x-api-key": {"x-api-key": chat_key[1]},
        "admin key": {"Authorization": f"Bearer {admin_key[1]}"},
        "staff session": {
            "Cookie": f"sessionid={session}; csrftoken={CSRF_TOKEN}",
            "X-CSRFToken": CSRF_TOKEN,
            "Origin": "http://testserver",
        },
    }


def _echo_serves() -> None:
    """Put the echo provider back as it was, after a fuzzed write deleted or changed it."""
    config = ProviderConfig.objects.filter(name="echo").first()
    if config is not None and config.enabled and config.is_default:
        return
    if config is not None:
        provider_config_delete(config=config)
    provider_config_create(
        name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
    )


@pytest.fixture
async def fuzzer(site: dict[str, dict[str, str]]) -> AsyncIterator[Fuzzer]:
    """A Fuzzer over the ASGI app; the logs of thousands of 4xx are kept quiet."""
    errors = _ErrorLog()
    request_log, httpx_log = logging.getLogger("django.request"), logging.getLogger("httpx")
    levels = request_log.level, httpx_log.level
    request_log.setLevel(logging.ERROR)
    httpx_log.setLevel(logging.WARNING)
    request_log.addHandler(errors)
    transport = httpx.ASGITransport(app=router)
    # This loop serves, as a worker's does: saves made by fuzzed writes start
    # their providers on it, and the rows made before it are loaded now.
    runtime.set_serving_loop(asyncio.get_running_loop())
    await runtime.load_all_from_database()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            # Every persona is who it claims to be, or the fuzz would quietly test less.
            for persona, status in (("admin key", 200), ("staff session", 200), ("chat key", 403)):
                answer = await client.get("/api/history/", headers=site[persona])
                assert answer.status_code == status, (persona, answer.text)
            yield Fuzzer(client, site, errors)
    finally:
        request_log.removeHandler(errors)
        request_log.setLevel(levels[0])
        httpx_log.setLevel(levels[1])


async def _send_and_restore(fuzzer: Fuzzer, route: Route, method: str, *args: Any) -> int | None:
    """Send; after a successful write, put the echo provider back as the next request needs it."""
    status = await fuzzer.send(route, method, *args)
    if method != "GET" and status is not None and status < 300:
        await sync_to_async(_echo_serves)()
    return status


_allowed_cache: dict[str, list[str]] = {}


async def allowed_methods(fuzzer: Fuzzer, routes: list[Route]) -> dict[Route, list[str]]:
    """Return the methods each route answers with something other than 405, as admin or staff.

    Kept for the session: both tests ask, and the answer does not change.
    """
    allowed: dict[Route, list[str]] = {}
    for route in routes:
        if route.pattern not in _allowed_cache:
            methods = []
            for method in METHODS:
                for persona in ("admin key", "staff session"):
                    url = route.url({})
                    status = await _send_and_restore(fuzzer, route, method, url, persona, "probe")
                    if status != 405:
                        methods.append(method)
                        break
            _allowed_cache[route.pattern] = methods
        allowed[route] = _allowed_cache[route.pattern]
    return allowed


async def still_serves(fuzzer: Fuzzer) -> None:
    """Assert the site still answers a health probe and a chat."""
    await sync_to_async(_echo_serves)()
    health = await fuzzer.client.get("/health")
    assert health.status_code == 200, health.text
    chat = await fuzzer.client.post(
        "/chat", json={"prompt": "still there?"}, headers=fuzzer.personas["chat key"]
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["content"] == "Echo: still there?"


def _report(fuzzer: Fuzzer, started: float) -> str:
    lines = [f"{len(fuzzer.failures)} of {fuzzer.sent} requests failed:"]
    lines += [str(f) for f in fuzzer.failures[:60]]
    if len(fuzzer.failures) > 60:
        lines.append(f"... and {len(fuzzer.failures) - 60} more")
    return "\n".join(lines) + f"\n({time.monotonic() - started:.1f} s)"


class Rotation:
    """Hand out combinations in turn, so that over the whole matrix each meets every input.

    Sending every input with every method as every persona would take
    minutes; in turn, each route still meets every method and persona across
    its inputs, and each input every persona across the routes.
    """

    def __init__(self, items: list[Any], start: int = 0) -> None:
        assert items
        self.items = items
        self.turn = start

    def next(self) -> Any:
        self.turn += 1
        return self.items[self.turn % len(self.items)]


def _method_persona_rotation(fuzzer: Fuzzer, methods: list[str], start: int) -> Rotation | None:
    pairs = [(m, p) for m in methods for p in fuzzer.personas]
    return Rotation(pairs, start) if pairs else None


async def test_every_route_survives_hostile_path_parameters_and_queries(fuzzer: Fuzzer) -> None:
    started = time.monotonic()
    routes = every_route()
    assert len(routes) > 50, routes  # the admin, the pages, the API: the walk found them
    allowed = await allowed_methods(fuzzer, routes)
    personas = Rotation(list(fuzzer.personas))
    for number, route in enumerate(routes):
        calls = _method_persona_rotation(fuzzer, allowed[route], number)
        if calls is None:
            continue
        for parameter in route.parameters:
            for value in HOSTILE_PATH_VALUES:
                method, persona = calls.next()
                url = route.url({parameter: value})
                case = f"{parameter}={value[:12]}"
                await _send_and_restore(fuzzer, route, method, url, persona, case)
        if "GET" in allowed[route]:
            for query in HOSTILE_QUERIES:
                url = f"{route.url({})}?{query}"
                await fuzzer.send(route, "GET", url, personas.next(), f"?{query[:30]}")
    await still_serves(fuzzer)
    assert not fuzzer.failures, _report(fuzzer, started)


# --- the chat websocket ---------------------------------------------------------------

#: Hostile text frames, beside every field of a valid chat frame set to a wrong value.
HOSTILE_FRAMES = (
    "[" * 100_000,
    '{"type": "chat", "message": ' + "[" * 100_000,
    '{"type": "chat", "message": "a\\u0000b"}',
    '{"type": "chat", "message": "\\ud800", "provider": "\\udfff"}',
    '{"type": "chat", "message": "hi", "provider": "echo\\u0000"}',
    '{"type": "chat", "message": "hi", "conversation": 99999999999999999999999}',
    '{"type": "chat", "message": "hi", "conversation": -1}',
    '{"type": "chat", "message": NaN}',
    '{"type": "chat", "message": "' + "a" * 200_000 + '"}',
    " ",
    "null",
    "[]",
    "1",
    '"s"',
    "{",
    '{"type": "\\u0000"}',
    '{"type": ["chat"]}',
    '{"type": "cancel", "conversation": {}}',
    '{"type": "providers", "x": "\\ud800"}',
)
VALID_FRAME = {
    "type": "chat",
    "conversation": None,
    "message": "hi",
    "provider": "echo",
    "model": "echo-1",
}


@dataclass
class SocketFailure:
    persona: str
    case: str
    outcome: str

    def __str__(self) -> str:
        return f"/ws/chat/ [{self.persona}] {self.case[:60]!r} -> {self.outcome}"


async def _open_socket(headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=headers)
    connected, code = await communicator.connect(timeout=10)
    assert connected, code
    hello = await communicator.receive_json_from(timeout=10)
    assert hello["type"] == "providers"
    return communicator


async def _close(communicator: WebsocketCommunicator) -> None:
    """Disconnect, unless the consumer has already ended (crashed, or cancelled after a timeout)."""
    if not communicator.future.done():
        await communicator.disconnect()


async def _frame_outcome(communicator: WebsocketCommunicator, frame: str | bytes) -> str | None:
    """Send FRAME, then ask for the provider list; return None once that list arrives.

    The list proves the socket still serves whatever FRAME did (a "cancel"
    with nothing to cancel has no answer of its own); otherwise return what
    went wrong.
    """
    if isinstance(frame, bytes):
        await communicator.send_to(bytes_data=frame)
    else:
        await communicator.send_to(text_data=frame)
    await communicator.send_json_to({"type": "providers"})
    while True:
        try:
            output = await communicator.receive_output(timeout=5)
        except TimeoutError:
            return "no answer in 5 s"
        except Exception:
            lines = traceback.format_exc().strip().splitlines()
            frames = [line.strip() for line in lines if line.strip().startswith("File ")]
            return f"consumer crashed: {frames[-1] if frames else ''} | {lines[-1]}"
        if output["type"] == "websocket.close":
            return f"socket closed (code {output.get('code')})"
        if json.loads(output.get("text") or "{}").get("type") == "providers":
            return None


@pytest.fixture
def socket_personas(
    site: dict[str, dict[str, str]], settings: Any
) -> dict[str, list[tuple[bytes, bytes]]]:
    """The chat socket's two kinds of client: a chat key, and the chat page's session."""
    settings.ECHO_WS_MESSAGES_PER_MINUTE = 100_000  # the fuzz sends far more than a person
    session = site["staff session"]["Cookie"].split(";")[0]
    return {
        "chat key": [(b"authorization", site["chat key"]["Authorization"].encode())],
        "staff session": [
            (b"host", b"testserver"),
            (b"origin", b"http://testserver"),
            (b"cookie", session.encode()),
        ],
    }


async def test_the_chat_websocket_survives_hostile_frames(socket_personas) -> None:
    frames: list[tuple[str, str | bytes]] = [(frame[:60], frame) for frame in HOSTILE_FRAMES]
    frames += [(label, body.decode()) for label, body in mutated_bodies(VALID_FRAME)]
    frames += [("binary", b"\xff\xfe\x00"), ("binary JSON", b'{"type": "chat"}')]
    failures: list[SocketFailure] = []
    runtime.set_serving_loop(asyncio.get_running_loop())  # as a worker's: saves start here
    await runtime.load_all_from_database()
    for persona, headers in socket_personas.items():
        communicator = await _open_socket(headers)
        try:
            for label, frame in frames:
                outcome = await _frame_outcome(communicator, frame)
                if outcome is not None:
                    failures.append(SocketFailure(persona, label, outcome))
                    await _close(communicator)
                    communicator = await _open_socket(headers)
            # And the socket still chats.
            await communicator.send_json_to(
                {"type": "chat", "conversation": None, "message": "ok?"}
            )
            text = ""
            while True:  # chunks of earlier answers may still be on their way
                frame = await communicator.receive_json_from(timeout=5)
                assert frame["type"] != "error", frame
                text += frame.get("content", "") if frame["type"] == "chunk" else ""
                if frame["type"] == "done" and text.endswith("Echo: ok?"):
                    break
        finally:
            await _close(communicator)
    assert not failures, "\n".join(str(f) for f in failures)
