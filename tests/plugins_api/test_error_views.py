"""Unknown API paths and crashes answer in the JSON error shape; pages stay HTML."""

from __future__ import annotations

import pytest


@pytest.mark.django_db
def test_unknown_api_path_is_a_json_404(client, settings) -> None:
    settings.DEBUG = False
    response = client.get("/plugins/echo/nonsense/deeper")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    page = client.get("/no-such-page/")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_a_crash_on_an_api_path_is_a_json_500(client, settings, monkeypatch) -> None:
    from plugins_api.chat import views as chat_views

    settings.DEBUG = False
    client.raise_request_exception = False

    async def crash(request):
        raise RuntimeError("secret detail sk-should-not-leak")

    monkeypatch.setattr(chat_views, "authenticate_chat_client", crash)
    response = client.post("/chat", data={}, content_type="application/json")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "internal_error"
    assert "sk-should-not-leak" not in response.content.decode()
