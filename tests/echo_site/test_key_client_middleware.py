"""Key clients and browsers get the same security headers, HTTPS redirect and slash redirect.

Only the cookie middleware (sessions, CSRF, login, messages) is skipped for a
key client; Django's Security, Common and X-Frame-Options middleware run for
every request, in the async stack as served and in the sync one alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.middleware import common, security
from django.test import AsyncClient, Client

SECURITY_HEADERS = (
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
    "X-Frame-Options",
)
# /metrics takes a key in either form, and a staff login.
PATH = "/metrics"

Get = Callable[..., Any]


@pytest.fixture(params=["async", "sync"])
def callers(request: pytest.FixtureRequest, admin_key, admin_user) -> dict[str, Get]:
    """GET as a key client (both forms) or a logged-in staff browser, through the async stack
    (as uvicorn serves) or the sync one."""

    def caller(headers: dict[str, str], *, login: bool = False) -> Get:
        if request.param == "async":
            async_client = AsyncClient()
            if login:
                async_client.force_login(admin_user)
            return lambda path, **extra: async_to_sync(async_client.get)(
                path, headers=headers, **extra
            )
        client = Client()
        if login:
            client.force_login(admin_user)
        return lambda path, **extra: client.get(path, headers=headers, **extra)

    return {
        "bearer": caller({"Authorization": f"Bearer {admin_key[1]}"}),
        "x-api-key": caller({"x-api-key": admin_key[1]}),
        "browser": caller({}, login=True),
    }


def security_headers(response: Any) -> dict[str, str | None]:
    return {name: response.get(name) for name in SECURITY_HEADERS}


@pytest.mark.django_db
def test_key_clients_get_the_browsers_security_headers(callers: dict[str, Get]) -> None:
    seen = {who: get(PATH) for who, get in callers.items()}

    assert {who: response.status_code for who, response in seen.items()} == dict.fromkeys(
        callers, 200
    )
    expected = security_headers(seen["browser"])
    assert expected["X-Content-Type-Options"] == "nosniff"
    assert all(expected.values()), expected
    for who in ("bearer", "x-api-key"):
        assert security_headers(seen[who]) == expected, who
    # Only the cookie middleware is skipped for a key client.
    assert "Cookie" in seen["browser"].get("Vary", "")
    assert "Cookie" not in seen["bearer"].get("Vary", "")


@pytest.mark.django_db
def test_key_clients_get_the_slash_redirect_too(callers: dict[str, Get]) -> None:
    for who, get in callers.items():
        response = get("/api/providers")
        assert response.status_code == 301, who
        assert response["Location"] == "/api/providers/", who
        assert response["X-Content-Type-Options"] == "nosniff", who


@pytest.mark.django_db
def test_key_clients_are_redirected_to_https_and_told_hsts(
    callers: dict[str, Get], settings
) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    for who, get in callers.items():
        response = get(PATH)
        assert response.status_code == 301, who
        assert response["Location"] == f"https://testserver{PATH}", who

        secure = get(PATH, secure=True)
        assert secure.status_code == 200, who
        assert secure["Strict-Transport-Security"] == "max-age=3600", who


@pytest.mark.django_db
def test_in_the_async_stack_their_hooks_run_on_the_event_loop(admin_key, monkeypatch) -> None:
    """No thread hop per hook: Django's MiddlewareMixin would make two per middleware."""
    on_the_loop: list[tuple[str, bool]] = []

    def recorded(hook: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_the_loop.append((hook.__qualname__, True))
            except RuntimeError:
                on_the_loop.append((hook.__qualname__, False))
            return hook(*args)

        return record

    for cls, name in [
        (security.SecurityMiddleware, "process_request"),
        (common.CommonMiddleware, "process_response"),
    ]:
        monkeypatch.setattr(cls, name, recorded(getattr(cls, name)))
    headers = {"Authorization": f"Bearer {admin_key[1]}"}

    response = async_to_sync(AsyncClient().get)(PATH, headers=headers)

    assert response.status_code == 200
    assert on_the_loop == [
        ("SecurityMiddleware.process_request", True),
        ("CommonMiddleware.process_response", True),
    ]
