"""A canary key, used through the whole API and the admin, must appear nowhere but upstream.

The built-in ``openai`` plugin is pointed at the fake OpenAI upstream and
given the key ``sk-canary-<random>`` through ``POST /api/providers/``. Then
every part of the API is exercised over real HTTP (a live Echo), upstream
failures included (each quoting the key back, as careless upstreams do),
and the admin pages are read by a logged-in user. Afterwards every response
body and header, every log record of every logger at DEBUG, every audit row,
every table of the database, the metrics and a debug page are searched: no
8-character run of the canary is in any of them (upstreams quote keys cut or
a character short, too). The fake upstream, and only it, must have received it.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import traceback
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test import RequestFactory
from django.urls import reverse
from django.views.debug import technical_500_response

from providers.models import ProviderConfig, ProviderConfigChange
from providers.testing.fake_openai import FakeOpenAI

# Slow: a live server, driven through every interface.
pytestmark = pytest.mark.slow

CANARY = f"sk-canary-{secrets.token_hex(16)}"
CANARY_MASK = f"sk-...{CANARY[-4:]}"
WINDOW = 8
CANARY_WINDOWS = {CANARY[i : i + WINDOW] for i in range(len(CANARY) - WINDOW + 1)}


class Seen:
    """Everything Echo said during the test, to search for the canary afterwards."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def response(self, where: str, response: Any) -> Any:
        body = response.content.decode("utf-8", "replace")
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.add(where, f"{response.status_code}\n{headers}\n{body}")
        return response

    def leaks(self) -> list[str]:
        """Return where any 8-character run of the canary was seen."""
        return [where for where, text in self.texts if any(w in text for w in CANARY_WINDOWS)]


def _record_text(record: logging.LogRecord) -> str:
    parts = [str(record.msg), repr(record.args)]
    try:
        parts.append(record.getMessage())
    except Exception:  # a broken format string must not hide the rest
        pass
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.exc_text:
        parts.append(record.exc_text)
    parts.append(repr(vars(record)))
    return "\n".join(parts)


def _database_rows() -> list[tuple[str, str]]:
    """Return every row of every table as text, the secrets' column as stored."""
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            rows += [(table, repr(row)) for row in cursor.fetchall()]
    return rows


@pytest.fixture
def fake():
    with FakeOpenAI() as upstream:
        yield upstream


def test_the_canary_key_appears_nowhere(
    live_echo, fake, admin_key, admin_user, client, caplog
) -> None:
    # Every logger at DEBUG, those configured quieter included (django.db.backends).
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
    seen = Seen()
    api = httpx.Client(
        base_url=live_echo.url,
        headers={"Authorization": f"Bearer {admin_key[1]}"},
        timeout=10,
    )

    def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        return seen.response(f"{method} {url}", api.request(method, url, **kwargs))

    routing = {"max_retries": 0, "breaker_failure_threshold": 100}
    created = call(
        "POST",
        "/api/providers/",
        json={
            "name": "openai",
            "plugin": "openai",
            "settings": {"base_url": fake.base_url, **routing},
            "secrets": {"api_key": CANARY},
            "is_default": True,
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["secrets"] == {"api_key": CANARY_MASK}

    # Refused configurations that carry the canary: the errors must not quote it.
    for body in [
        {"name": "bad", "plugin": "openai", "settings": {"api_key": CANARY}},
        {
            "name": "bad",
            "plugin": "openai",
            "settings": {"base_url": "http://169.254.169.254/"},
            "secrets": {"api_key": CANARY},
        },
        {"name": "bad", "plugin": "openai", "secrets": {"api_key": CANARY, "organization": 5}},
    ]:
        assert call("POST", "/api/providers/", json=body).status_code == 400

    # The guide's management API.
    for url in [
        "/plugins/",
        "/plugins/instances",
        "/plugins/metadata",
        "/plugins/health",
        "/plugins/health?refresh=1",
        "/plugins/openai/status",
        "/plugins/openai/metadata",
        "/plugins/openai/config-schema",
        "/plugins/openai/models",
        "/plugins/openai/models/gpt-4o-mini",
        "/health",
        "/health/openai",
    ]:
        assert call("GET", url).status_code == 200, url
    assert call("PUT", "/plugins/openai/config", json={"timeout": 30}).status_code == 200
    assert call("PUT", "/plugins/openai/config", json={"api_key": CANARY}).status_code == 200
    masked = call("PUT", "/plugins/openai/config", json={"api_key": CANARY_MASK})
    assert masked.status_code == 200
    assert call("PUT", "/plugins/openai/config", json={"timeout": -1}).status_code == 400
    assert call("POST", "/plugins/openai/reload", json={}).status_code == 200
    reload = {"config": {"base_url": fake.base_url, "api_key": CANARY, "timeout": 20, **routing}}
    assert call("POST", "/plugins/openai/reload", json=reload).status_code == 200

    # The REST resources and the audit trail.
    assert call("GET", "/api/providers/").status_code == 200
    shown = call("GET", "/api/providers/openai/")
    assert shown.json()["secrets"] == {"api_key": CANARY_MASK}
    patch = {"settings": {"timeout": 40}, "secrets": {"api_key": CANARY}}
    assert call("PATCH", "/api/providers/openai/", json=patch).status_code == 200
    for url in [
        "/api/providers/openai/history/",
        "/api/providers/openai/history/export/?format=csv",
        "/api/providers/openai/history/export/?format=json",
        "/api/history/",
        "/api/history/export/?format=csv",
        "/api/health-checks/",
        "/api/schema/",
    ]:
        assert call("GET", url).status_code == 200, url

    # Chat, plain and streamed.
    chat = {"prompt": "hello there", "provider": "openai"}
    answer = call("POST", "/chat", json=chat)
    assert answer.status_code == 200 and answer.json()["content"] == "You said: hello there"
    streamed = call("POST", "/chat", json={**chat, "stream": True})
    assert streamed.status_code == 200 and "event: done" in streamed.text

    # Upstream failures that quote the key back, plain and streamed.
    for fault in [
        {"status": 500, "message": f"internal error for {CANARY}"},
        {"status": 429, "message": f"slow down, {CANARY}", "retry_after": 0},
        {"status": 401, "message": f"bad key {CANARY}"},
    ]:
        fake.inject(**fault)
        failed = call("POST", "/chat", json=chat)
        assert failed.status_code >= 400, fault
        fake.inject(**fault)
        call("POST", "/chat", json={**chat, "stream": True})
    # Partial echoes: the key a character short, and cut by a 200-character limit.
    for message in [f"bad key {CANARY[:-1]}", ("invalid key: " + "x" * 180 + CANARY)[:200]]:
        for status in (401, 500):
            fake.inject(status=status, message=message)
            assert call("POST", "/chat", json=chat).status_code >= 400
            fake.inject(status=status, message=message)
            call("POST", "/chat", json={**chat, "stream": True})
            fake.inject(status=status, message=message, path="/v1/models")
            call("GET", "/plugins/openai/status")
            fake.inject(status=status, message=message, path="/v1/models")
            call("GET", "/plugins/health?refresh=1")
    # A key with CR/LF (a header injection): refused on every write path, quoted nowhere.
    crlf = f"{CANARY}\r\nX-Injected: 1"
    refused = [
        call(
            "POST",
            "/api/providers/",
            json={"name": "crlf", "plugin": "openai", "secrets": {"api_key": crlf}},
        ),
        call("PATCH", "/api/providers/openai/", json={"secrets": {"api_key": crlf}}),
        call("PUT", "/plugins/openai/config", json={"api_key": crlf}),
        call(
            "POST", "/plugins/openai/reload", json={"config": {**reload["config"], "api_key": crlf}}
        ),
    ]
    assert [r.status_code for r in refused] == [400] * 4
    assert not any("x-injected" in {k.lower() for k in r.headers} for r in fake.requests)
    # The OpenAI- and Anthropic-compatible endpoints, and the metrics.
    completion = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert call("POST", "/v1/chat/completions", json=completion).status_code == 200
    assert (
        call("POST", "/v1/chat/completions", json={**completion, "stream": True}).status_code == 200
    )
    fake.inject(status=401, message=f"bad key {CANARY}")
    assert call("POST", "/v1/chat/completions", json=completion).status_code >= 400
    fake.inject(status=500, message=f"oops {CANARY}")
    call("POST", "/v1/chat/completions", json={**completion, "stream": True})
    assert call("GET", "/v1/models").status_code == 200
    embedding = {"model": "openai/text-embedding-3-small", "input": "hi"}
    assert call("POST", "/v1/embeddings", json=embedding).status_code == 200
    message = {**completion, "max_tokens": 20}
    assert call("POST", "/v1/messages", json=message).status_code == 200
    fake.inject(status=401, message=f"bad key {CANARY}")
    assert call("POST", "/v1/messages", json=message).status_code >= 400
    assert call("GET", "/metrics").status_code == 200
    fake.inject(truncate_after=3, path="/v1/chat/completions")
    cut = call("POST", "/chat", json={**chat, "stream": True})
    assert "event: error" in cut.text
    fake.inject(status=401, message=f"bad key {CANARY}", path="/v1/models")
    call("GET", "/plugins/openai/status")
    call("GET", "/plugins/health?refresh=1")
    for url in ["/plugins/openai/status", "/plugins/instances", "/api/providers/openai/"]:
        call("GET", url)  # the breaker's and the live instance's memory of the failures

    # The admin, logged in.
    client.force_login(admin_user)
    config = ProviderConfig.objects.get(name="openai")
    admin_pages = [
        reverse("admin:providers_providerconfig_changelist"),
        reverse("admin:providers_providerconfig_change", args=[config.pk]),
        reverse("admin:providers_providerconfig_history", args=[config.pk]),
        reverse("admin:providers_providerconfig_history_export", args=[config.pk, "csv"]),
        reverse("admin:providers_providerconfig_history_export", args=[config.pk, "json"]),
        reverse("admin:providers_providerconfigchange_changelist"),
        reverse(
            "admin:providers_providerconfigchange_change",
            args=[ProviderConfigChange.objects.first().pk],
        ),
        reverse("admin:providers_healthcheck_changelist"),
    ]
    for url in admin_pages:
        response = client.get(url)
        assert response.status_code == 200, url
        seen.add(f"admin {url}", response.content.decode())
    # A form that fails with the key typed in: the key comes back in its own password
    # input only (issue 19: an admin need not type it again), nowhere else on the page.
    change = reverse("admin:providers_providerconfig_change", args=[config.pk])
    failing = client.post(
        change,
        {"enabled": "on", "setting__api_key": CANARY, "setting__timeout": "-3"},
    )
    assert failing.status_code == 200
    page = failing.content.decode()
    kept = f'name="setting__api_key" value="{CANARY}"'
    assert page.count(CANARY) == 1 and kept in page
    seen.add("admin failing form", page.replace(kept, 'name="setting__api_key" value=""'))

    # A debug page (DEBUG on, as `ECHO_DEBUG=1 make run`) for an error with the key in scope.
    def failing_view(api_key: str) -> None:
        headers = {"Authorization": f"Bearer {api_key}"}
        cut = api_key[:-1]
        raise RuntimeError(f"upstream refused {cut} ({headers})")

    try:
        failing_view(config.secrets["api_key"])
    except RuntimeError:
        request = RequestFactory().get("/chat", HTTP_AUTHORIZATION=f"Bearer {CANARY}")
        page = technical_500_response(request, *sys.exc_info())
        assert b"failing_view" in page.content
        seen.add("debug page", page.content.decode())

    # Now search everything.
    for record in caplog.records:
        seen.add(f"log {record.name}:{record.lineno}", _record_text(record))
    for row in ProviderConfigChange.objects.values():
        seen.add(f"audit row {row['id']}", json.dumps(row, default=str))
    for table, row in _database_rows():
        seen.add(f"table {table}", row)

    assert seen.leaks() == []
    # The test means something only if the key really was in use, and masks were shown.
    assert any(r.headers.get("Authorization") == f"Bearer {CANARY}" for r in fake.requests)
    assert any(CANARY_MASK in text for _, text in seen.texts)
    assert len(caplog.records) > 20
    stored = [row for table, row in _database_rows() if table == "providers_providerconfig"]
    assert stored and all("gAAAA" in row for row in stored)  # ciphertext only
