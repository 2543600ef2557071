"""Providers can only be pointed at allowed upstreams; never at metadata or link-local.

Bad base URLs are refused wherever they are set (400 naming ``base_url``), and
an upstream's redirect is never followed, wherever it points.
"""

from __future__ import annotations

from typing import Any

import pytest

from providers.errors import ProtocolError, ProviderInitializationError
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest
from providers.upstream.policy import base_url_problem

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
        # 0.0.0.0 and :: reach the machine's own services, whatever is blocked.
        ("http://0.0.0.0:8000/", "blocked range (0.0.0.0/8)"),
        ("http://0/", "blocked range (0.0.0.0/8)"),
        ("http://[::]:8000/", "blocked range (::/128)"),
        # IPv6 addresses that carry the metadata IPv4 address.
        ("http://[::169.254.169.254]/", "(that is 169.254.169.254)"),
        ("http://[::ffff:0:a9fe:a9fe]/", "(that is 169.254.169.254)"),
        ("http://[64:ff9b::a9fe:a9fe]/", "(that is 169.254.169.254)"),
        ("http://[64:ff9b:1::a9fe:a9fe]/", "(that is 169.254.169.254)"),
        ("http://[2002:a9fe:a9fe::]/", "(that is 169.254.169.254)"),
        ("http://[2001:0:a9fe:a9fe::1]/", "(that is 169.254.169.254)"),  # Teredo server
        # The legacy IPv4 spellings inet_aton (and so getaddrinfo) accepts.
        ("http://0xa9fea9fe/", "169.254.169.254 is in a blocked range"),
        ("http://2852039166/", "169.254.169.254 is in a blocked range"),
        ("http://169.254.43518/", "169.254.169.254 is in a blocked range"),
        ("http://0xa9.0xfe.0xa9.0xfe/", "169.254.169.254 is in a blocked range"),
        ("http://0251.0376.0251.0376/", "Invalid IPv4 address"),
        ("http://999.1.1.1/", "Invalid IPv4 address"),
        # Metadata names, which resolve only inside the cloud.
        ("http://metadata.google.internal/", "cloud metadata service"),
        ("http://METADATA.Google.Internal./", "cloud metadata service"),
        (
            "http://metadata\u3002google\u3002internal/",
            "cloud metadata service",
        ),  # ideographic dots
        ("http://metadata/computeMetadata/v1/", "cloud metadata service"),
        ("http://instance-data/latest/", "cloud metadata service"),
        ("http://instance-data.us-west-2.compute.internal/", "cloud metadata service"),
    ],
)
def test_bad_base_urls_are_refused(url: str, problem: str) -> None:
    assert problem in base_url_problem(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "http://127.0.0.1:11434",  # loopback stays allowed unless ECHO_UPSTREAM_BLOCK adds it
        "http://localhost:11434",
        "http://[::1]:11434",
        "http://10.0.0.5:8080/v1",
        "https://metadata-service.example.com/v1",  # only the metadata names themselves
        "http://[2001:db8::1]/",
    ],
)
def test_good_base_urls_pass(url: str) -> None:
    assert base_url_problem(url) is None


def test_the_block_list_applies_to_every_spelling(settings) -> None:
    settings.ECHO_UPSTREAM_BLOCK = ["127.0.0.0/8"]
    for host in [
        "127.0.0.1",
        "127.1",
        "0x7f000001",
        "2130706433",
        "017700000001",
        "[::ffff:127.0.0.1]",
    ]:
        assert "blocked range (127.0.0.0/8)" in base_url_problem(f"http://{host}:8080/"), host


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
    from providers.config.services import provider_config_create

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


# Saved through PATCH before (only the live load refused them).
SPELLED_URLS = [
    "http://0xa9fea9fe/v1",
    "http://2852039166/v1",
    "http://0251.0376.0251.0376/v1",
    "http://169.254.43518/v1",
    "http://0.0.0.0:8000/v1",
    "http://[64:ff9b::a9fe:a9fe]/v1",
    "http://metadata.google.internal/v1",
]


@pytest.mark.parametrize("url", SPELLED_URLS)
def test_patch_refuses_every_spelling_of_a_blocked_host(admin_api, openai_config, url) -> None:
    from providers.models import ProviderConfig, ProviderConfigChange

    body = {"settings": {"base_url": url}}
    response = admin_api.patch("/api/providers/openai/", body, format="json")
    assert _refused_field(response) == "base_url"
    assert ProviderConfig.objects.get(name="openai").settings["base_url"] == "http://127.0.0.1:9/v1"
    assert ProviderConfigChange.objects.filter(provider_name="openai").count() == 1  # created


@pytest.mark.parametrize("url", ["http://0xa9fea9fe/v1", "http://metadata.google.internal/v1"])
def test_the_admin_form_refuses_a_blocked_host(client, admin_user, openai_config, url) -> None:
    from django.urls import reverse

    from providers.models import ProviderConfig
    from tests.providers.test_admin import form_data

    client.force_login(admin_user)
    page = reverse("admin:providers_providerconfig_change", args=[openai_config.pk])
    response = client.post(page, form_data(client.get(page), setting__base_url=url))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["setting__base_url"]
    assert "blocked range" in errors[0] or "cloud metadata" in errors[0]
    assert ProviderConfig.objects.get(name="openai").settings["base_url"] == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("url", ["http://0xa9fea9fe/v1", "http://metadata.google.internal/v1"])
def test_the_yaml_import_refuses_a_blocked_host(db, tmp_path, url) -> None:
    import io

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from providers.models import ProviderConfig

    path = tmp_path / "providers.yaml"
    path.write_text(f"ai_providers:\n  openai:\n    api_key: {KEY}\n    base_url: {url}\n")
    out = io.StringIO()
    with pytest.raises(CommandError, match="invalid and were not imported"):
        call_command("sync_providers", "--file", str(path), stdout=out, stderr=out)
    assert "base_url:" in out.getvalue()
    assert not ProviderConfig.objects.filter(name="openai").exists()


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


def test_a_plugin_not_built_on_http_provider_gets_the_url_policy_too(clean_runtime) -> None:
    from providers.config.services import provider_config_errors
    from providers.plugins.echo_provider import EchoProvider

    class CustomProvider(EchoProvider):
        def get_config_schema(self) -> dict[str, Any]:
            return {
                "type": "object",
                "properties": {
                    "endpoint": {"type": "string", "format": "uri"},
                    "callback_url": {"type": "string"},
                    "prefix": {"type": "string"},
                },
            }

    clean_runtime.registry.register(CustomProvider, "custom-url")
    errors = provider_config_errors(
        plugin="custom-url",
        settings={
            "endpoint": "http://0xa9fea9fe/",
            "callback_url": "http://metadata.google.internal/",
            "prefix": "http://169.254.169.254/ is only text here",
        },
        secrets={},
    )
    assert "blocked range" in errors["endpoint"][0]
    assert "cloud metadata service" in errors["callback_url"][0]
    assert "prefix" not in errors
    assert not provider_config_errors(
        plugin="custom-url", settings={"endpoint": "http://127.0.0.1:9000/"}, secrets={}
    )


def test_a_provider_spec_never_shows_its_config_in_a_repr() -> None:
    spec = ProviderSpec(name="openai", plugin="openai", config={"api_key": KEY})
    assert KEY[3:11] not in repr(spec)
