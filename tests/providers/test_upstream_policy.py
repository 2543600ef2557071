"""Providers can only be pointed at allowed upstreams; never at metadata or link-local."""

from __future__ import annotations

import pytest

from providers.errors import ProviderInitializationError
from providers.plugins.openai_provider import OpenAIProvider
from providers.registry import ProviderRegistry, ProviderSpec
from providers.upstream_policy import base_url_problem

KEY = "sk-policy-0000000000000"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/v1", "http:// or https://"),
        ("https://user:pass@example.com/v1", "credentials"),
        ("http://169.254.169.254/latest/meta-data", "blocked range"),
        ("http://[fd00:ec2::254]/", "blocked range"),
        ("http://[fe80::1]/", "blocked range"),
        ("http://[::ffff:169.254.169.254]/", "blocked range"),
        ("https://", "Must name a host"),
    ],
)
def test_bad_base_urls_are_refused(url: str, problem: str) -> None:
    assert problem in base_url_problem(url)


def test_good_base_urls_pass() -> None:
    assert base_url_problem("https://api.openai.com/v1") is None
    assert base_url_problem("http://127.0.0.1:11434") is None


def test_the_allow_list_restricts_hosts(settings) -> None:
    settings.ECHO_UPSTREAM_ALLOW = ["*.openai.com", "10.1.0.0/16"]
    assert base_url_problem("https://api.openai.com/v1") is None
    assert base_url_problem("http://10.1.2.3:8080") is None
    assert "not in ECHO_UPSTREAM_ALLOW" in base_url_problem("https://evil.example/v1")


def test_the_block_list_can_grow(settings) -> None:
    settings.ECHO_UPSTREAM_BLOCK = ["10.0.0.0/8"]
    assert "blocked range" in base_url_problem("http://10.1.2.3/v1")


def test_config_validation_names_base_url() -> None:
    errors = OpenAIProvider({"api_key": KEY}).get_config_errors(
        {"api_key": KEY, "base_url": "http://169.254.169.254/v1"}
    )
    assert "blocked range" in errors["base_url"][0]


async def test_a_name_resolving_to_a_blocked_address_cannot_start(settings) -> None:
    settings.ECHO_UPSTREAM_BLOCK = ["127.0.0.0/8"]  # localhost resolves there
    registry = ProviderRegistry()
    registry.register(OpenAIProvider, "openai")
    with pytest.raises(ProviderInitializationError, match="resolves to"):
        await registry.apply(
            ProviderSpec("openai", "openai", {"api_key": KEY, "base_url": "http://localhost:9/v1"})
        )
    assert "openai" not in registry
