"""Model groups as keys see them: listed by ``GET /v1/models``, readable by id, open to a key that may use one deployment."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from plugins_api.access.key_changes import client_key_issue
from plugins_api.access.key_model_access import ModelAccess


@pytest.fixture
def groups(transactional_db, serving_loop) -> None:
    from providers.config.services import model_group_create, provider_config_create

    provider_config_create(name="a", plugin="echo", settings={"prefix": "A: ", "models": ["a-1"]})
    provider_config_create(name="b", plugin="echo", settings={"prefix": "B: ", "models": ["b-1"]})
    model_group_create(
        name="fast",
        deployments=[
            {"provider": "a", "model": "a-1", "weight": 1},
            {"provider": "b", "model": "b-1", "weight": 1},
        ],
    )
    model_group_create(name="only-a", deployments=[{"provider": "a", "model": "a-1"}])


def client_for(name: str, patterns: tuple[str, ...] = ()) -> Client:
    _, raw = client_key_issue(name=name, access=ModelAccess(patterns=patterns))
    return Client(headers={"Authorization": f"Bearer {raw}"})


def listed(api: Client) -> list[str]:
    return [m["id"] for m in json.loads(api.get("/v1/models").content)["data"]]


def chat(api: Client, model: str) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return api.post("/v1/chat/completions", json.dumps(body), content_type="application/json")


def test_v1_models_lists_the_groups_a_key_may_call(groups) -> None:
    everyone = client_for("open")
    assert {"fast", "only-a", "a/a-1", "b/b-1"} <= set(listed(everyone))
    b_only = client_for("b-only", ("b/*",))
    assert set(listed(b_only)) == {"b/b-1", "fast"}
    detail = json.loads(everyone.get("/v1/models/fast").content)
    assert detail == {"id": "fast", "object": "model", "created": 0, "owned_by": "echo"}
    assert b_only.get("/v1/models/fast").status_code == 200
    refused = b_only.get("/v1/models/only-a")
    assert refused.status_code == 403
    assert "only-a" in json.loads(refused.content)["error"]["message"]


def test_a_key_calls_a_group_through_the_deployments_it_may_use_only(groups) -> None:
    b_only = client_for("b-only", ("b/*",))
    for _ in range(12):  # whichever deployment the strategy draws first, b answers
        answered = chat(b_only, "fast")
        assert answered.status_code == 200, answered.content
        assert json.loads(answered.content)["choices"][0]["message"]["content"] == "B: hi"
    refused = chat(b_only, "only-a")
    assert refused.status_code == 403
    assert json.loads(refused.content)["error"]["code"] == "model_not_allowed"
