"""A plugin's metadata and config schema, declared either way, serve every path that reads them.

The class-level form (``metadata = PluginMetadata(...)``, ``config_json_schema
= {...}``) and the guide's form (a ``metadata`` property and a
``get_config_schema`` method, both using ``self``) go through the paths that
have no configured instance (the admin's plugin list and forms, the schema
endpoint, validation before a save) and through a live instance (the
registry, the metadata endpoints).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from providers.base import AbstractAIProvider, PluginCapability, PluginMetadata
from providers.config.services import provider_config_create
from providers.errors import PluginError
from providers.models import ProviderConfig
from providers.runtime import process as runtime
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.types import ChatRequest, ChatResponse, HealthStatus
from tests.providers.test_admin import form_data

DESCRIPTION = "Answers with the name of its default model."


class _Answering(AbstractAIProvider):
    """The chat half both plugins share: it answers with its default model's name."""

    async def initialize(self) -> None:
        pass

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        model = request.model or self.config["default_model"]
        return ChatResponse(content=model, model=model, provider=self.name)

    async def health_check(self) -> HealthStatus:
        return HealthStatus(available=True, models=await self.list_models())

    async def list_models(self) -> list[str]:
        return [self.config["default_model"]]


class ClasslevelProvider(_Answering):
    """Declares its metadata and schema as class attributes."""

    metadata = PluginMetadata(
        name="Class level",
        version="1.0.0",
        description=DESCRIPTION,
        capabilities=[PluginCapability.STREAMING],
        models=["plain-1", "plain-2"],
    )

    config_json_schema = {
        "type": "object",
        "title": "Class-level settings",
        "properties": {
            "default_model": {
                "type": "string",
                "title": "Default model",
                "default": "plain-1",
                "minLength": 1,
            },
            "greeting": {"type": "string", "title": "Greeting", "maxLength": 5},
        },
        "additionalProperties": False,
    }


class GuidestyleProvider(_Answering):
    """Computes its metadata and schema on the instance, as the guide writes them.

    Both read what only an instance has (``self.config``, ``self.name``): a
    bare ``cls.__new__(cls)`` has neither, and breaks them.
    """

    def _model_setting(self) -> dict[str, Any]:
        return {"type": "string", "title": "Default model", "default": "guide-1", "minLength": 1}

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(
            name="Guide style",
            version="1.0.0",
            description=DESCRIPTION,
            capabilities=[PluginCapability.STREAMING],
            models=[self.config["default_model"], f"{self.name}-extra"],
        )

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "title": f"{self.name}: guide-style settings",
            "properties": {
                "default_model": self._model_setting(),
                "greeting": {"type": "string", "title": "Greeting", "maxLength": 5},
            },
            "additionalProperties": False,
        }


PLUGINS = {"classlevel": ClasslevelProvider, "guidestyle": GuidestyleProvider}
DEFAULT_MODEL = {"classlevel": "plain-1", "guidestyle": "guide-1"}

pytestmark = pytest.mark.parametrize("plugin", sorted(PLUGINS))


@pytest.fixture
def api(admin_key) -> tuple[APIClient, dict[str, str]]:
    return APIClient(), {"HTTP_AUTHORIZATION": f"Bearer {admin_key[1]}"}


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def registered(plugin: str) -> type[AbstractAIProvider]:
    runtime.registry.register(PLUGINS[plugin], plugin)
    return PLUGINS[plugin]


def test_the_class_answers_without_an_instance(plugin: str) -> None:
    cls = PLUGINS[plugin]
    metadata = cls.plugin_metadata()
    assert metadata.description == DESCRIPTION
    assert metadata.models[0] == DEFAULT_MODEL[plugin]
    schema = cls.config_schema()
    assert schema["properties"]["default_model"]["default"] == DEFAULT_MODEL[plugin]
    assert "max_retries" in schema["properties"]  # normalized: the routing settings are in
    assert cls.check_config({"greeting": "far too long"}) == {
        "greeting": ["Must be at most 5 characters long."]
    }


async def test_the_registry_serves_it_with_its_configured_models(plugin: str) -> None:
    registry = ProviderRegistry()
    registry.register(PLUGINS[plugin], plugin)
    await registry.apply(ProviderSpec("mine", plugin, {"default_model": "chosen-1"}))
    assert registry.metadata("mine").models[0] == "chosen-1"
    assert (await registry.get("mine").chat_completion(ChatRequest(messages=[]))).content == (
        "chosen-1"
    )
    await registry.shutdown_all()


def test_the_admin_lists_it_and_builds_its_form(plugin: str, staff, db) -> None:
    registered(plugin)
    chooser = staff.get(reverse("admin:providers_providerconfig_add")).content.decode()
    assert f'href="?plugin={plugin}"' in chooser and DESCRIPTION in chooser

    url = reverse("admin:providers_providerconfig_add") + f"?plugin={plugin}"
    page = staff.get(url)
    html = page.content.decode()
    assert 'name="setting__default_model"' in html and 'name="setting__greeting"' in html

    refused = staff.post(url, form_data(page, name="mine", setting__greeting="far too long"))
    assert refused.status_code == 200
    assert list(refused.context["adminform"].form.errors) == ["setting__greeting"]
    assert not ProviderConfig.objects.filter(name="mine").exists()

    saved = staff.post(url, form_data(page, name="mine", setting__greeting="hi"))
    assert saved.status_code == 302
    assert ProviderConfig.objects.get(name="mine").settings == {"greeting": "hi"}


def test_the_api_reads_its_schema_and_metadata_and_checks_changes(plugin: str, api, db) -> None:
    client, admin = api
    registered(plugin)
    by_plugin = client.get(f"/plugins/{plugin}/config-schema", **admin).json()
    assert by_plugin["schema"]["properties"]["default_model"]["default"] == DEFAULT_MODEL[plugin]

    provider_config_create(name="mine", plugin=plugin, settings={"default_model": "chosen-1"})
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "mine") is None
    metadata = client.get("/plugins/mine/metadata", **admin).json()
    assert metadata["description"] == DESCRIPTION and metadata["models"][0] == "chosen-1"

    refused = client.put(
        "/plugins/mine/config", {"greeting": "far too long"}, format="json", **admin
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "greeting"
    assert ProviderConfig.objects.get(name="mine").settings == {"default_model": "chosen-1"}


def test_a_guide_style_member_that_raises_is_a_plugin_error(plugin: str) -> None:
    class BrokenMetadata(PLUGINS[plugin]):  # type: ignore[misc, valid-type]
        @property
        def metadata(self) -> PluginMetadata:
            raise KeyError("no such setting")

    class BrokenSchema(PLUGINS[plugin]):  # type: ignore[misc, valid-type]
        def get_config_schema(self) -> dict[str, Any]:
            return self.config["nothing"]

    with pytest.raises(PluginError, match=r"BrokenMetadata.metadata failed: KeyError"):
        BrokenMetadata.plugin_metadata()
    with pytest.raises(PluginError, match=r"BrokenSchema.get_config_schema failed: KeyError"):
        BrokenSchema.config_schema()
