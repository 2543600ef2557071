"""Browser requests get Django's cookie middleware (CSRF included); Bearer API clients skip it."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db
def test_browser_posts_still_need_a_csrf_token(admin_user) -> None:
    browser = Client(enforce_csrf_checks=True)
    response = browser.post("/admin/login/", {"username": "admin", "password": "pw-admin-123"})
    assert response.status_code == 403
    page = browser.get("/admin/login/")
    assert page["X-Frame-Options"] == "DENY"
    token = page.cookies["csrftoken"].value
    response = browser.post(
        "/admin/login/",
        {"username": "admin", "password": "pw-admin-123", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302


@pytest.mark.django_db
def test_a_bearer_client_skips_the_browser_middleware(client, chat_key) -> None:
    from providers.runtime import process as runtime
    from providers.runtime.registry import ProviderSpec

    runtime.run_in_serving_loop(
        runtime.registry.apply, ProviderSpec("echo", "echo", {}, is_default=True)
    )
    response = client.post(
        "/chat",
        {"prompt": "hi"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {chat_key[1]}",
    )
    assert response.status_code == 200
    assert not hasattr(response.wsgi_request, "session")
    # The header middleware runs for every request (test_key_client_middleware.py).
    assert response["X-Frame-Options"] == "DENY"


@pytest.mark.django_db
def test_a_bearer_header_does_not_skip_the_admin(client) -> None:
    response = client.get("/admin/", HTTP_AUTHORIZATION="Bearer echo-whatever")
    assert response.status_code == 302
    assert response["X-Frame-Options"] == "DENY"
