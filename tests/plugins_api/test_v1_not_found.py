"""An unknown ``/v1`` path is a JSON 404 an SDK can read, also with DEBUG on (Django's HTML page before)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("path", ["/v1/nope", "/v1/models/", "/v1/chat/completions/extra", "/v1/"])
def test_an_unknown_v1_path_is_a_json_404(
    settings: Any, chat_key: tuple[Any, str], debug: bool, method: str, path: str
) -> None:
    settings.DEBUG = debug
    api = Client(headers={"Authorization": f"Bearer {chat_key[1]}"})
    response = getattr(api, method)(path, content_type="application/json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    error = json.loads(response.content)["error"]
    assert error["type"] == "not_found" and path in error["message"]


def test_known_v1_paths_still_answer(chat_key: tuple[Any, str]) -> None:
    api = Client(headers={"Authorization": f"Bearer {chat_key[1]}"})
    assert api.get("/v1/models").status_code == 200
