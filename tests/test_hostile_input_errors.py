"""Each hostile input the fuzz found answers a clear 4xx naming the field, never a 500.

The fuzz (``test_hostile_input_fuzz.py``) proves no route 500s; these pin
down what the client is told.
"""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.fixture
def admin(admin_key, echo_config) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("[" * 100_000, None, "Nested too deeply"),
        ('{"prefix": "a\\u0000b"}', "prefix", "NUL"),
        ('{"prefix": {"x": "\\ud800"}}', "prefix.x", "surrogate"),
        ('{"models": [1e999]}', "models.0", "finite"),
        ('{"models": [NaN]}', "models.0", "finite"),
        (b'{"prefix": "\xff"}', None, "UTF-8"),
    ],
    ids=["deep", "NUL", "surrogate", "1e999", "NaN", "not UTF-8"],
)
def test_a_drf_body_that_json_cannot_carry_is_a_400_naming_the_field(
    client: Client, admin: dict[str, str], body: str | bytes, field: str | None, message: str
) -> None:
    response = client.put("/plugins/echo/config", body, content_type="application/json", **admin)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_json"
    assert error.get("field") == field
    assert message in error["message"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/providers/%00/", "/plugins/%00/status", "/health/echo%01", "/plugins/a%7Fb"]
)
def test_a_control_character_in_the_path_is_a_json_404(
    client: Client, admin: dict[str, str], path: str
) -> None:
    response = client.get(path, **admin)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "type": "not_found",
        "message": "Nothing here: the URL path holds control characters.",
        "field": "path",
    }


@pytest.mark.django_db
def test_a_control_character_in_a_page_path_is_the_404_page(client: Client) -> None:
    response = client.get("/accounts/login/%00")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_nul_in_a_query_parameter_is_a_400_naming_it(client: Client, admin: dict[str, str]) -> None:
    response = client.get("/api/history/?provider=echo%00", **admin)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "provider"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/chat/"])
@pytest.mark.parametrize("header", ["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"])
def test_a_key_on_the_chat_page_gets_the_login_page(
    client: Client, chat_key, path: str, header: str
) -> None:
    value = f"Bearer {chat_key[1]}" if header == "HTTP_AUTHORIZATION" else chat_key[1]
    response = client.get(path, **{header: value})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_metrics_take_the_key_as_x_api_key_too(client: Client, admin_key, chat_key) -> None:
    assert client.get("/metrics", HTTP_X_API_KEY=admin_key[1]).status_code == 200
    refused = client.get("/metrics", HTTP_X_API_KEY=chat_key[1])
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_denied"
    unknown = client.get("/metrics", HTTP_X_API_KEY="echo-unknown")
    assert unknown.status_code == 401
