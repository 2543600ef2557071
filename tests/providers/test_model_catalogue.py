"""The model catalogue: bare model names route to the provider that serves them.

In-process registries with the real OpenAI and Anthropic plugins talking to
the fake upstreams over loopback, and, for the database side (the admin's
``routing_priority`` reaching the catalogue), the services and the runtime
of the test process on a serving loop, as a worker has.
"""

from __future__ import annotations

import random

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.errors import ModelNotFoundError, ProviderConfigError
from providers.plugins.anthropic_provider import AnthropicProvider
from providers.plugins.echo_provider import EchoProvider
from providers.plugins.openai_provider import OpenAIProvider
from providers.runtime.manager import ModelManager, Route
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest
from tests.fake_time import FakeClock, RecordedSleep
from tests.providers.test_admin import form_data

KEY = "sk-catalogue-0000000000"


def ask(model: str | None = None, text: str = "hi") -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], model=model)


def new_registry() -> ProviderRegistry:
    registry = ProviderRegistry()
    registry.register(EchoProvider, "echo", source="builtin")
    registry.register(OpenAIProvider, "openai", source="builtin")
    registry.register(AnthropicProvider, "anthropic", source="builtin")
    return registry


def new_manager(registry: ProviderRegistry) -> ModelManager:
    return ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(7), clock=FakeClock())


@pytest.fixture
def upstreams():
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        yield openai, anthropic


async def serve_clouds(registry: ProviderRegistry, openai, anthropic, *, default_echo=True):
    if default_echo:
        await registry.apply(ProviderSpec("echo", "echo", {}, is_default=True))
    await registry.apply(
        ProviderSpec("openai", "openai", {"base_url": openai.base_url, "api_key": KEY})
    )
    await registry.apply(
        ProviderSpec("anthropic", "anthropic", {"base_url": anthropic.base_url, "api_key": KEY})
    )


async def test_bare_names_go_to_the_provider_that_serves_them(upstreams) -> None:
    openai, anthropic = upstreams
    registry = new_registry()
    await serve_clouds(registry, openai, anthropic)
    manager = new_manager(registry)
    try:
        assert manager.resolve(ask("gpt-4o-mini")) == Route("openai", "gpt-4o-mini")
        assert manager.resolve(ask("claude-3-5-haiku-latest")) == Route(
            "anthropic", "claude-3-5-haiku-latest"
        )
        # Names model_info.yaml knows for the plugin, though its metadata does not list them.
        assert manager.resolve(ask("gpt-4.1-nano")).provider == "openai"
        assert manager.resolve(ask("claude-3-opus")).provider == "anthropic"
        # A dated variant of a listed name goes where the listed name goes.
        assert manager.resolve(ask("gpt-4o-2024-08-06")) == Route("openai", "gpt-4o-2024-08-06")
        assert manager.resolve(ask("echo-1")) == Route("echo", "echo-1")
        # No model: the default provider, as before.
        assert manager.resolve(ask()) == Route("echo", None)

        answer = await manager.chat_completion(ask("gpt-4o-mini"))
        assert answer.provider == "openai"
        answer = await manager.chat_completion(ask("claude-3-5-haiku-latest"))
        assert answer.provider == "anthropic"
        streamed = [c async for c in manager.chat_completion_stream(ask("gpt-4o-mini"))]
        assert streamed[-1].metadata["provider"] == "openai"
    finally:
        await registry.shutdown_all()
    assert [r.body["model"] for r in openai.requests_to("/v1/chat/completions")] == [
        "gpt-4o-mini",
        "gpt-4o-mini",
    ]
    assert [r.body["model"] for r in anthropic.requests_to("/v1/messages")] == [
        "claude-3-5-haiku-latest"
    ]


async def test_ambiguity_goes_to_the_lowest_priority_then_the_default_then_by_name(
    upstreams,
) -> None:
    openai, _ = upstreams
    registry = new_registry()
    config = {"base_url": openai.base_url, "api_key": KEY}
    other = FakeOpenAI().start()
    await registry.apply(ProviderSpec("openai", "openai", config))
    await registry.apply(
        ProviderSpec("azure", "openai", {"base_url": other.base_url, "api_key": KEY})
    )
    manager = new_manager(registry)
    try:
        # Equal priorities, no default among them: by name.
        assert manager.resolve(ask("gpt-4o-mini")).provider == "azure"
        # The default provider wins a tie.
        await registry.apply(ProviderSpec("openai", "openai", config, is_default=True))
        assert manager.resolve(ask("gpt-4o-mini")).provider == "openai"
        # A lower priority wins over the default.
        manager.catalogue.set_priority("azure", 5)
        assert manager.resolve(ask("gpt-4o-mini")).provider == "azure"
        manager.catalogue.set_priority("openai", 1)
        assert manager.resolve(ask("gpt-4o-mini")).provider == "openai"
        # The other provider that serves the name is tried before any fallback.
        assert manager.routes(ask("gpt-4o-mini"))[:2] == [
            Route("openai", "gpt-4o-mini"),
            Route("azure", "gpt-4o-mini"),
        ]
        openai.inject(status=503, times=10)
        answer = await manager.chat_completion(ask("gpt-4o-mini"))
        assert answer.provider == "azure"
        assert answer.metadata["fallback_path"][0]["route"] == "openai/gpt-4o-mini"
    finally:
        await registry.shutdown_all()
        other.stop()


async def test_a_name_nobody_serves_is_a_404_listing_close_matches(upstreams) -> None:
    openai, anthropic = upstreams
    registry = new_registry()
    await serve_clouds(registry, openai, anthropic, default_echo=False)
    manager = new_manager(registry)
    try:
        with pytest.raises(ModelNotFoundError) as caught:
            await manager.chat_completion(ask("gpt-4o-mni"))
        error = caught.value
        assert (error.http_status, error.kind, error.field) == (404, "model_not_found", "model")
        assert "gpt-4o-mini" in error.message
        hinted = error.message.split("Did you mean: ", 1)[1].rstrip("?").split(", ")
        assert 1 <= len(hinted) <= 5
        assert all(name in manager.catalogue.names() for name in hinted)
        with pytest.raises(ModelNotFoundError, match="provider/model"):
            manager.resolve(ask("zzzzzzzzzz"))
        # A hostile name is bounded in Echo's own message.
        with pytest.raises(ModelNotFoundError) as caught:
            manager.resolve(ask("x" * 5000))
        assert len(caught.value.message) < 300
        # Nothing reached an upstream.
        assert openai.requests_to("/v1/chat/completions") == []

        # With a default provider, an unknown name is still its to try (an upstream
        # may serve more than it lists); when it does not know it, the hint is added.
        await registry.apply(ProviderSpec("echo", "echo", {}, is_default=True))
        with pytest.raises(ModelNotFoundError) as caught:
            await manager.chat_completion(ask("claude-3-5-haiku-lates"))
        assert caught.value.http_status == 404
        assert "claude-3-5-haiku-latest" in caught.value.message
        with pytest.raises(ModelNotFoundError) as caught:
            [c async for c in manager.chat_completion_stream(ask("gpt-4o-mni"))]
        assert "gpt-4o-mini" in caught.value.message
    finally:
        await registry.shutdown_all()


async def test_the_provider_prefix_and_an_explicit_provider_keep_precedence(upstreams) -> None:
    openai, anthropic = upstreams
    registry = new_registry()
    await serve_clouds(registry, openai, anthropic)
    manager = new_manager(registry)
    try:
        assert manager.resolve(ask("anthropic/gpt-4o-mini")) == Route("anthropic", "gpt-4o-mini")
        assert manager.resolve(ask("gpt-4o-mini"), "echo") == Route("echo", "gpt-4o-mini")
        # A slash that names no provider is part of a bare name.
        assert manager.resolve(ask("library/llama3")) == Route("echo", "library/llama3")
    finally:
        await registry.shutdown_all()


async def test_the_catalogue_follows_providers_and_model_lists(upstreams) -> None:
    openai, anthropic = upstreams
    registry = new_registry()
    await registry.apply(ProviderSpec("echo", "echo", {"models": ["echo-1"]}))
    manager = new_manager(registry)
    assert "shout-1" not in manager.catalogue.names()
    await registry.apply(ProviderSpec("echo", "echo", {"models": ["echo-1", "shout-1"]}))
    assert manager.resolve(ask("shout-1")) == Route("echo", "shout-1")

    await registry.apply(
        ProviderSpec("openai", "openai", {"base_url": openai.base_url, "api_key": KEY})
    )
    assert manager.resolve(ask("gpt-4o-mini")).provider == "openai"
    await registry.unregister("openai")
    with pytest.raises(ModelNotFoundError):
        manager.resolve(ask("gpt-4o-mini"))
    await registry.shutdown_all()


async def test_an_upstream_list_joins_the_catalogue_once_fetched() -> None:
    from providers.runtime import process as runtime

    with FakeOpenAI(models=["gpt-4o-mini", "house-model-7"]) as openai:
        registry = runtime.registry
        registry.register(OpenAIProvider, "openai", source="builtin")
        await registry.apply(
            ProviderSpec("openai", "openai", {"base_url": openai.base_url, "api_key": KEY})
        )
        manager = runtime.manager
        try:
            with pytest.raises(ModelNotFoundError):
                manager.resolve(ask("house-model-7"))
            assert await runtime.model_lists.models("openai", timeout=5) == [
                "gpt-4o-mini",
                "house-model-7",
            ]
            assert manager.resolve(ask("house-model-7")) == Route("openai", "house-model-7")
            # The upstream's list is the truth: a declared model it lacks is no longer claimed.
            with pytest.raises(ModelNotFoundError):
                manager.resolve(ask("gpt-4.1-nano"))
        finally:
            await registry.shutdown_all()


# --- the database side: routing_priority through the services ----------------------


def test_routing_priority_is_saved_audited_and_served_without_queries(
    transactional_db, serving_loop
) -> None:
    from providers.config.services import provider_config_create, provider_config_update
    from providers.models import ProviderConfigChange
    from providers.runtime import process as runtime

    alpha = provider_config_create(
        name="alpha", plugin="echo", settings={"models": ["shared-1", "alpha-only"]}
    )
    provider_config_create(
        name="beta", plugin="echo", settings={"models": ["shared-1"]}, routing_priority=5
    )
    request = ask("shared-1")
    assert runtime.manager.resolve(request) == Route("beta", "shared-1")

    provider_config_update(config=alpha, changes={"routing_priority": 1})
    assert runtime.manager.resolve(request) == Route("alpha", "shared-1")
    entry = ProviderConfigChange.objects.filter(provider_name="alpha").first()
    assert (entry.action, entry.changes) == (
        "updated",
        [{"field": "routing_priority", "before": 100, "after": 1}],
    )
    created = ProviderConfigChange.objects.get(provider_name="beta", action="created")
    assert {"field": "routing_priority", "before": None, "after": 5} in created.changes

    # Per request: memory only.
    with CaptureQueriesContext(connection) as queries:
        for _ in range(200):
            assert runtime.manager.resolve(request).provider == "alpha"
            assert runtime.manager.resolve(ask("alpha-only")).provider == "alpha"
    assert len(queries) == 0

    # Hostile priorities are refused naming the field, and change nothing.
    for bad in (-1, 10**9, "1", True, 1.5, None, [1]):
        with pytest.raises(ProviderConfigError) as caught:
            provider_config_update(config=alpha, changes={"routing_priority": bad})
        assert caught.value.field == "routing_priority"
    alpha.refresh_from_db()
    assert alpha.routing_priority == 1


def test_a_repair_pass_brings_a_priority_set_in_sql(transactional_db, serving_loop) -> None:
    from providers.config.services import provider_config_create
    from providers.models import ProviderConfig
    from providers.runtime import config_sync
    from providers.runtime import process as runtime

    provider_config_create(name="alpha", plugin="echo", settings={"models": ["shared-1"]})
    provider_config_create(name="beta", plugin="echo", settings={"models": ["shared-1"]})
    assert runtime.manager.resolve(ask("shared-1")).provider == "alpha"
    ProviderConfig.objects.filter(name="beta").update(routing_priority=3)
    runtime.run_in_serving_loop(config_sync.repair_all)
    assert runtime.manager.resolve(ask("shared-1")).provider == "beta"


def test_the_admin_form_and_the_api_edit_the_priority(transactional_db, admin_key, client) -> None:
    from providers.config.services import provider_config_create
    from providers.models import ProviderConfig

    provider_config_create(name="alpha", plugin="echo")
    headers = {"Authorization": f"Bearer {admin_key[1]}"}
    response = client.patch(
        "/api/providers/alpha/",
        {"routing_priority": 7},
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code == 200, response.content
    assert response.json()["routing_priority"] == 7
    for bad in (-5, "high", 10**12, [1], {"a": 1}):
        response = client.patch(
            "/api/providers/alpha/",
            {"routing_priority": bad},
            content_type="application/json",
            headers=headers,
        )
        assert response.status_code == 400, bad
        assert response.json()["error"]["field"] == "routing_priority"
    assert ProviderConfig.objects.get(name="alpha").routing_priority == 7


def test_the_admin_page_edits_the_priority(transactional_db, admin_user, client) -> None:
    from providers.config.services import provider_config_create
    from providers.models import ProviderConfig, ProviderConfigChange

    row = provider_config_create(name="alpha", plugin="echo", settings={"prefix": "A: "})
    client.force_login(admin_user)
    url = f"/admin/providers/providerconfig/{row.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert b'name="routing_priority"' in page.content
    form = form_data(page, routing_priority="3")
    response = client.post(url, form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert ProviderConfig.objects.get(name="alpha").routing_priority == 3
    entry = ProviderConfigChange.objects.filter(provider_name="alpha").first()
    assert entry.source == "admin"
    assert {"field": "routing_priority", "before": 100, "after": 3} in entry.changes
    response = client.post(url, {**form, "routing_priority": "-4"})
    assert response.status_code == 200
    assert "routing_priority" in response.context["adminform"].form.errors
    assert ProviderConfig.objects.get(name="alpha").routing_priority == 3


def test_yaml_import_reads_routing_priority(db, tmp_path) -> None:
    from providers.config.files import load_provider_entries
    from providers.config.yaml_import import sync_provider_configs
    from providers.models import ProviderConfig

    path = tmp_path / "test.yaml"
    path.write_text(
        "ai_providers:\n"
        "  alpha:\n    plugin: echo\n    routing_priority: 4\n"
        "  beta:\n    plugin: echo\n    routing_priority: ${BETA_PRIORITY}\n"
        "  gamma:\n    plugin: echo\n    routing_priority: high\n"
    )
    entries = load_provider_entries(path, environ={"BETA_PRIORITY": "9"})
    report = sync_provider_configs(entries=entries)
    assert report.get("alpha").outcome == "created"
    assert ProviderConfig.objects.get(name="alpha").routing_priority == 4
    assert ProviderConfig.objects.get(name="beta").routing_priority == 9
    assert report.get("gamma").outcome == "error"
    assert "routing_priority" in report.get("gamma").errors
    assert not ProviderConfig.objects.filter(name="gamma").exists()
    # Imported again unchanged: the import still owns the rows.
    again = sync_provider_configs(entries=entries)
    assert again.get("alpha").outcome == "unchanged"


def test_the_catalogue_is_rebuilt_only_when_something_changed() -> None:
    async def scenario() -> None:
        registry = new_registry()
        await registry.apply(ProviderSpec("echo", "echo", {"models": ["echo-1"]}))
        manager = new_manager(registry)
        catalogue = manager.catalogue
        builds = []
        original = catalogue._build

        def counting(lists):
            builds.append(1)
            return original(lists)

        catalogue._build = counting
        for _ in range(50):
            manager.resolve(ask("echo-1"))
        assert len(builds) == 1
        catalogue.set_priority("echo", 100)  # the default: nothing changes
        manager.resolve(ask("echo-1"))
        assert len(builds) == 1
        catalogue.set_priority("echo", 4)
        manager.resolve(ask("echo-1"))
        await registry.apply(ProviderSpec("echo", "echo", {"models": ["echo-2"]}))
        manager.resolve(ask("echo-2"))
        assert len(builds) == 3
        await registry.apply(ProviderSpec("other", "echo", {"models": ["echo-3"]}, is_default=True))
        manager.resolve(ask("echo-3"))
        assert len(builds) == 4
        assert catalogue.providers_for("echo-3") == ("other",)
        await registry.unregister("other")
        assert catalogue.providers_for("echo-3") == ()
        assert len(builds) == 5
        for _ in range(50):
            manager.resolve(ask("echo-2"))
        assert len(builds) == 5
        await registry.shutdown_all()

    async_to_sync(scenario)()


def test_a_bare_names_routes_follow_fallbacks_default_and_providers_once_kept() -> None:
    """The routes kept for a name are the ones worked out anew, whatever changed since."""
    from providers.runtime.manager import SERVED_ROUTES_KEPT, Route

    async def scenario() -> None:
        registry = new_registry()
        await registry.apply(ProviderSpec("a", "echo", {"models": ["m-1"]}))
        await registry.apply(ProviderSpec("b", "echo", {"models": ["m-2"]}))
        manager = new_manager(registry)
        assert manager.routes(ask("m-1")) == [Route("a", "m-1")]
        assert manager.routes(ask("m-1")) == [Route("a", "m-1")]  # kept, equal

        await registry.apply(ProviderSpec("a", "echo", {"models": ["m-1"]}, fallbacks=("b",)))
        assert manager.routes(ask("m-1")) == [Route("a", "m-1"), Route("b", None)]
        await registry.apply(ProviderSpec("c", "echo", {"models": ["m-3"]}, is_default=True))
        assert manager.routes(ask("m-1")) == [Route("a", "m-1"), Route("b", None), Route("c", None)]
        await registry.unregister("b")
        assert manager.routes(ask("m-1")) == [Route("a", "m-1"), Route("c", None)]
        await registry.apply(ProviderSpec("b", "echo", {"models": ["m-1"]}))
        manager.catalogue.set_priority("b", 1)
        assert manager.routes(ask("m-1"))[:2] == [Route("b", "m-1"), Route("a", "m-1")]
        routes = manager.routes(ask("m-1"))
        routes.append(Route("x", None))  # a caller's copy
        assert Route("x", None) not in manager.routes(ask("m-1"))

        for n in range(3 * SERVED_ROUTES_KEPT):  # dated variants: each a name of its own
            assert manager.routes(ask(f"m-1-{n}"))[0].provider == "b"
            assert len(manager._served) <= SERVED_ROUTES_KEPT
        await registry.shutdown_all()

    async_to_sync(scenario)()
