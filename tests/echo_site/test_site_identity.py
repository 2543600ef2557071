"""Echo's name and icon on its pages: the admin says "Echo administration", no page asks for a missing icon."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_favicon_ico_leads_to_the_icon(client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"] == "/static/echo/favicon.svg"
    # Served by the static files handler (echo_site.asgi), which finds it here:
    found = finders.find("echo/favicon.svg")
    assert found and Path(found).read_text().startswith("<svg")


@pytest.mark.parametrize("url", ["/", "/accounts/login/", "/admin/login/"])
def test_every_page_links_the_icon(client, admin_user, url) -> None:
    if url == "/":
        client.force_login(admin_user)
    page = client.get(url).content.decode()
    assert 'rel="icon" href="/static/echo/favicon.svg"' in page


def test_the_admin_is_echo_administration_with_links_to_chat_and_api_docs(
    client, admin_user
) -> None:
    client.force_login(admin_user)
    page = client.get(reverse("admin:index")).content.decode()
    assert "Echo administration" in page
    assert "Django administration" not in page
    assert f'<a href="{reverse("chat-page")}" id="echo-chat-link">Chat</a>' in page
    assert 'href="/api/docs/"' in page
    assert "<title>Providers, keys, usage and history | Echo admin</title>" in page
