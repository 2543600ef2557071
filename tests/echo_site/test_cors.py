"""CORS: off by default; with ``ECHO_CORS_ORIGINS``, other origins' pages may call the API from a browser.

Checked over real HTTP against Echo as ``make run`` serves it (uvicorn in a
process of its own), and in Debian's Chromium: a page served from another
origin calls ``/v1/chat/completions`` with a key, as a browser app does.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from echo_site.cors import origin_rules
from tests.echo_site.production_server import ProductionEcho
from tests.server_processes import free_port
from tests.test_chat_page_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.slow

ALLOWED = "https://app.example.com"
CHAT = {"model": "echo/echo-1", "messages": [{"role": "user", "content": "hi"}]}


def preflight(url: str, origin: str, **headers: str) -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
            **headers,
        },
    )


@pytest.fixture(scope="module")
def page_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def cors_server(
    tmp_path_factory: pytest.TempPathFactory, page_port: int
) -> Iterator[ProductionEcho]:
    origins = f"{ALLOWED},https://*.corp.example,http://127.0.0.1:{page_port}"
    echo = ProductionEcho(
        tmp_path_factory.mktemp("cors"), settings={"ECHO_CORS_ORIGINS": origins}
    ).start()
    yield echo
    echo.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionEcho]:
    echo = ProductionEcho(tmp_path_factory.mktemp("no-cors")).start()
    yield echo
    echo.stop()


def test_off_by_default_no_cors_headers_and_preflights_are_not_answered(plain_server) -> None:
    answer = preflight(f"{plain_server.url}/v1/chat/completions", ALLOWED)
    assert "access-control-allow-origin" not in answer.headers
    called = httpx.post(
        f"{plain_server.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {plain_server.key}", "Origin": ALLOWED},
    )
    assert called.status_code == 200
    assert not [h for h in called.headers if h.startswith("access-control-")]


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions", "/v1/messages", "/api/keys/"])
@pytest.mark.parametrize("origin", [ALLOWED, "https://team.corp.example"])
def test_an_allowed_origins_preflight_is_answered(cors_server, path: str, origin: str) -> None:
    answer = preflight(f"{cors_server.url}{path}", origin)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == origin
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert answer.headers["access-control-allow-headers"] == (
        "authorization, content-type, x-stainless-os"
    )
    assert answer.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in answer.headers


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "http://app.example.com", "https://corp.example", "null"],
)
def test_other_origins_are_refused(cors_server, origin: str) -> None:
    answer = preflight(f"{cors_server.url}/v1/chat/completions", origin)
    assert answer.status_code == 400
    assert "access-control-allow-origin" not in answer.headers
    called = httpx.post(
        f"{cors_server.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {cors_server.key}", "Origin": origin},
    )
    assert "access-control-allow-origin" not in called.headers


def test_answers_and_early_refusals_carry_the_headers(cors_server) -> None:
    url = f"{cors_server.url}/v1/chat/completions"
    answered = httpx.post(
        url, json=CHAT, headers={"Authorization": f"Bearer {cors_server.key}", "Origin": ALLOWED}
    )
    assert answered.status_code == 200
    assert answered.headers["access-control-allow-origin"] == ALLOWED
    exposed = answered.headers["access-control-expose-headers"]
    assert "x-request-id" in exposed and "retry-after" in exposed
    assert "x-ratelimit-remaining-requests" in exposed
    # Refused before the body is read (echo_site.request_body_limit): readable by the app too.
    refused = httpx.post(url, json=CHAT, headers={"Origin": ALLOWED})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ALLOWED
    # A hostile preflight changes nothing and costs nothing.
    huge = preflight(url, ALLOWED, **{"Access-Control-Request-Method": "X" * 4000})
    assert huge.status_code == 400


def test_origin_rules_match_subdomains_only() -> None:
    exact, wildcard = origin_rules(["https://a.test", "https://*.b.test"])
    assert exact == ["https://a.test"]
    assert re.fullmatch(wildcard, "https://x.b.test")
    assert re.fullmatch(wildcard, "https://x.y.b.test")
    assert not re.fullmatch(wildcard, "https://b.test")
    assert not re.fullmatch(wildcard, "https://xb.test")
    assert not re.fullmatch(wildcard, "http://x.b.test")
    assert origin_rules(["*"]) == (["*"], None)


class _Page(http.server.BaseHTTPRequestHandler):
    """Serves one page of a browser app on its own origin."""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"<!doctype html><title>app</title><p>app</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def app_pages(page_port: int) -> Iterator[dict[str, str]]:
    """Two pages on two origins: one allowed by the CORS server, one not."""
    servers = []
    urls = {}
    for label, port in (("allowed", page_port), ("other", free_port())):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Page)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        urls[label] = f"http://127.0.0.1:{port}/"
    yield urls
    for server in servers:
        server.shutdown()


FETCH = """async ([url, key, body]) => {
  try {
    const r = await fetch(url, {method: "POST", body: JSON.stringify(body),
      headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"}});
    return {status: r.status, id: r.headers.get("x-request-id"), body: await r.json()};
  } catch (e) { return {error: String(e)}; }
}"""


def test_a_browser_app_on_an_allowed_origin_calls_echo(
    cors_server, plain_server, app_pages
) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page()
        page.goto(app_pages["allowed"])
        url = f"{cors_server.url}/v1/chat/completions"
        answer = page.evaluate(FETCH, [url, cors_server.key, CHAT])
        assert answer.get("status") == 200, answer
        assert answer["body"]["choices"][0]["message"]["content"] == "Echo: hi"
        assert answer["id"]  # an exposed header is readable
        wrong_key = page.evaluate(FETCH, [url, "echo-nope", CHAT])
        assert wrong_key.get("status") == 401, wrong_key  # the app can read why

        page.goto(app_pages["other"])
        refused = page.evaluate(FETCH, [url, cors_server.key, CHAT])
        assert "error" in refused, refused  # the browser blocks an origin not listed
        page.goto(app_pages["allowed"])
        off = page.evaluate(
            FETCH, [f"{plain_server.url}/v1/chat/completions", plain_server.key, CHAT]
        )
        assert "error" in off, off  # CORS is off by default
        browser.close()
