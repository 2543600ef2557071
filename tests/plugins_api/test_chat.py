"""``POST /chat`` answered as JSON: routing, failover, errors, bad bodies and who may call."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from plugins_api.access.key_changes import client_key_revoke
from providers.config.services import provider_config_create, provider_config_update
from providers.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderUnavailableError,
    RateLimitError,
)
from providers.models import ProviderConfig
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.types import ChatRequest, ChatResponse

SECRET = "sk-live-0123456789abcdef"


class DownProvider(EchoProvider):
    """Always unavailable: a retryable failure that should fail over."""

    calls = 0

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        type(self).calls += 1
        raise ProviderUnavailableError("upstream answered 503", status_code=503)


class RejectingProvider(EchoProvider):
    """Rejects every request as malformed: no other provider can do better."""

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        raise BadRequestError("messages: too long for this model", status_code=400)


class ThrottledProvider(EchoProvider):
    """Asks the caller to come back in seven seconds."""

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        raise RateLimitError("slow down", status_code=429, retry_after=7)


class LeakyProvider(EchoProvider):
    """Has a secret, and an upstream that quotes it back in its error."""

    def get_config_schema(self) -> dict[str, Any]:
        schema = super().get_config_schema()
        schema["properties"]["api_key"] = {"type": "string", "writeOnly": True}
        return schema

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        raise AuthenticationError(f"Incorrect API key provided: {self.config['api_key']}")


class CountingProvider(EchoProvider):
    """Echo that counts its calls, to prove a rejected body reached no provider."""

    calls = 0

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        type(self).calls += 1
        return await super().chat_completion(request)


def go_live(row: ProviderConfig) -> None:
    """Load ROW into the process registry (under ``db`` the on-commit reload never runs)."""
    error = runtime.run_in_serving_loop(runtime.apply_config_state, row.name, row.to_spec(), "")
    assert error is None, error


def add_provider(name: str, cls: type[EchoProvider], **fields: Any) -> ProviderConfig:
    """Register CLS as plugin NAME, configure a provider of it and make it live."""
    runtime.registry.register(cls, name)
    row = provider_config_create(name=name, plugin=name, **fields)
    go_live(row)
    return row


@pytest.fixture
def echo(echo_config: ProviderConfig) -> ProviderConfig:
    """The echo provider, live, as the default."""
    go_live(echo_config)
    return echo_config


@pytest.fixture
def api(chat_key: tuple[Any, str]) -> Client:
    """A client that sends the chat key."""
    return Client(headers={"Authorization": f"Bearer {chat_key[1]}"})


def post(client: Client, body: Any, **extra: Any) -> Any:
    """POST BODY (JSON-encoded unless bytes) to /chat."""
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post("/chat", data=data, content_type="application/json", **extra)


def test_prompt_answers_json_with_content_provider_model_and_usage(echo, api: Client) -> None:
    response = post(api, {"prompt": "Hello", "stream": False})

    assert response.status_code == 200
    body = response.json()
    assert body["content"] == "Echo: Hello"
    assert body["provider"] == "echo"
    assert body["model"] == "echo-1"
    assert body["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_messages_form_answers_the_last_user_message(echo, api: Client) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
    ]
    response = post(api, {"messages": messages, "provider": "echo"})

    assert response.status_code == 200
    body = response.json()
    assert body["content"] == "Echo: Second question"
    assert body["usage"]["prompt_tokens"] == 8


def test_provider_and_model_route_the_request(echo, api: Client) -> None:
    provider_config_update(config=echo, changes={"settings": {"models": ["echo-1", "echo-2"]}})
    go_live(ProviderConfig.objects.get(name="echo"))
    add_provider("counting", CountingProvider, settings={"prefix": "Counted: "})

    named = post(api, {"prompt": "Hi", "provider": "counting"}).json()
    prefixed = post(api, {"prompt": "Hi", "model": "echo/echo-2"}).json()
    explicit = post(api, {"prompt": "Hi", "provider": "echo", "model": "echo-2"}).json()

    assert (named["provider"], named["content"]) == ("counting", "Counted: Hi")
    assert (prefixed["provider"], prefixed["model"]) == ("echo", "echo-2")
    assert (explicit["provider"], explicit["model"]) == ("echo", "echo-2")


def test_unknown_provider_is_404_naming_the_field(echo, api: Client) -> None:
    response = post(api, {"prompt": "Hi", "provider": "nope"})

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "provider_not_found"
    assert error["field"] == "provider"
    assert error["provider"] == "nope"
    assert "nope" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
            "messages.1.role",
        ),
        ({"messages": []}, "messages"),
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "Hi", "temperature": 5}, "temperature"),
        ({"prompt": "Hi", "stream": "yes"}, "stream"),
        ({"prompt": "Hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "Hi", "max_tokens": True}, "max_tokens"),
        ({"prompt": "Hi", "provider": 3}, "provider"),
    ],
)
def test_bad_body_is_400_naming_the_field_and_reaches_no_provider(
    db, api: Client, body: Any, field: str | None
) -> None:
    CountingProvider.calls = 0
    add_provider("counting", CountingProvider, is_default=True)

    response = post(api, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert error.get("field") == field
    assert error["message"]
    assert CountingProvider.calls == 0


def test_no_key_is_401_with_bearer_challenge(echo) -> None:
    response = post(Client(), {"prompt": "Hello"})

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "authentication_required"


@pytest.mark.parametrize("header", ["Bearer echo-not-a-real-key", "Basic dXNlcjpwdw==", "Bearer "])
def test_unknown_or_malformed_key_is_401(echo, chat_key: tuple[Any, str], header: str) -> None:
    response = post(Client(headers={"Authorization": header}), {"prompt": "Hello"})

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_required"


def test_revoked_key_is_401_at_once(echo, chat_key: tuple[Any, str], api: Client) -> None:
    assert post(api, {"prompt": "Hello"}).status_code == 200

    client_key_revoke(name=chat_key[0].name)

    assert post(api, {"prompt": "Hello"}).status_code == 401


def test_chat_and_admin_keys_may_both_chat(echo, chat_key, admin_key) -> None:
    for _, raw_key in (chat_key, admin_key):
        client = Client(headers={"Authorization": f"Bearer {raw_key}"})
        assert post(client, {"prompt": "Hello"}).status_code == 200


def test_session_user_needs_the_csrf_token(echo, admin_user) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    without = post(client, {"prompt": "Hello"})
    client.get("/admin/")  # a page with a form sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    with_token = post(client, {"prompt": "Hello"}, headers={"X-CSRFToken": token})

    assert without.status_code == 403
    assert without.json()["error"]["type"] == "csrf_failed"
    assert with_token.status_code == 200
    assert with_token.json()["content"] == "Echo: Hello"


def test_retryable_failure_fails_over_and_names_who_answered(echo, api: Client) -> None:
    DownProvider.calls = 0
    add_provider("down", DownProvider, fallbacks=["echo"], settings={"max_retries": 1})

    response = post(api, {"prompt": "Hello", "provider": "down"})

    assert response.status_code == 200
    body = response.json()
    assert body["provider"] == "echo"
    assert body["content"] == "Echo: Hello"
    assert body["metadata"]["fallback_path"] == [
        {"route": "down", "error": "unavailable", "attempts": 2}
    ]
    assert body["metadata"]["attempts"] == 3
    assert DownProvider.calls == 2


def test_bad_request_is_422_and_does_not_fail_over(echo, api: Client) -> None:
    add_provider("rejecting", RejectingProvider, fallbacks=["echo"])

    response = post(api, {"prompt": "Hello", "provider": "rejecting"})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "bad_request"
    assert error["provider"] == "rejecting"


def test_rate_limit_is_429_with_retry_after(echo, api: Client) -> None:
    # The default itself, with no retries: no other provider to answer, no wait.
    add_provider("throttled", ThrottledProvider, is_default=True, settings={"max_retries": 0})

    response = post(api, {"prompt": "Hello", "provider": "throttled"})

    assert response.status_code == 429
    assert response["Retry-After"] == "7"
    assert response.json()["error"]["type"] == "rate_limited"


def test_error_message_never_shows_the_provider_secret(echo, api: Client) -> None:
    # The default itself: no other provider to fail over to.
    add_provider("leaky", LeakyProvider, secrets={"api_key": SECRET}, is_default=True)

    response = post(api, {"prompt": "Hello", "provider": "leaky"})

    assert response.status_code == 502
    assert SECRET not in response.content.decode()
    assert "sk-...cdef" in response.json()["error"]["message"]


def test_get_is_not_allowed(echo, api: Client) -> None:
    assert api.get("/chat").status_code == 405


@pytest.mark.parametrize("field", ["base_url", "api_key", "headers", "api_base"])
def test_clients_cannot_pass_upstream_settings(client, chat_key, field) -> None:
    response = client.post(
        "/chat",
        {"prompt": "hi", field: "http://169.254.169.254/"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {chat_key[1]}",
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field
