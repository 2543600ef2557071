"""The chat socket's origin check compares scheme, host and port.

Before, only the host counted: a page at ``http://127.0.0.1:9999`` (any local
program serving a page) could open Echo's socket at ``127.0.0.1:8000`` with
the logged-in user's cookies and chat as them.
"""

# The fixtures imported from test_consumers are redefined as test parameters, as pytest wants.
# ruff: noqa: F811

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from echo_site.asgi import router
from plugins_api.chat.websocket_origins import parse_origin
from plugins_api.models import ClientAPIKey
from tests.echo_site.test_settings import ROOT, settings_of
from tests.plugins_api.test_consumers import (  # noqa: F401 - fixtures
    key_headers,
    providers,
    user_session,
)


async def handshake(
    headers: list[tuple[bytes, bytes]], scheme: str = "ws"
) -> tuple[bool, WebsocketCommunicator]:
    """Open /ws/chat/ with HEADERS over SCHEME (ws, or wss behind TLS); return whether accepted."""
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=headers)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect(timeout=10)
    if connected:
        await communicator.disconnect()
    return connected, communicator


def browser(cookie: str, host: bytes, origin: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", host), (b"origin", origin), (b"cookie", cookie.encode())]


@pytest.mark.parametrize(
    ("scheme", "host", "origin"),
    [
        ("ws", b"127.0.0.1:8000", b"http://127.0.0.1:8000"),
        ("ws", b"localhost:8000", b"http://LOCALHOST:8000"),
        ("ws", b"testserver", b"http://testserver"),
        ("ws", b"testserver:80", b"http://testserver"),
        ("wss", b"localhost", b"https://localhost"),
        ("wss", b"localhost:443", b"https://localhost:443"),
        ("ws", b"[::1]:8000", b"http://[::1]:8000"),
    ],
)
async def test_the_sites_own_origin_is_accepted(
    user_session: tuple[Any, str], scheme: str, host: bytes, origin: bytes
) -> None:
    accepted, _ = await handshake(browser(user_session[1], host, origin), scheme)
    assert accepted


@pytest.mark.parametrize(
    ("scheme", "host", "origin"),
    [
        ("ws", b"127.0.0.1:8000", b"http://127.0.0.1:9999"),  # another port
        ("ws", b"127.0.0.1:8000", b"http://127.0.0.1"),  # port 80 is another port
        ("ws", b"localhost:8000", b"https://localhost:8000"),  # another scheme
        ("wss", b"localhost", b"http://localhost"),  # a plain-HTTP page on a TLS site
        ("ws", b"127.0.0.1:8000", b"http://localhost:8000"),  # another host
        ("ws", b"127.0.0.1:8000", b"http://evil.example:8000"),
        ("ws", b"evil.example:8000", b"http://evil.example:8000"),  # a host not in ALLOWED_HOSTS
        ("ws", b"127.0.0.1:8000", b"null"),
        ("ws", b"127.0.0.1:8000", b"http://*.0.0.1:8000"),
        ("ws", b"127.0.0.1:8000", b"http://user@127.0.0.1:8000"),
    ],
    ids=[
        "other-port",
        "default-port",
        "other-scheme",
        "http-page-tls-site",
        "other-host",
        "foreign-host",
        "rebound-host",
        "null",
        "pattern",
        "userinfo",
    ],
)
async def test_another_origin_is_refused(
    user_session: tuple[Any, str], scheme: str, host: bytes, origin: bytes
) -> None:
    accepted, _ = await handshake(browser(user_session[1], host, origin), scheme)
    assert not accepted


async def test_a_proxy_trusted_for_tls_makes_the_site_origin_https(
    user_session: tuple[Any, str], settings: Any
) -> None:
    """Behind a proxy that ends TLS the server sees ws; the proxy's header says https."""
    headers = browser(user_session[1], b"localhost", b"https://localhost")
    assert not (await handshake(headers))[0]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert (await handshake([*headers, (b"x-forwarded-proto", b"https")]))[0]
    assert not (await handshake([*headers, (b"x-forwarded-proto", b"http")]))[0]


async def test_a_handshake_without_a_host_header_matches_only_listed_origins(
    user_session: tuple[Any, str], settings: Any
) -> None:
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"cookie", user_session[1].encode())]
    assert not (await handshake(headers))[0]
    settings.ECHO_WS_ALLOWED_ORIGINS = ["http://127.0.0.1:8000"]
    assert (await handshake(headers))[0]


async def test_a_listed_origin_is_accepted_with_its_scheme_and_port(
    user_session: tuple[Any, str], settings: Any
) -> None:
    settings.ECHO_WS_ALLOWED_ORIGINS = ["https://app.example.com", "http://*.example.org:8080"]
    cookie, host = user_session[1], b"127.0.0.1:8000"
    assert (await handshake(browser(cookie, host, b"https://app.example.com")))[0]
    assert (await handshake(browser(cookie, host, b"https://app.example.com:443")))[0]
    assert (await handshake(browser(cookie, host, b"http://chat.example.org:8080")))[0]
    assert not (await handshake(browser(cookie, host, b"http://app.example.com")))[0]
    assert not (await handshake(browser(cookie, host, b"https://app.example.com:8443")))[0]
    assert not (await handshake(browser(cookie, host, b"http://example.org.evil:8080")))[0]
    assert not (await handshake(browser(cookie, host, b"http://chat.example.org")))[0]


async def test_a_key_client_without_an_origin_is_accepted(
    providers: None, chat_key: tuple[ClientAPIKey, str]
) -> None:
    assert (await handshake([(b"host", b"127.0.0.1:8000"), *key_headers(chat_key[1])]))[0]


async def test_a_key_client_with_an_origin_of_another_port_is_refused(
    providers: None, chat_key: tuple[ClientAPIKey, str]
) -> None:
    headers = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:9999")]
    assert not (await handshake([*headers, *key_headers(chat_key[1])]))[0]


async def test_two_origin_headers_are_refused(user_session: tuple[Any, str]) -> None:
    headers = browser(user_session[1], b"127.0.0.1:8000", b"http://127.0.0.1:8000")
    assert not (await handshake([*headers, (b"origin", b"http://127.0.0.1:8000")]))[0]


def test_origins_parse_to_scheme_host_and_port() -> None:
    assert parse_origin("https://Chat.Example.com") == parse_origin("https://chat.example.com:443")
    assert parse_origin("http://[::1]:8000").host == "::1"
    for not_an_origin in ["null", "file://", "ftp://x", "http://x:99999", "http://x/path", ""]:
        assert parse_origin(not_an_origin) is None, not_an_origin


@pytest.mark.slow
def test_the_setting_refuses_what_is_not_an_origin(tmp_path: Any) -> None:
    result = settings_of(
        tmp_path, ECHO_WS_ALLOWED_ORIGINS="https://ok.example.com,chat.example.com"
    )
    assert result.returncode != 0
    assert "ECHO_WS_ALLOWED_ORIGINS: 'chat.example.com' is not an origin" in result.stderr


@pytest.mark.slow
def test_the_setting_defaults_to_csrf_trusted_origins(tmp_path: Any) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "echo_site.settings",
        "ECHO_VAR_DIR": str(tmp_path),
        "CSRF_TRUSTED_ORIGINS": "https://a.example.com",
    }
    env.pop("ECHO_WS_ALLOWED_ORIGINS", None)
    code = "from django.conf import settings as s; print(s.ECHO_WS_ALLOWED_ORIGINS)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['https://a.example.com']"
