"""Providers can only be pointed at allowed upstreams; never at metadata or link-local.

Bad base URLs are refused wherever they are set (400 naming ``base_url``), and
an upstream's redirect is never followed, wherever it points.
"""

from __future__ import annotations

from typing import Any

import pytest

from providers.errors import ProtocolError, ProviderInitializationError
from providers.plugins.openai_provider import OpenAIProvider
from providers.registry import ProviderRegistry, ProviderSpec
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest
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


# --- through the API: refused with 400 naming base_url, nothing changed ---------

REFUSED_URLS = [
    "http://169.254.169.254/",
    "https://user:pass@example.com/v1",
    "ftp://example.com/v1",
    "file:///etc/passwd",
]


@pytest.fixture
def admin_api(admin_key):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key[1]}")
    return client


@pytest.fixture
def openai_config(db):
    from providers.services import provider_config_create

    return provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": "http://127.0.0.1:9/v1"},
        secrets={"api_key": KEY},
    )


def _refused_field(response) -> str:
    assert response.status_code == 400, response.content
    return response.json()["error"]["field"]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_put_plugin_config_refuses_a_bad_base_url(admin_api, openai_config, url) -> None:
    from providers.models import ProviderConfig, ProviderConfigChange

    response = admin_api.put("/plugins/openai/config", {"base_url": url}, format="json")
    assert _refused_field(response) == "base_url"
    assert ProviderConfig.objects.get(name="openai").settings["base_url"] == "http://127.0.0.1:9/v1"
    assert ProviderConfigChange.objects.filter(provider_name="openai").count() == 1  # created
    assert "pass@" not in response.content.decode()


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_creating_a_provider_refuses_a_bad_base_url(admin_api, db, url) -> None:
    from providers.models import ProviderConfig

    body = {
        "name": "openai",
        "plugin": "openai",
        "settings": {"base_url": url},
        "secrets": {"api_key": KEY},
    }
    assert _refused_field(admin_api.post("/api/providers/", body, format="json")) == "base_url"
    assert not ProviderConfig.objects.exists()


# --- redirects are never followed -------------------------------------------------


class RedirectingUpstream(FakeOpenAI):
    """An OpenAI look-alike that answers every API call with a 302 to LOCATION."""

    routes = {
        ("POST", "/v1/chat/completions"): "redirect",
        ("GET", "/v1/models"): "redirect",
    }
    location = ""

    def redirect(self, handler: Any, body: Any, fault: Any) -> None:
        handler.send_response(302)
        handler.send_header("Location", self.location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


async def _calls_through(upstream: RedirectingUpstream) -> None:
    """Chat (plain and streamed) and health-check through UPSTREAM: each fails, typed."""
    provider = OpenAIProvider({"api_key": KEY, "base_url": upstream.base_url}, name="openai")
    await provider.initialize()
    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
    try:
        with pytest.raises(ProtocolError, match="does not follow redirects") as plain:
            await provider.chat_completion(request)
        assert plain.value.status_code == 302
        with pytest.raises(ProtocolError, match="does not follow redirects"):
            async for _ in provider.chat_completion_stream(request):
                pass
        health = await provider.health_check()
        assert health.available is False and "redirect" in health.error
    finally:
        await provider.shutdown()
    assert len(upstream.requests) == 3


async def test_a_redirect_to_an_internal_address_is_not_followed() -> None:
    # First to a target on loopback that records what reaches it: nothing may.
    with FakeOpenAI() as internal, RedirectingUpstream() as upstream:
        upstream.location = f"{internal.url}/latest/meta-data/"
        await _calls_through(upstream)
        assert internal.requests == []
    # Then the cloud metadata address itself, named in the error by host only.
    with RedirectingUpstream() as upstream:
        upstream.location = "http://169.254.169.254/latest/meta-data/iam?token=abc"
        provider = OpenAIProvider({"api_key": KEY, "base_url": upstream.base_url}, name="openai")
        await provider.initialize()
        try:
            with pytest.raises(ProtocolError) as refused:
                await provider.chat_completion(
                    ChatRequest(messages=[ChatMessage(role="user", content="hi")])
                )
        finally:
            await provider.shutdown()
        assert "redirect to http://169.254.169.254;" in refused.value.message
        assert "token" not in refused.value.message
