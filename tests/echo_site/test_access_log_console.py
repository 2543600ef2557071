"""Access-log lines written straight to the console handler: the same bytes as through ``logging``.

``echo_site.access_log_console`` writes a batch of lines itself when they
would reach only Echo's console handler. Its whole promise is that nothing
changes but the cost: for every line, hostile ones included, in both
formats, the bytes are those ``logging`` writes, a live key redacted the
same way, and any other set-up goes through ``logging``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.utils.module_loading import import_string

from echo_site import access_log
from echo_site.access_log_console import TEXT_FORMAT, ConsoleLines
from providers.runtime import process as runtime

KEY = "sk-live-0123456789abcdefghijKLMNOPQRSTuvwxyz"
ENDED = 1_700_000_000.25


class CountingStream(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def console_handler(log_format: str, stream: io.StringIO) -> logging.Handler:
    """Return the console handler ``settings.LOGGING`` configures, for LOG_FORMAT, writing to STREAM."""
    config = settings.LOGGING
    spec = config["handlers"]["console"]
    handler = import_string(spec["class"])(stream)
    formatter = config["formatters"][log_format]
    handler.setFormatter(
        import_string(formatter["()"])()
        if "()" in formatter
        else logging.Formatter(formatter["format"])
    )
    for name in spec["filters"]:
        handler.addFilter(import_string(config["filters"][name]["()"])())
    return handler


@contextmanager
def only_handler(handler: logging.Handler) -> Iterator[None]:
    """Make HANDLER the root logger's only handler (pytest's own put back after)."""
    root = logging.getLogger()
    kept = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        yield
    finally:
        root.handlers[:] = kept


@pytest.fixture
def live_key(monkeypatch) -> str:
    """A provider key live in this process, as every log record is redacted against."""
    secrets = (KEY,)
    monkeypatch.setattr(runtime.registry, "all_secret_values", lambda: secrets)
    return KEY


def line(
    path: str = "/v1/chat/completions",
    *,
    query: bytes = b"",
    status: Any = 200,
    request_id: bytes | None = b"rid-1",
    method: str = "POST",
    seconds: float = 0.0014,
    ended: float = ENDED,
) -> access_log.Line:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [],
        "client": ("10.1.2.3", 51000),
    }
    headers = [(b"content-type", b"application/json")]
    if request_id is not None:
        headers.append((b"X-Request-ID", request_id))
    return (scope, status, headers, seconds, ended)


def hostile_lines(key: str) -> list[access_log.Line]:
    return [
        line(),
        line(query=f"api_key={key}".encode()),  # a provider's key in the query string
        line(f"/v1/echo-{key[8:40]}", query=b"token=t0k3n"),  # an Echo key, a credential
        line(f"/v1/{key[3:30]}"),  # a part of one in the path
        line(request_id=key[:30].encode()),  # and in the client's own request id
        line(status="-", request_id=None),  # the client left before any answer
        line(status=500, seconds=12.34567),
        line("/v1/\x1b[31m\nforged 200 OK\x7f"),  # control characters
        line("/" + "a" * 5000),  # longer than a line may hold
        line("/v1/%s%d%(x)s"),  # format directives, taken as text
        line(method="PR\u00e9", ended=ENDED + 1.999),  # another second, a non-ASCII method
    ]


def written_by_logging(handler: logging.Handler, lines: list[access_log.Line]) -> str:
    with only_handler(handler):
        for one in lines:
            access_log._write(one)
    return handler.stream.getvalue()


def written_at_once(handler: logging.Handler, lines: list[access_log.Line]) -> str:
    with only_handler(handler):
        assert access_log._write_to_console(lines) is True
    return handler.stream.getvalue()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_console_path_writes_the_bytes_logging_writes(live_key, log_format) -> None:
    lines = hostile_lines(live_key)
    expected = written_by_logging(console_handler(log_format, io.StringIO()), lines)
    stream = CountingStream()
    got = written_at_once(console_handler(log_format, stream), lines)
    assert got == expected
    assert stream.writes == 1  # the batch in one write
    assert got.count("\n") == len(lines)
    for run in (live_key[i : i + 8] for i in range(len(live_key) - 7)):
        assert run not in got


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_with_no_live_key_the_bytes_are_the_same_too(monkeypatch, log_format) -> None:
    monkeypatch.setattr(runtime.registry, "all_secret_values", lambda: ())
    lines = hostile_lines(KEY)
    expected = written_by_logging(console_handler(log_format, io.StringIO()), lines)
    assert written_at_once(console_handler(log_format, io.StringIO()), lines) == expected


def test_the_settings_console_handler_is_the_one_recognised() -> None:
    assert settings.LOGGING["formatters"]["text"]["format"] == TEXT_FORMAT
    for log_format in ("text", "json"):
        with only_handler(console_handler(log_format, io.StringIO())):
            assert ConsoleLines.of(logging.getLogger("echo.access")) is not None


class JsonSubclass(logging.Formatter):
    pass


def _changed(change: str, handler: logging.Handler) -> list[logging.Handler]:
    """Apply CHANGE to HANDLER's set-up; return the root's handlers it makes."""
    if change == "another handler on the root":
        return [handler, logging.StreamHandler(io.StringIO())]
    if change == "a formatter of its own":
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    elif change == "a formatter subclass":
        handler.setFormatter(JsonSubclass(TEXT_FORMAT))
    elif change == "a level above INFO":
        handler.setLevel(logging.WARNING)
    elif change == "a filter of its own":
        handler.addFilter(lambda record: "health" not in record.getMessage())
    elif change == "a handler class of its own":
        wrapped = logging.FileHandler("/dev/null", delay=True)
        wrapped.setFormatter(handler.formatter)
        wrapped.filters = handler.filters
        return [wrapped]
    return [handler]


@pytest.mark.parametrize(
    "change",
    [
        "another handler on the root",
        "a formatter of its own",
        "a formatter subclass",
        "a level above INFO",
        "a filter of its own",
        "a handler class of its own",
        "the INFO level renamed",
    ],
)
def test_any_other_set_up_goes_through_logging(change) -> None:
    handlers = _changed(change, console_handler("json", io.StringIO()))
    root = logging.getLogger()
    kept = root.handlers[:]
    root.handlers[:] = handlers
    if change == "the INFO level renamed":
        logging.addLevelName(logging.INFO, "NOTE")
    try:
        assert ConsoleLines.of(logging.getLogger("echo.access")) is None
        assert access_log._write_to_console([line()]) is False
    finally:
        root.handlers[:] = kept
        logging.addLevelName(logging.INFO, "INFO")


@pytest.mark.parametrize(
    "where", ["a handler on echo.access", "a handler on echo", "no propagation"]
)
def test_a_handler_or_a_stop_on_the_way_up_goes_through_logging(where) -> None:
    access = logging.getLogger("echo.access")
    echo = logging.getLogger("echo")
    extra = logging.StreamHandler(io.StringIO())
    with only_handler(console_handler("text", io.StringIO())):
        if where == "no propagation":
            access.propagate = False
            try:
                assert ConsoleLines.of(access) is None
            finally:
                access.propagate = True
            return
        target = access if where == "a handler on echo.access" else echo
        target.addHandler(extra)
        try:
            assert ConsoleLines.of(access) is None
        finally:
            target.removeHandler(extra)
        assert ConsoleLines.of(access) is not None


def test_lines_that_cannot_be_written_are_reported_not_raised() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    reports: list[logging.LogRecord] = []
    failures = logging.getLogger("echo_site.access_log")
    recorder = logging.Handler()
    recorder.emit = reports.append
    failures.addHandler(recorder)
    failures.propagate = False
    try:
        with only_handler(console_handler("text", Broken())):
            batch = access_log.LineBatch(access_log._write, write_all=access_log._write_to_console)
            batch._pending.extend([line(), line()])
            batch.flush()  # no exception out of the flush
    finally:
        failures.removeHandler(recorder)
        failures.propagate = True
    assert [r.getMessage() for r in reports] == ["2 access-log lines could not be written"]
    assert len(batch) == 0
