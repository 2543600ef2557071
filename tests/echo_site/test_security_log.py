"""A request Django refuses as suspicious: a 400 in the API's shape, one warning line in the log.

Anyone can send a wrong ``Host`` header, by the thousand: each used to be a
500-style ERROR with a 2 KB traceback in the log operators page on, and an
HTML page for an API client.
"""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from echo_site import asgi
from echo_site.security_log import MAX_MESSAGE, ClientFaultFilter
from tests.echo_site.test_hot_path import serve_async


def console_handler() -> logging.StreamHandler:
    return next(
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, ClientFaultFilter) for f in h.filters)
    )


@pytest.fixture
def console():
    handler = console_handler()
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


def security_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "django.security" in line]


def bad_host(path: str, headers: dict[str, str], method: str = "POST"):
    async def call():
        scope_host = {"host": "evil.example\u0007" + "x" * 2000}
        return await serve_async(asgi.application, path, b"{}", {**headers, **scope_host}, method)

    return async_to_sync(call)()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "method"),
    [("/v1/chat/completions", "POST"), ("/health", "GET"), ("/v1/models", "GET")],
)
def test_a_wrong_host_gets_a_json_400_naming_it_and_one_warning_line(
    console, chat_key, path: str, method: str
) -> None:
    _, key = chat_key
    answer = bad_host(path, {"authorization": f"Bearer {key}"}, method)
    assert answer.status == 400
    error = answer.json()["error"]
    assert error["param"] == "Host" if "param" in error else error["field"] == "Host"
    assert "evil.example" not in answer.body.decode()
    (line,) = security_lines(console.getvalue())
    assert "WARNING" in line and "Traceback" not in console.getvalue()
    assert len(line) < MAX_MESSAGE + 400
    assert "\u0007" not in line


@pytest.mark.django_db
def test_a_browser_with_a_wrong_host_gets_the_400_page(client: Client, console) -> None:
    page = client.get("/accounts/login/", headers={"host": "evil.example"})
    assert page.status_code == 400 and b"Bad Request" in page.content
    assert len(security_lines(console.getvalue())) == 1


def test_other_security_records_pass_unchanged() -> None:
    csrf = logging.LogRecord("django.security.csrf", logging.WARNING, "", 0, "Forbidden", (), None)
    assert ClientFaultFilter().filter(csrf) and csrf.levelno == logging.WARNING
    try:
        raise ValueError("app bug")
    except ValueError:
        exc_info = sys.exc_info()
    other = logging.LogRecord("django.request", logging.ERROR, "", 0, "boom", (), exc_info)
    assert ClientFaultFilter().filter(other)
    assert other.levelno == logging.ERROR and other.exc_info is exc_info
    record = logging.LogRecord(
        "django.security.DisallowedHost", logging.ERROR, "", 0, "%s", ("h" * 5000,), exc_info
    )
    record.request = object()
    assert ClientFaultFilter().filter(record)
    assert record.levelname == "WARNING" and record.exc_info is None
    assert len(record.getMessage()) == MAX_MESSAGE + 3 and not hasattr(record, "request")
    json.dumps(record.__dict__, default=str)
