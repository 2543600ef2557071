"""Echo's access log: one line per HTTP request, written once the answer is sent.

Its point is where the line is written: after the answer's last byte, never
between the answer's start and its body (uvicorn's own log, turned off in
``make run``, sat there). The line itself must be useful (status, time,
request id, the JSON fields apart) and safe (a hostile path can neither
forge a line nor make a huge one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from echo_site import access_log, asgi
from echo_site.access_log import MAX_TARGET, AccessLog, LineBatch, request_target
from echo_site.request_context import JsonLogFormatter, RequestIdFilter
from plugins_api.access.key_changes import new_secret
from tests.echo_site.test_hot_path import REQUEST_ID, USER, go_live, serve_async

ROOT = Path(__file__).resolve().parents[2]


def http_scope(path: str = "/v1/models", query: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": [],
        "client": ("10.1.2.3", 51000),
        **extra,
    }


class Recorder:
    """An app's and the log's events, in the order they happened."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.events.append(f"log {record.getMessage()}")
        self.records: list[logging.LogRecord] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.events.append(message["type"])


@pytest.fixture
def recorder():
    recorder = Recorder()
    access = logging.getLogger("echo.access")
    level = access.level
    access.setLevel(logging.INFO)
    access.addHandler(recorder.handler)
    yield recorder
    access.removeHandler(recorder.handler)
    access.setLevel(level)


def answering(status: int = 200, parts: int = 2, request_id: bytes = b"rid-7"):
    async def app(scope, receive, send) -> None:
        headers = [(b"content-type", b"text/plain"), (b"X-Request-ID", request_id)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i in range(parts):
            body = {"type": "http.response.body", "body": b"x", "more_body": i < parts - 1}
            await send(body)

    return app


def serve(app, scope: dict[str, Any], send) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    try:
        async_to_sync(AccessLog(app))(scope, receive, send)
    finally:
        access_log.flush()


def test_the_line_is_written_after_the_last_byte_of_a_stream(recorder) -> None:
    serve(answering(parts=3), http_scope(), recorder.send)
    assert recorder.events[:4] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
        "http.response.body",
    ]
    assert len(recorder.events) == 5
    line = recorder.events[4]
    assert re.fullmatch(r'log 10\.1\.2\.3:51000 - "GET /v1/models HTTP/1\.1" 200 \d+\.\dms', line)


def test_the_line_carries_the_answers_request_id_and_its_fields(recorder) -> None:
    records: list[logging.LogRecord] = []
    recorder.handler.emit = records.append
    recorder.handler.addFilter(RequestIdFilter())
    serve(answering(status=404), http_scope(query=b"a=1"), recorder.send)
    (record,) = records
    assert record.request_id == "rid-7"
    entry = json.loads(JsonLogFormatter().format(record))
    assert entry["logger"] == "echo.access"
    assert entry["request_id"] == "rid-7"
    assert entry["status"] == 404
    assert entry["method"] == "GET"
    assert entry["path"] == "/v1/models?a=1"
    assert isinstance(entry["duration_ms"], float)
    assert '"GET /v1/models?a=1 HTTP/1.1" 404' in entry["message"]


def test_a_failure_before_the_answer_is_logged_as_500_and_still_raised(recorder) -> None:
    async def broken(scope, receive, send) -> None:
        raise RuntimeError("view bug")

    with pytest.raises(RuntimeError):
        serve(broken, http_scope(), recorder.send)
    assert len(recorder.events) == 1 and '" 500 ' in recorder.events[0]


def test_a_client_that_left_before_any_answer_is_logged_without_a_status(recorder) -> None:
    async def gone(scope, receive, send) -> None:
        return None

    serve(gone, http_scope(), recorder.send)
    assert len(recorder.events) == 1 and '" - ' in recorder.events[0]


def test_a_hostile_target_can_neither_forge_a_line_nor_make_a_huge_one(recorder) -> None:
    forged = '/v1/x\r\n10.0.0.1:1 - "GET /admin/ HTTP/1.1" 200\x00\x1b[31m'
    serve(answering(), http_scope(path=forged, query=b"q=" + b"z" * 100_000), recorder.send)
    line = recorder.events[-1]
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert "\\x0d\\x0a" in line and "\\x1b" in line
    assert len(line) < MAX_TARGET + 200
    target = request_target(http_scope(path="/p", query=b"q=" + b"z" * 1000))
    assert len(target) == MAX_TARGET + 3 and target.endswith("...")


@pytest.mark.parametrize(
    "path, query, shown",
    [
        ("/health", b"api_key={key}", "/health?api_key=****"),
        (
            "/v1/models",
            b"limit=3&Token={key}&KEY=x;sig=y&monkey=2",
            "/v1/models?limit=3&Token=****&KEY=****;sig=****&monkey=2",
        ),
        ("/v1/{key}/chat", b"", "/v1/echo-****/chat"),
        ("/v1/models", b"q={key}", "/v1/models?q=echo-****"),
        ("/v1/models", b"q={cut}", "/v1/models?q=echo-****"),  # a part of one
        ("/v1/models", b"model=echo-1&provider=echo", "/v1/models?model=echo-1&provider=echo"),
    ],
)
def test_a_key_in_the_request_target_is_never_written(recorder, path, query, shown) -> None:
    """Echo reads keys from headers only; a client that puts one in its URL does not see it logged."""
    key, _, _ = new_secret()  # a key as Echo issues them
    values = {"key": key, "cut": key[:24]}
    scope = http_scope(path=path.format(**values), query=query.decode().format(**values).encode())
    serve(answering(), scope, recorder.send)
    line = recorder.events[-1]
    assert f'"GET {shown} HTTP/1.1"' in line
    assert key[5:13] not in line


def test_websockets_and_a_silenced_log_pass_through_untouched(recorder) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope, receive, send) -> None:
        seen.append(scope)

    serve(app, {"type": "websocket", "path": "/ws/chat/"}, recorder.send)
    logging.getLogger("echo.access").setLevel(logging.WARNING)  # ECHO_ACCESS_LOG=false
    serve(app, http_scope(), recorder.send)
    assert len(seen) == 2 and recorder.events == []


def test_the_setting_decides_the_loggers_level(monkeypatch) -> None:
    from django.utils.log import configure_logging

    from echo_site import settings as site_settings

    assert site_settings.LOGGING["loggers"]["echo.access"]["level"] == "INFO"
    quiet = json.loads(json.dumps(site_settings.LOGGING))
    quiet["loggers"]["echo.access"]["level"] = "WARNING"
    access = logging.getLogger("echo.access")
    before = access.level
    try:
        configure_logging("logging.config.dictConfig", quiet)
        assert not access.isEnabledFor(logging.INFO)
    finally:
        configure_logging("logging.config.dictConfig", site_settings.LOGGING)
        access.setLevel(before)


@pytest.mark.django_db
def test_a_chat_call_through_the_application_is_logged_once_after_its_answer(
    recorder, echo_config, chat_key
) -> None:
    go_live(echo_config)
    _, key = chat_key
    records: list[logging.LogRecord] = []
    recorder.handler.emit = records.append
    recorder.handler.addFilter(RequestIdFilter())
    body = json.dumps({"model": "echo/echo-1", "messages": USER}).encode()
    answer = async_to_sync(serve_async)(
        asgi.application,
        "/v1/chat/completions",
        body,
        {"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert answer.status == 200
    access_log.flush()
    (record,) = records
    assert record.getMessage().startswith(
        '127.0.0.1:40000 - "POST /v1/chat/completions HTTP/1.1" 200'
    )
    assert record.request_id == REQUEST_ID
    assert key not in record.getMessage() and key[-6:] not in json.dumps(
        record.__dict__, default=str
    )


def test_every_recipe_turns_uvicorns_own_access_log_off() -> None:
    recipes = {
        "Makefile": (ROOT / "Makefile").read_text(),
        "systemd": (ROOT / "deploy" / "systemd" / "echo@.service").read_text(),
        "Dockerfile": (ROOT / "deploy" / "Dockerfile").read_text(),
    }
    for name, text in recipes.items():
        assert "--no-access-log" in text, name
    from bench.processes import server_commands

    assert "--no-access-log" in server_commands("bin", 1)["uvicorn"]
    assert "--no-access-log" in shlex.split(
        (ROOT / "docs" / "OPERATIONS.md")
        .read_text()
        .split("```bash\nuvicorn", 1)[1]
        .split("```")[0]
    )


# --- batches -------------------------------------------------------------------


def _line(n: int, ended: float = 1_700_000_000.25) -> access_log.Line:
    scope = http_scope(path=f"/v1/n{n}")
    return (scope, 200, [(b"x-request-id", f"rid-{n}".encode())], 0.002, ended)


def test_lines_wait_for_the_batch_then_are_written_in_order_with_their_own_time(
    recorder,
) -> None:
    records: list[logging.LogRecord] = []
    recorder.handler.emit = records.append
    recorder.handler.addFilter(RequestIdFilter())
    written: list[int] = []

    async def scenario() -> None:
        batch = LineBatch(access_log._write, seconds=0.05)
        batch.add(_line(1, ended=1_700_000_000.25))
        batch.add(_line(2, ended=1_700_000_001.5))
        written.append(len(records))  # nothing yet: the batch waits
        assert len(batch) == 2
        await asyncio.sleep(0.2)
        written.append(len(records))
        assert len(batch) == 0

    asyncio.run(scenario())
    assert written == [0, 2]
    first, second = records
    assert first.getMessage().startswith('10.1.2.3:51000 - "GET /v1/n1 HTTP/1.1" 200 2.0ms')
    assert second.getMessage().startswith('10.1.2.3:51000 - "GET /v1/n2 HTTP/1.1" 200')
    assert (first.request_id, second.request_id) == ("rid-1", "rid-2")
    assert first.created == 1_700_000_000.25 and first.msecs == 250.0
    assert second.created == 1_700_000_001.5 and second.msecs == 500.0
    assert second.relativeCreated - first.relativeCreated == pytest.approx(1250.0, abs=0.01)
    entry = json.loads(JsonLogFormatter().format(first))
    assert entry["time"].startswith("2023-11-14T22:13:20")
    assert entry["path"] == "/v1/n1" and entry["status"] == 200


def test_a_full_batch_is_written_at_once_so_a_flood_holds_no_more_than_a_batch(recorder) -> None:
    async def scenario() -> list[int]:
        batch = LineBatch(access_log._write, lines=10, seconds=60)
        sizes = []
        for n in range(35):
            batch.add(_line(n))
            sizes.append(len(batch))
        return sizes

    sizes = asyncio.run(scenario())
    assert max(sizes) == 9  # the tenth line writes the ten
    assert len(recorder.events) == 30
    assert [event.split('"')[1] for event in recorder.events[:2]] == [
        "GET /v1/n0 HTTP/1.1",
        "GET /v1/n1 HTTP/1.1",
    ]


def test_with_no_event_loop_a_line_is_written_at_once(recorder) -> None:
    batch = LineBatch(access_log._write, seconds=60)
    batch.add(_line(1))
    assert len(batch) == 0 and len(recorder.events) == 1


def test_lines_left_on_a_loop_that_went_away_go_out_with_the_next_loops_line(recorder) -> None:
    batch = LineBatch(access_log._write, seconds=0.05)

    async def add(n: int) -> None:
        batch.add(_line(n))

    asyncio.run(add(1))  # its loop is closed before its timer fires
    assert recorder.events == []
    asyncio.run(add(2))  # the next loop's timer: both lines wait for it

    async def wait() -> None:
        batch.add(_line(3))
        await asyncio.sleep(0.2)

    asyncio.run(wait())
    assert [event.split('"')[1] for event in recorder.events] == [
        "GET /v1/n1 HTTP/1.1",
        "GET /v1/n2 HTTP/1.1",
        "GET /v1/n3 HTTP/1.1",
    ]


def test_one_line_that_cannot_be_written_costs_no_other(recorder, caplog) -> None:
    def write(line: access_log.Line) -> None:
        if line[0]["path"] == "/v1/n2":
            raise ValueError("broken line")
        access_log._write(line)

    batch = LineBatch(write, seconds=60)
    for n in (1, 2, 3):
        with batch._lock:
            batch._pending.append(_line(n))
    with caplog.at_level(logging.ERROR, logger="echo_site.access_log"):
        batch.flush()
    assert [event.split('"')[1] for event in recorder.events] == [
        "GET /v1/n1 HTTP/1.1",
        "GET /v1/n3 HTTP/1.1",
    ]
    assert "could not be written" in caplog.text


def test_the_lifespans_shutdown_writes_the_waiting_lines(recorder, monkeypatch) -> None:
    class Lifecycle:
        async def stop(self) -> None:
            return None

    class Runtime:
        lifecycle = Lifecycle()

    monkeypatch.setattr(asgi.runtime, "current", lambda: Runtime())
    access_log.pending.add(_line(1))  # no loop here: written at once; keep one waiting instead
    recorder.events.clear()

    async def scenario() -> None:
        access_log.pending.add(_line(2))
        assert len(access_log.pending) == 1
        messages = iter([{"type": "lifespan.shutdown"}])
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await asgi._lifespan(receive, send)
        assert sent == [{"type": "lifespan.shutdown.complete"}]
        assert len(access_log.pending) == 0

    asyncio.run(scenario())
    assert [event.split('"')[1] for event in recorder.events] == ["GET /v1/n2 HTTP/1.1"]
