"""The one rule for a provider's secret values (``providers.secrets.values``), and the paths that use it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib import admin

from plugins_api.edge.error_responses import provider_error_body
from providers.config.selectors import provider_secret_values
from providers.errors import AuthenticationError
from providers.health.monitor import health_from_status
from providers.models import ProviderConfig
from providers.plugins.echo_provider import EchoProvider
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime import process as runtime
from providers.runtime.manager import ModelManager
from providers.runtime.registry import ProviderSpec
from providers.secrets.log_redaction import live_secret_values, redact_record
from providers.secrets.masking import WINDOW, redact
from providers.secrets.values import (
    config_secret_values,
    instance_secret_values,
    schema_secret_names,
)
from providers.types import ChatMessage, ChatRequest, ChatResponse, HealthStatus

KEY = "sk-live-0123456789abcdefghijKLMNOPQRSTuvwxyz"
CREDENTIAL = "cred-9f8e7d6c5b4a39281706"
STORED_KEY = "sk-stored-ZYXWVUTSRQPONMLK0987654321"
ECHO_PROPERTIES = EchoProvider.config_json_schema["properties"]


class KeyedEcho(EchoProvider):
    """Echo with two secrets: one by its name (``api_key``), one by its schema (``writeOnly``)."""

    config_json_schema = {
        **EchoProvider.config_json_schema,
        "properties": {
            **ECHO_PROPERTIES,
            "api_key": {"type": "string"},
            "credential": {"type": "string", "writeOnly": True},
        },
    }
    schema_broken = False
    refuse_key = False

    def get_config_schema(self) -> dict[str, Any]:
        if self.schema_broken:
            raise RuntimeError("schema gone")
        return super().get_config_schema()

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        if self.refuse_key:  # an upstream that quotes the key back, padding and all
            raise AuthenticationError(f"the upstream refused {self.config['api_key']}")
        return await super().chat_completion(request)


def leaks(text: str, secret: str) -> list[str]:
    """Return the WINDOW-long runs of SECRET that TEXT holds."""
    runs = {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}
    return sorted(run for run in runs if run in text)


async def serve_keyed(api_key: str = f"  {KEY}  ") -> KeyedEcho:
    """Serve KeyedEcho as live provider "keyed" in this test's runtime; return the instance."""
    runtime.registry.register(KeyedEcho, "keyed")
    config = {"prefix": "Echo: ", "api_key": api_key, "credential": CREDENTIAL}
    await runtime.registry.apply(ProviderSpec("keyed", "keyed", config))
    provider = runtime.registry.get("keyed")
    assert isinstance(provider, KeyedEcho)
    return provider


# --- the rule ----------------------------------------------------------------


def test_the_schemas_secret_fields_and_secret_looking_names_count_and_nothing_else() -> None:
    names = schema_secret_names(lambda: KeyedEcho.config_json_schema)
    assert names == {"api_key", "credential"}
    config = {
        "prefix": "Echo: reply",
        "default_model": "echo-1",
        "api_key": KEY,
        "credential": CREDENTIAL,
        "extra_token": "tok-abcdefgh",  # not in the schema: counted by its name
    }
    assert config_secret_values(config, names) == [KEY, CREDENTIAL, "tok-abcdefgh"]


def test_an_unknown_schema_counts_every_string_setting() -> None:
    config = {"base_url": "http://127.0.0.1:9", "api_key": KEY, "timeout": 30.0, "flag": True}
    assert config_secret_values(config, None) == ["http://127.0.0.1:9", KEY]


def test_values_are_stripped_counted_once_and_dropped_when_too_short() -> None:
    config = {
        "api_key": f"  {KEY}\n",
        "other_api_key": KEY,
        "short_token": " abc ",
        "blank_secret": "   ",
        "none_password": None,
    }
    assert config_secret_values(config, frozenset()) == [KEY]
    assert config_secret_values("not a dict", None) == []


def test_a_whitespace_padded_secret_is_redacted_where_it_is_quoted_bare_or_escaped() -> None:
    secrets = config_secret_values({"api_key": f"  {KEY}\r\n"}, frozenset())
    for quoted in (KEY, f"Bearer {KEY}\\r\\n", repr(f"  {KEY}\r\n"), KEY[5:20]):
        redacted = redact(f"upstream said: {quoted}.", secrets)
        assert leaks(redacted, KEY) == [], quoted
        assert redacted.startswith("upstream said: ")
    assert redact(f"key {KEY} refused", secrets) == "key sk-...wxyz refused"


def test_a_plugin_whose_schema_raises_has_every_string_setting_counted() -> None:
    provider = KeyedEcho({"api_key": KEY, "credential": CREDENTIAL, "prefix": "P: x"}, name="k")
    assert instance_secret_values(provider) == [KEY, CREDENTIAL]
    provider.schema_broken = True

    def broken_schema() -> dict[str, Any]:
        raise SystemExit(3)

    assert schema_secret_names(broken_schema) is None
    assert schema_secret_names(lambda: ["not", "a", "schema"]) is None
    assert set(instance_secret_values(provider)) == {KEY, CREDENTIAL, "P: x", "echo-1"}


def test_the_http_layers_secret_values_are_the_rule() -> None:
    provider = OpenAIProvider({"api_key": f"  {KEY} ", "organization": "org-visible"}, name="o")
    assert provider.secret_values() == instance_secret_values(provider) == [KEY]


# --- the paths that use it ---------------------------------------------------


async def test_the_registry_keeps_the_names_it_read_at_build_when_the_schema_later_raises() -> None:
    provider = await serve_keyed()
    assert runtime.registry.secret_values("keyed") == [KEY, CREDENTIAL]
    provider.schema_broken = True
    assert runtime.registry.secret_values("keyed") == [KEY, CREDENTIAL]
    assert runtime.registry.secret_values("nobody") == []


async def test_the_error_response_strips_a_padded_key_even_when_the_schema_raises() -> None:
    provider = await serve_keyed()
    provider.schema_broken = True
    error = AuthenticationError(f"upstream refused {KEY} and {CREDENTIAL}", provider="keyed")
    status, body, _ = provider_error_body(error)
    assert status == error.http_status
    message = body["error"]["message"]
    assert leaks(message, KEY) == [] and leaks(message, CREDENTIAL) == []
    assert message.startswith("upstream refused sk-...wxyz")


async def test_log_records_are_redacted_with_the_live_secrets_stripped() -> None:
    await serve_keyed()
    assert set(live_secret_values()) >= {KEY, CREDENTIAL}
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "sent %s", (KEY,), None)
    redact_record(record, live_secret_values())
    assert record.getMessage() == "sent sk-...wxyz"


async def test_the_manager_marks_a_misconfigured_provider_with_its_key_masked() -> None:
    provider = await serve_keyed()
    provider.refuse_key = True
    manager = ModelManager(runtime.registry)
    hello = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
    with pytest.raises(AuthenticationError):
        await manager.chat_completion(hello, "keyed")
    reason = manager.breaker("keyed").as_dict()["misconfigured_reason"]
    assert reason.startswith("the upstream refused ") and leaks(reason, KEY) == []
    assert reason.strip().endswith("sk-...wxyz")  # the padding is no secret: kept


async def test_the_health_report_masks_the_stored_and_the_live_secrets() -> None:
    await serve_keyed()
    config = ProviderConfig(name="keyed", plugin="keyed")
    config.secrets = {"api_key": f" {STORED_KEY} ", "note": "not secret by name, but stored as one"}
    assert provider_secret_values(name="keyed", config=config) == [
        STORED_KEY,
        "not secret by name, but stored as one",
        KEY,
        CREDENTIAL,
    ]
    status = HealthStatus(available=False, error=f"rotated {STORED_KEY} to {KEY}")
    health = health_from_status("keyed", status, config)
    assert health.error == "rotated sk-...4321 to sk-...wxyz"


async def test_the_admin_masks_the_stored_and_the_live_secrets_in_what_it_shows() -> None:
    await serve_keyed()
    config = ProviderConfig(name="keyed", plugin="keyed", enabled=False)
    config.secrets = {"api_key": STORED_KEY}
    config.disabled_reason = f"turned off: {STORED_KEY} leaked, and {KEY} too"
    shown = admin.site._registry[ProviderConfig].live_state(config)
    assert shown == "disabled: turned off: sk-...4321 leaked, and sk-...wxyz too"
