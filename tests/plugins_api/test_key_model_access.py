"""Per-key model access (``plugins_api.access.key_model_access``) on every chat endpoint.

The pattern rule and its validation; then ``/chat``, ``/v1/chat/completions``,
``/v1/messages``, ``/v1/embeddings``, ``GET /v1/models`` and the websocket
driven in process: an allowed model answers, a disallowed one is a 403
``model_not_allowed`` naming it in each API's shape (an error frame on the
socket, which stays open), the key's default model is used when a call names
none, and a failover never lands on a provider the key may not use.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import AsyncClient

from plugins_api.access.client_keys import averify_key, forget_cached_keys
from plugins_api.access.key_changes import client_key_issue
from plugins_api.access.key_model_access import (
    ModelAccess,
    parse_default_model,
    parse_patterns,
    stored_access,
)
from plugins_api.models import ClientAPIKey
from providers.errors import ProviderUnavailableError
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.types import ChatRequest

# --- the rule --------------------------------------------------------------------


def test_patterns_match_provider_slash_model_fnmatch_style() -> None:
    access = ModelAccess(patterns=("openai/*", "echo/echo-1", "anthropic/claude-*"))
    assert access.allows("openai", "gpt-4o-mini")
    assert access.allows("openai", None)  # the provider's unnamed default
    assert access.allows("echo", "echo-1")
    assert not access.allows("echo", "echo-2")
    assert access.allows("anthropic", "claude-3-5-haiku")
    assert not access.allows("anthropic", "gpt-4o")
    assert not access.allows("openaix", "gpt-4o")
    assert not access.allows("OpenAI", "gpt-4o")  # case-sensitive, as provider names are
    assert access.allows_provider("openai") and not access.allows_provider("mistral")
    assert ModelAccess().allows("anything", "at-all")


def test_stored_access_fails_closed_on_a_malformed_row() -> None:
    assert stored_access([], "") == ModelAccess()
    assert stored_access(None, "") == ModelAccess()
    assert not stored_access({"openai/*": True}, "").allows("openai", "gpt-4o")
    assert not stored_access(["openai/*", 3], "").allows("openai", "gpt-4o")


@pytest.mark.parametrize(
    "raw",
    [
        "openai",  # no model part
        "/gpt-4o",
        "openai/",
        "open ai/*",
        "openai/gpt\x00",
        pytest.param("openai/" + "x" * 300, id="long-pattern"),
        pytest.param(",".join(f"p{i}/*" for i in range(101)), id="too-many"),
        pytest.param("x" * 10_000_000, id="ten-megabytes"),
        "openai/*;rm -rf",
    ],
)
def test_bad_patterns_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_patterns(raw)


def test_nested_or_wrong_typed_patterns_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_patterns([["openai/*"]])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        parse_patterns([{"openai": "*"}])  # type: ignore[list-item]
    assert parse_patterns(" openai/*, echo/* ,,") == ("openai/*", "echo/*")
    assert parse_default_model(" openai/gpt-4o-mini ") == "openai/gpt-4o-mini"
    for bad in ("gpt-4o", "openai/*", "openai/a b", "a/\x00"):
        with pytest.raises(ValueError):
            parse_default_model(bad)


def test_issue_api_key_takes_models_and_names_the_bad_option(db: Any) -> None:
    call_command(
        "issue_api_key",
        "scoped",
        "--models",
        "openai/*,echo/*",
        "--default-model",
        "openai/gpt-4o-mini",
    )
    row = ClientAPIKey.objects.get(name="scoped")
    assert row.allowed_models == ["openai/*", "echo/*"]
    assert row.default_model == "openai/gpt-4o-mini"
    for option, value in [
        ("--models", "openai"),
        ("--models", "a/b\x00"),
        ("--models", "x/" + "y" * 5000),
        ("--models", ","),
        ("--models", "[[[[openai/*]]]]" * 1000),
        ("--default-model", "gpt-4o"),
        ("--default-model", "openai/*"),
    ]:
        with pytest.raises(CommandError, match=option):
            call_command("issue_api_key", "bad", option, value)
    assert not ClientAPIKey.objects.filter(name="bad").exists()


# --- the endpoints ---------------------------------------------------------------


def _apply(config: Any) -> None:
    error = runtime.run_in_serving_loop(
        runtime.apply_config_state, config.name, config.to_spec(), ""
    )
    assert error is None, error


@pytest.fixture
def providers(db: Any) -> None:
    """Three echo providers live: ``primary`` (the default; falls back to ``backup``, then ``other``)."""
    from providers.config.services import provider_config_create

    for name in ("backup", "other"):
        _apply(provider_config_create(name=name, plugin="echo", settings={"prefix": f"{name}: "}))
    _apply(
        provider_config_create(
            name="primary",
            plugin="echo",
            settings={"prefix": "primary: ", "max_retries": 0},
            is_default=True,
            fallbacks=["backup/echo-1", "other/echo-1"],
        )
    )
    forget_cached_keys()


@pytest.fixture
def keys(providers: None) -> dict[str, str]:
    """Raw keys: ``only_primary`` (primary/* , default primary/echo-1), ``open``, ``no_primary``."""
    _, only_primary = client_key_issue(
        name="only-primary",
        scope="chat",
        access=ModelAccess(patterns=("primary/*",), default_model="primary/echo-1"),
    )
    _, primary_or_other = client_key_issue(
        name="primary-or-other",
        scope="chat",
        access=ModelAccess(patterns=("primary/echo-*", "other/*")),
    )
    _, no_primary = client_key_issue(
        name="no-primary", scope="chat", access=ModelAccess(patterns=("backup/*",))
    )
    _, open_key = client_key_issue(name="open", scope="chat")
    return {
        "only_primary": only_primary,
        "primary_or_other": primary_or_other,
        "no_primary": no_primary,
        "open": open_key,
    }


def _body(path: str, model: str | None) -> dict[str, Any]:
    if path == "/chat":
        return {"prompt": "hi", **({"model": model} if model else {})}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if path == "/v1/messages":
        body["max_tokens"] = 10
    return body


async def _post(path: str, key: str, body: dict[str, Any]) -> Any:
    return await AsyncClient().post(
        path, json.dumps(body), content_type="application/json", headers={"x-api-key": key}
    )


CHAT_PATHS = ["/chat", "/v1/chat/completions", "/v1/messages"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize("stream", [False, True])
async def test_an_allowed_model_answers_and_a_disallowed_one_is_403_naming_it(
    path: str, stream: bool, keys: dict[str, str]
) -> None:
    allowed = await _post(
        path, keys["only_primary"], {**_body(path, "primary/echo-1"), "stream": stream}
    )
    assert allowed.status_code == 200
    if stream:
        assert b"primary:" in b"".join([part async for part in allowed.streaming_content])
    refused = await _post(
        path, keys["only_primary"], {**_body(path, "backup/echo-1"), "stream": stream}
    )
    assert refused.status_code == 403
    body = refused.json()
    assert "'backup/echo-1'" in body["error"]["message"]
    if path == "/chat":
        assert body["error"]["type"] == "model_not_allowed"
    elif path == "/v1/chat/completions":
        assert body["error"]["code"] == "model_not_allowed"
    else:
        assert body["type"] == "error" and body["error"]["type"] == "permission_error"
    # A key without a list may use it.
    assert (await _post(path, keys["open"], _body(path, "backup/echo-1"))).status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_the_default_model_is_used_when_a_call_names_none(keys: dict[str, str]) -> None:
    identity = await averify_key(keys["only_primary"])
    assert identity is not None and identity.access.default_model == "primary/echo-1"
    answer = await _post("/chat", keys["only_primary"], {"prompt": "hi"})
    assert answer.status_code == 200
    assert answer.json()["provider"] == "primary" and answer.json()["model"] == "echo-1"
    # A key without a default model goes to routing's default (primary), held to its list.
    refused = await _post("/chat", keys["no_primary"], {"prompt": "hi"})
    assert refused.status_code == 403 and "'primary" in refused.json()["error"]["message"]


@pytest.mark.django_db(transaction=True)
async def test_a_fallback_the_key_may_not_use_is_skipped_not_served(
    keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = EchoProvider.chat_completion

    async def primary_down(self: EchoProvider, request: ChatRequest) -> Any:
        if self.config.get("prefix") == "primary: ":
            raise ProviderUnavailableError("primary is down", provider="primary")
        return await real(self, request)

    monkeypatch.setattr(EchoProvider, "chat_completion", primary_down)
    body = _body("/v1/chat/completions", "primary/echo-1")
    # The open key fails over to the first fallback, backup.
    served = await _post("/v1/chat/completions", keys["open"], body)
    assert served.status_code == 200 and served["x-echo-provider"] == "backup"
    # primary/echo-* + other/*: backup is skipped, other answers.
    skipped = await _post("/v1/chat/completions", keys["primary_or_other"], body)
    assert skipped.status_code == 200 and skipped["x-echo-provider"] == "other"
    # primary/* only: no fallback may serve it, so the failure stands.
    failed = await _post("/v1/chat/completions", keys["only_primary"], body)
    assert failed.status_code == 503
    assert failed.get("x-echo-provider") in (None, "primary")


@pytest.mark.django_db(transaction=True)
async def test_models_lists_only_what_the_key_may_use(keys: dict[str, str]) -> None:
    client = AsyncClient()
    listed = await client.get("/v1/models", headers={"authorization": f"Bearer {keys['open']}"})
    every = {item["id"] for item in listed.json()["data"]}
    assert {"primary/echo-1", "backup/echo-1", "other/echo-1"} <= every
    scoped = await client.get(
        "/v1/models", headers={"authorization": f"Bearer {keys['primary_or_other']}"}
    )
    assert {item["id"] for item in scoped.json()["data"]} == {"primary/echo-1", "other/echo-1"}
    detail = await client.get(
        "/v1/models/backup/echo-1",
        headers={"authorization": f"Bearer {keys['primary_or_other']}"},
    )
    assert detail.status_code == 403 and detail.json()["error"]["code"] == "model_not_allowed"


@pytest.mark.django_db(transaction=True)
async def test_embeddings_are_held_to_the_list(keys: dict[str, str]) -> None:
    body = {"model": "backup/echo-1", "input": "hi"}
    refused = await _post("/v1/embeddings", keys["only_primary"], body)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert "'backup/echo-1'" in refused.json()["error"]["message"]
    allowed = await _post(
        "/v1/embeddings", keys["only_primary"], {**body, "model": "primary/echo-1"}
    )
    assert allowed.status_code != 403


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", CHAT_PATHS)
async def test_a_ten_megabyte_model_name_is_a_4xx(path: str, keys: dict[str, str]) -> None:
    response = await _post(path, keys["only_primary"], _body(path, "primary/" + "m" * 10_000_000))
    assert 400 <= response.status_code < 500


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_refuses_a_disallowed_model_and_stays_open(
    keys: dict[str, str],
) -> None:
    from echo_site.asgi import application

    socket = WebsocketCommunicator(
        application,
        "/ws/chat/",
        headers=[(b"authorization", f"Bearer {keys['only_primary']}".encode())],
    )
    connected, _ = await socket.connect(timeout=10)
    assert connected
    assert (await socket.receive_json_from(timeout=10))["type"] == "providers"
    await socket.send_json_to({"type": "chat", "message": "hi", "model": "backup/echo-1"})
    refused = await socket.receive_json_from(timeout=5)
    assert refused["type"] == "error" and refused["error"]["type"] == "model_not_allowed"
    assert "'backup/echo-1'" in refused["error"]["message"]
    await socket.send_json_to({"type": "chat", "message": "hi", "provider": "backup"})
    refused = await socket.receive_json_from(timeout=5)
    assert refused["error"]["type"] == "model_not_allowed"
    # No model named: the key's default model (primary/echo-1) answers.
    await socket.send_json_to({"type": "chat", "message": "hi"})
    start = await socket.receive_json_from(timeout=5)
    assert start["type"] == "start", start
    assert start["provider"] == "primary" and start["model"] == "echo-1"
    while (await socket.receive_json_from(timeout=5))["type"] != "done":
        pass
    await socket.disconnect()
