"""Bodies are bounded where they are read: no credential, a bad key or too many bytes are refused early.

Each attack is sent over a raw connection to Echo as ``make run`` serves it
(uvicorn, in a subprocess). The proof that a body was not read is that the
answer comes while the client has sent only part of it, or none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.echo_site.production_server import ROOT, ProductionEcho, chunks_of, raw_post

# Slow: a production server in a process of its own, and fresh interpreters.
pytestmark = pytest.mark.slow

LIMIT = 4 * 1024 * 1024
# Over Django's 2.5 MB default for request.body, under Echo's limit: the size
# of a request with a base64 image.
UNDER_LIMIT = 3 * 1024 * 1024
# Loopback socket buffers hold a few MB that the client "sends" before the
# server reads anything; a server that read the body would have taken it all.
UNREAD_SLACK = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionEcho]:
    echo = ProductionEcho(
        tmp_path_factory.mktemp("body-limit"), settings={"ECHO_MAX_BODY_BYTES": str(LIMIT)}
    ).start()
    yield echo
    echo.stop()


def bearer(server: ProductionEcho) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key}"}


def padded_chat(size: int) -> Iterator[bytes]:
    """Yield a valid chat request of SIZE bytes: a small JSON object, then whitespace."""
    request = json.dumps({"prompt": "hi"}).encode()
    yield request
    yield from chunks_of(size - len(request))


# --- no credential ------------------------------------------------------------


def test_an_unauthenticated_200_mb_chunked_body_is_refused_before_it_is_read(
    server: ProductionEcho,
) -> None:
    # Warm the worker up first: the first requests allocate what every request reuses.
    for _ in range(3):
        raw_post(server.port, "/chat", body=padded_chat(1024), headers=bearer(server))
    before = server.rss()

    answer = raw_post(server.port, "/chat", body=chunks_of(200 * 1024 * 1024))

    grown = server.rss() - before
    assert answer.status == 401
    assert answer.body["error"]["type"] == "authentication_required"
    assert answer.headers["www-authenticate"] == 'Bearer realm="echo"'
    assert answer.headers["connection"] == "close"
    assert answer.sent < UNREAD_SLACK, f"the server read {answer.sent} bytes before answering"
    assert answer.seconds < 5
    assert grown < 16 * 1024 * 1024, f"the server's RSS grew by {grown} bytes"


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/chat", lambda body: body["error"]["type"] == "authentication_required"),
        (
            "/v1/messages",
            lambda body: body["type"] == "error"
            and body["error"]["type"] == "authentication_error",
        ),
        (
            "/v1/chat/completions",
            lambda body: body["error"]["code"] == "invalid_api_key"
            and body["error"]["type"] == "invalid_request_error",
        ),
        ("/plugins/echo/config", lambda body: body["error"]["type"] == "authentication_required"),
        ("/api/providers/", lambda body: body["error"]["type"] == "authentication_required"),
    ],
)
def test_no_credential_gets_401_in_the_apis_shape_before_the_declared_body(
    server: ProductionEcho, path: str, shape
) -> None:
    # Declared 1 MB, sent 1 KB: the server answers without waiting for the rest.
    answer = raw_post(server.port, path, body=chunks_of(1024), content_length=1024 * 1024)

    assert answer.status == 401
    assert shape(answer.body), answer.body
    assert answer.sent <= 1024


def test_a_session_cookie_is_left_for_the_view_to_check(server: ProductionEcho) -> None:
    def slow_body() -> Iterator[bytes]:
        yield b" " * 1024
        time.sleep(1)  # long enough for an early refusal to arrive first
        yield from chunks_of(1024 * 1024 - 1024)

    answer = raw_post(
        server.port,
        "/chat",
        body=slow_body(),
        content_length=1024 * 1024,
        headers={"Cookie": "sessionid=not-a-session"},
    )

    # Django read the whole body, then the view found no logged-in user.
    assert answer.status == 401
    assert answer.sent > 1024 * 1024 - 64 * 1024  # up to one chunk not yet counted


# --- a bad key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "error_type"),
    [
        ("/chat", {"Authorization": "Bearer echo-not-a-key"}, "authentication_required"),
        ("/chat", {"x-api-key": "echo-not-a-key"}, "authentication_required"),
        ("/chat", {"Authorization": "Basic dXNlcjpwdw=="}, "authentication_required"),
        ("/v1/messages", {"x-api-key": "echo-not-a-key"}, "authentication_error"),
        ("/v1/chat/completions", {"Authorization": "Bearer echo-nope"}, "invalid_request_error"),
    ],
)
def test_an_invalid_key_gets_401_before_the_body_is_read(
    server: ProductionEcho, path: str, headers: dict[str, str], error_type: str
) -> None:
    answer = raw_post(
        server.port, path, body=chunks_of(1024), content_length=1024 * 1024, headers=headers
    )

    assert answer.status == 401
    assert answer.body["error"]["type"] == error_type
    assert answer.sent <= 1024
    assert "echo-not-a-key" not in json.dumps(answer.body)


def test_a_chunked_body_with_an_invalid_key_is_not_read_either(server: ProductionEcho) -> None:
    answer = raw_post(
        server.port,
        "/chat",
        body=chunks_of(100 * 1024 * 1024),
        headers={"Authorization": "Bearer echo-unknown"},
    )

    assert answer.status == 401
    assert answer.sent < UNREAD_SLACK


# --- over the limit ----------------------------------------------------------------


TOO_LARGE_SHAPES = [
    (
        "/chat",
        lambda body: body
        == {"error": {"type": "request_too_large", "message": body["error"]["message"]}},
    ),
    (
        "/v1/messages",
        lambda body: body["type"] == "error" and body["error"]["type"] == "request_too_large",
    ),
    (
        "/v1/chat/completions",
        lambda body: body["error"]["code"] == "request_too_large"
        and body["error"]["type"] == "invalid_request_error"
        and body["error"]["param"] is None,
    ),
]


@pytest.mark.parametrize(("path", "shape"), TOO_LARGE_SHAPES)
def test_a_declared_length_over_the_limit_gets_413_before_any_body(
    server: ProductionEcho, path: str, shape
) -> None:
    answer = raw_post(
        server.port,
        path,
        body=iter(()),
        content_length=LIMIT + 1,
        headers={"Authorization": f"Bearer {server.key}", "x-api-key": server.key},
    )

    assert answer.status == 413
    assert shape(answer.body), answer.body
    assert str(LIMIT) in json.dumps(answer.body)
    assert answer.sent == 0


@pytest.mark.parametrize(("path", "shape"), TOO_LARGE_SHAPES)
def test_a_chunked_body_is_refused_once_it_passes_the_limit(
    server: ProductionEcho, path: str, shape
) -> None:
    answer = raw_post(server.port, path, body=chunks_of(100 * 1024 * 1024), headers=bearer(server))

    assert answer.status == 413
    assert shape(answer.body), answer.body
    # Sent counts a chunk once it is handed to the kernel: up to one chunk lags.
    assert LIMIT - 64 * 1024 < answer.sent < LIMIT + UNREAD_SLACK


def test_pages_and_the_admin_are_bounded_but_not_asked_for_a_key(server: ProductionEcho) -> None:
    # The login form has no key to show: it reaches Django (whose CSRF check refuses it).
    login = raw_post(server.port, "/accounts/login/", body=[b"{}"], content_length=2)
    assert login.status == 403
    assert "text/html" in login.headers["content-type"]

    answer = raw_post(server.port, "/admin/login/", body=chunks_of(20 * 1024 * 1024))
    assert answer.status == 413
    assert answer.body["error"]["type"] == "request_too_large"


# --- under the limit ---------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_under_the_limit_is_served(server: ProductionEcho, framing: str) -> None:
    # First a bad key: its early refusal must leave the worker's database access sound.
    raw_post(server.port, "/chat", body=[b"{}"], content_length=2, headers={"x-api-key": "bad"})

    answer = raw_post(
        server.port,
        "/chat",
        body=padded_chat(UNDER_LIMIT),
        content_length=UNDER_LIMIT if framing == "content-length" else None,
        headers=bearer(server),
    )

    assert answer.status == 200, answer.body
    assert answer.body["content"] == "Echo: hi"


def test_a_body_of_exactly_the_limit_is_served(server: ProductionEcho) -> None:
    answer = raw_post(server.port, "/chat", body=padded_chat(LIMIT), headers=bearer(server))

    assert answer.status == 200, answer.body
    assert answer.body["content"] == "Echo: hi"


# --- the setting --------------------------------------------------------------------


def max_body_setting(tmp_path: Path, value: str | None) -> subprocess.CompletedProcess[str]:
    env = {
        "ECHO_ENV": "test",
        "ECHO_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "echo_site.settings",
    }
    if value is not None:
        env["ECHO_MAX_BODY_BYTES"] = value
    code = (
        "from django.conf import settings as s;"
        "print(s.ECHO_MAX_BODY_BYTES, s.DATA_UPLOAD_MAX_MEMORY_SIZE)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_limit_defaults_to_8_mib_and_django_follows_it(tmp_path: Path) -> None:
    result = max_body_setting(tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(8 * 1024 * 1024)] * 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "ECHO_MAX_BODY_BYTES must be an integer, got 'lots'."),
        ("1000", "ECHO_MAX_BODY_BYTES must be at least 65536 (64 KiB)."),
        ("-1", "ECHO_MAX_BODY_BYTES must be at least 65536 (64 KiB)."),
    ],
)
def test_a_bad_limit_stops_the_start_naming_the_variable(
    tmp_path: Path, value: str, message: str
) -> None:
    result = max_body_setting(tmp_path, value)
    assert result.returncode != 0
    assert f"ImproperlyConfigured: {message}" in result.stderr
