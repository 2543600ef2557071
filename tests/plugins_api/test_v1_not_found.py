"""An unknown ``/v1`` path is a JSON 404 an SDK can read, in its API's shape, also with DEBUG on.

Django showed its HTML page with DEBUG on, and Echo's own error shape without:
neither is what an OpenAI or Anthropic SDK reads.
"""

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
    assert path in error["message"] and method.upper() in error["message"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "unknown_url",
        None,
    )


@pytest.mark.parametrize("path", ["/v1/messages/nope", "/v1/messages/batches"])
def test_an_unknown_path_under_messages_answers_in_anthropics_shape(
    chat_key: tuple[Any, str], path: str
) -> None:
    api = Client(headers={"x-api-key": chat_key[1]})
    response = api.post(path, "{}", content_type="application/json")
    assert response.status_code == 404
    body = json.loads(response.content)
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert path in body["error"]["message"]


def test_known_v1_paths_still_answer(chat_key: tuple[Any, str]) -> None:
    api = Client(headers={"Authorization": f"Bearer {chat_key[1]}"})
    assert api.get("/v1/models").status_code == 200
