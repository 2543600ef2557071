"""The guide's plugin management API: list, inspect, reload, reconfigure and discover providers.

Thin views: they validate the request, call the registry (through
``run_in_serving_loop``), the services, selectors and health checks, and
render. Every view needs an admin-scoped key or a staff session (the
default permission) except ``GET /health``, which is public and minimal
for load balancers: an async view (``public_health``), answered from
memory on the event loop.

Payloads (see the OpenAPI schema at ``/api/schema/`` for every field):

- a *provider* is the ``ProviderConfigSerializer`` shape: the stored
  configuration (secrets masked), its capabilities and a ``live`` object
  with what this worker's registry knows;
- a *health* entry is ``{name, available, models, response_time_ms, error,
  last_error, checked_at, breaker}``: ``error`` is what this check found,
  ``last_error`` the last load/reload error or why the provider is disabled,
  ``breaker`` the state of this worker's circuit breaker for it;
- maps keyed by name (health, metadata, instances) are JSON objects.

A provider name that collides with a fixed path (``health``, ``metadata``,
``instances``, ``discover``) is reachable through ``/api/providers/``.

Changes (``PUT .../config``, ``POST .../reload`` with a config, ``DELETE``)
go through ``providers.config.services`` like every other write (merged, validated,
a candidate started, then saved with a new revision; every worker applies
it after commit) and are audited with the caller as actor (a staff user's
username, or ``key:<key name>``) and source ``plugins-api``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from plugins_api.admin_api.serializers import (
    ConfigSchemaSerializer,
    DiscoveryReportSerializer,
    ErrorSerializer,
    HealthQuerySerializer,
    HealthSummarySerializer,
    InstanceMapSerializer,
    MetadataMapSerializer,
    MetadataSerializer,
    ModelInfoSerializer,
    ModelListSerializer,
    PluginListSerializer,
    ProviderConfigSerializer,
    ProviderHealthMapSerializer,
    ProviderHealthSerializer,
    ProviderStatusSerializer,
    ReloadRequestSerializer,
)
from plugins_api.edge.bounded_json_parser import BoundedJSONParser
from providers.audit.history import SOURCE_PLUGINS_API, Actor, actor_for_request
from providers.base import AbstractAIProvider, secret_fields
from providers.config import selectors
from providers.config.services import (
    plugin_schema,
    provider_config_delete,
    provider_config_update,
    split_config,
)
from providers.errors import (
    ModelNotFoundError,
    ProviderInitializationError,
    ProviderUnavailableError,
)
from providers.health import status as health
from providers.models import ProviderConfig
from providers.runtime import config_sync
from providers.runtime import process as runtime

TAGS = ["plugins"]
NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="A provider name.")
ERROR = ErrorSerializer


def operation(
    operation_id: str,
    summary: str,
    answer: Any,
    *,
    errors: tuple[int, ...] = (),
    answer_status: int = 200,
    **schema: Any,
) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Return the OpenAPI description (``extend_schema``) of one operation of this API.

    ANSWER is the body of its ANSWER_STATUS response; it may also answer 401
    and 403, and each of ERRORS, in Echo's error shape. SCHEMA adds the rest
    (``parameters``, ``request``, ``description``, ``tags``; ``plugins`` unless given).
    """
    schema.setdefault("tags", TAGS)
    responses = {answer_status: answer} | {code: ERROR for code in sorted({401, 403, *errors})}
    return extend_schema(operation_id=operation_id, summary=summary, responses=responses, **schema)


class ProviderDisabled(exceptions.APIException):
    """The action needs the provider enabled."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "provider_disabled"
    default_detail = "The provider is disabled."


def _provider_data(config: ProviderConfig) -> dict[str, Any]:
    return ProviderConfigSerializer(config).data


def _live_provider(name: str) -> AbstractAIProvider:
    """Return the live provider NAME.

    Raise ``ProviderNotFoundError`` (404) for an unknown name and
    ``ProviderUnavailableError`` (503) for a configured one that is not serving.
    """
    if name in runtime.registry:
        return runtime.registry.get(name)
    config = selectors.provider_config_get(name=name)
    reason = selectors.provider_last_error(config) or "Not loaded."
    raise ProviderUnavailableError(
        f"Provider {name!r} is configured but not serving: {reason}", provider=name
    )


def _actor(request: Request) -> Actor:
    return actor_for_request(request, SOURCE_PLUGINS_API)


def _body_object(request: Request, field: str) -> dict[str, Any]:
    """Return the request body, which must be a JSON object; else 400 naming FIELD."""
    if not isinstance(request.data, dict):
        raise exceptions.ValidationError({field: ["Send a JSON object."]})
    return dict(request.data)


class PluginListView(APIView):
    """Every configured provider (secrets masked, with its live status) and every plugin."""

    @operation(
        "plugins_list",
        "List the configured providers and the installed plugins",
        PluginListSerializer,
    )
    def get(self, request: Request) -> Response:
        data = {"providers": selectors.provider_config_list(), "plugins": selectors.plugin_list()}
        return Response(PluginListSerializer(data).data)


class PluginInstancesView(APIView):
    """The provider instances live in the worker that answers, by name."""

    @operation(
        "plugins_instances",
        "List this worker's live provider instances by name",
        InstanceMapSerializer,
    )
    def get(self, request: Request) -> Response:
        return Response(InstanceMapSerializer(selectors.provider_instances()).data)


class PluginMetadataListView(APIView):
    """The plugin metadata (the guide's ``PluginMetadata``) of every live provider, by name."""

    @operation(
        "plugins_metadata",
        "Return the metadata of every live provider by name",
        MetadataMapSerializer,
    )
    def get(self, request: Request) -> Response:
        return Response(MetadataMapSerializer(selectors.provider_metadata_all()).data)


class PluginHealthView(APIView):
    """The health of every provider: the latest known, or checked now with ``?refresh=1``."""

    @operation(
        "plugins_health",
        "Return every provider's latest health, or check them all now",
        ProviderHealthMapSerializer,
        errors=(400,),
        description=(
            "Without `refresh`, answers at once from the periodic checks of the worker "
            "that answers, waiting on no upstream; a provider it has not checked yet has "
            "`available` and `checked_at` null. With `refresh=1`, live providers are "
            "checked now, concurrently, each within ECHO_HEALTH_TIMEOUT_SECONDS, and one "
            "health-check row is recorded per enabled provider. Either way, configured "
            "providers that are not serving are reported unavailable with the reason, "
            "and each entry carries the provider's circuit-breaker state."
        ),
        parameters=[HealthQuerySerializer],
    )
    def get(self, request: Request) -> Response:
        query = HealthQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        if query.validated_data["refresh"]:
            data = health.provider_health_check_all()
        else:
            data = health.provider_health_latest()
        return Response(ProviderHealthMapSerializer(data).data)


class PluginDiscoverView(APIView):
    """Plugin discovery in the configured directories and entry points."""

    parser_classes = [BoundedJSONParser]

    @operation(
        "plugins_discover",
        "Scan the plugin directories and entry points for new or changed plugins",
        DiscoveryReportSerializer,
        errors=(400,),
        description=(
            "Scans the directories of the ECHO_PLUGIN_DIRS setting for "
            "`{name}_provider.py` files and the `echo.providers` entry points. "
            "The request takes no body: a client cannot choose what code is imported. "
            "A broken plugin is reported, never fatal. Only this worker's registry "
            "learns the plugins."
        ),
        request=None,
    )
    def post(self, request: Request) -> Response:
        if request.data:
            field = next(iter(request.data), None) if isinstance(request.data, dict) else None
            raise exceptions.ValidationError(
                {
                    field or "body": [
                        "This endpoint takes no body: it scans the configured plugin directories."
                    ]
                }
            )
        directories = [str(d) for d in settings.ECHO_PLUGIN_DIRS]
        results = []
        for directory in settings.ECHO_PLUGIN_DIRS:
            results += runtime.run_in_serving_loop(runtime.registry.discover_plugins, directory)
        results += runtime.run_in_serving_loop(runtime.registry.discover_entry_points)
        report = {"directories": directories, "results": [r.as_dict() for r in results]}
        return Response(DiscoveryReportSerializer(report).data)


class ProviderView(APIView):
    """A provider's configuration, to delete."""

    @operation(
        "plugins_delete",
        "Delete a provider's configuration; it leaves service in every worker",
        None,
        errors=(404,),
        answer_status=204,
        parameters=[NAME],
    )
    def delete(self, request: Request, name: str) -> Response:
        provider_config_delete(
            config=selectors.provider_config_get(name=name), actor=_actor(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProviderStatusView(APIView):
    """A provider's configuration (secrets masked), live status, fresh health check and breaker."""

    @operation(
        "plugins_status",
        "Return a provider's configuration, live status, a fresh health check and breaker",
        ProviderStatusSerializer,
        errors=(404,),
        parameters=[NAME],
    )
    def get(self, request: Request, name: str) -> Response:
        config = selectors.provider_config_get(name=name)
        checked = ProviderHealthSerializer(health.provider_health_check(name=name)).data
        data = _provider_data(config)
        data.update({k: v for k, v in checked.items() if k != "name"})
        return Response(data)


class ProviderReloadView(APIView):
    """Reload a provider.

    Without ``config``, every worker re-reads the provider's row from the
    database and applies it, even when it believes it serves that revision
    already (after an SQL change or a restore, say). With ``config``, the
    body is merged into the stored configuration exactly as ``PUT
    .../config`` does (keys left out are kept, a null value removes one, a
    masked secret leaves it unchanged); ``"replace": true`` makes the
    settings sent the whole settings. The new configuration is validated
    (400) and its instance started (409) before anything is saved; either
    way nothing changes and the old instance keeps serving.
    """

    parser_classes = [BoundedJSONParser]

    @operation(
        "plugins_reload",
        "Reload a provider in every worker, from its stored configuration or a change",
        ProviderConfigSerializer,
        errors=(400, 404, 409),
        parameters=[NAME],
        request=ReloadRequestSerializer,
    )
    def post(self, request: Request, name: str) -> Response:
        body = ReloadRequestSerializer(data=_body_object(request, "body"))
        body.is_valid(raise_exception=True)
        given = body.validated_data.get("provider_name")
        if given is not None and given != name:
            raise exceptions.ValidationError(
                {"provider_name": [f"Must be {name!r}, the provider in the URL."]}
            )
        if body.validated_data["replace"] and "config" not in body.validated_data:
            raise exceptions.ValidationError(
                {"replace": ["Replaces the stored settings with 'config': send one."]}
            )
        config = selectors.provider_config_get(name=name)
        if not config.enabled:
            raise ProviderDisabled(
                f"Provider {name!r} is disabled ({config.disabled_reason or 'no reason given'}); "
                "enable it to reload it."
            )
        if "config" in body.validated_data:
            settings_changes, secret_changes = split_config(
                config.plugin, body.validated_data["config"]
            )
            config = provider_config_update(
                config=config,
                changes={
                    "settings": settings_changes,
                    "secrets": secret_changes,
                    "replace_settings": body.validated_data["replace"],
                },
                actor=_actor(request),
            )
            return Response(_provider_data(config))
        _, reason = config.serving_spec()
        if reason:
            # Secrets no key decrypts: reloading would only take it out of service.
            raise ProviderInitializationError(
                f"Provider {name!r} cannot serve: {reason}", provider=name
            )
        error = config_sync.request_reload_everywhere(name)
        if error:
            raise ProviderInitializationError(
                f"Provider {name!r} was not reloaded: {error}", provider=name
            )
        return Response(_provider_data(selectors.provider_config_get(name=name)))


class ProviderConfigView(APIView):
    """Merge a partial configuration into a provider's and hot-reload it in every worker.

    The body is a flat partial configuration (``{"timeout": 30}``, or
    ``{"api_key": "..."}``), split into settings and secrets by the plugin's
    schema and merged into the stored ones; a null value removes a key.
    Unlike the guide's reference implementation, keys not sent are kept. As
    with every write, the new instance is started before the change is
    saved, and only the saved change is ever served. A ``fallbacks`` key
    (unless the plugin has a setting of that name) sets the provider's
    fallback chain, validated as the admin and ``/api/providers/`` validate it.
    """

    parser_classes = [BoundedJSONParser]

    @operation(
        "plugins_config_update",
        "Merge a partial configuration into a provider's and hot-reload it",
        ProviderConfigSerializer,
        errors=(400, 404, 409),
        parameters=[NAME],
        request={"application/json": {"type": "object", "additionalProperties": True}},
    )
    def put(self, request: Request, name: str) -> Response:
        changes = _body_object(request, "config")
        config = selectors.provider_config_get(name=name)
        routing: dict[str, Any] = {}
        if "fallbacks" in changes and "fallbacks" not in (
            plugin_schema(config.plugin).get("properties") or {}
        ):
            routing["fallbacks"] = changes.pop("fallbacks")
        settings_changes, secret_changes = split_config(config.plugin, changes)
        config = provider_config_update(
            config=config,
            changes={"settings": settings_changes, "secrets": secret_changes, **routing},
            actor=_actor(request),
        )
        return Response(_provider_data(config))


class ProviderConfigSchemaView(APIView):
    """The JSON Schema of a provider's (or plugin's) configuration, and which fields are secret."""

    @operation(
        "plugins_config_schema",
        "Return the JSON Schema of a provider's configuration",
        ConfigSchemaSerializer,
        errors=(404,),
        description=(
            "NAME is a configured provider, or, when no provider has that name, an "
            "installed plugin."
        ),
        parameters=[NAME],
    )
    def get(self, request: Request, name: str) -> Response:
        config = ProviderConfig.objects.filter(name=name).first()
        plugin = config.plugin if config else name
        schema = runtime.registry.plugin(plugin).config_schema()
        data = {
            "name": name,
            "plugin": plugin,
            "schema": schema,
            "secret_fields": sorted(secret_fields(schema)),
        }
        return Response(ConfigSchemaSerializer(data).data)


class ProviderMetadataView(APIView):
    """A live provider's plugin metadata."""

    @operation(
        "plugins_provider_metadata",
        "Return a live provider's metadata",
        MetadataSerializer,
        errors=(404, 503),
        parameters=[NAME],
    )
    def get(self, request: Request, name: str) -> Response:
        _live_provider(name)
        metadata = runtime.registry.metadata(name)  # guarded: a plugin's bug is a plugin_error
        return Response(MetadataSerializer(metadata.as_dict()).data)


async def _list_models(name: str) -> list[str]:
    # Through the registry's guard: a plugin's bug is a 502 plugin_error, recorded in its status.
    return await runtime.registry.list_models(name, timeout=settings.ECHO_HEALTH_TIMEOUT_SECONDS)


class ProviderModelsView(APIView):
    """The models a live provider offers (may ask its upstream)."""

    @operation(
        "plugins_models",
        "List the models a live provider offers",
        ModelListSerializer,
        errors=(404, 502, 503, 504),
        parameters=[NAME],
    )
    def get(self, request: Request, name: str) -> Response:
        _live_provider(name)
        models = runtime.run_in_serving_loop(_list_models, name)
        return Response(ModelListSerializer({"provider": name, "models": models}).data)


class ProviderModelInfoView(APIView):
    """What a live provider knows of one model (context length, prices, ...)."""

    @operation(
        "plugins_model_info",
        "Return what a live provider knows of one model",
        ModelInfoSerializer,
        errors=(404, 503),
        parameters=[NAME, OpenApiParameter("model", str, OpenApiParameter.PATH)],
    )
    def get(self, request: Request, name: str, model: str) -> Response:
        _live_provider(name)
        info = runtime.registry.model_info(name, model)  # guarded: a plugin's bug is a plugin_error
        if info is None:
            raise ModelNotFoundError(f"Provider {name!r} has no model {model!r}.", provider=name)
        return Response(ModelInfoSerializer({"provider": name, "model": model, "info": info}).data)


HEALTH_DESCRIPTION = (
    "`ok` when every enabled provider is available, `degraded` when some are, "
    "`down` (HTTP 503) when none is. Answered from the periodic health checks "
    "when they are recent; otherwise from one probe per provider, shared by "
    "concurrent callers and kept for a few seconds. However many probes arrive, "
    "no request makes its own upstream call, and nothing is recorded. Which "
    "providers are enabled is kept in memory by the configuration sync: a "
    "change shows on the next call, and a worker that has read its configuration "
    "answers without touching the database."
)


def _health_status(summary: dict[str, Any]) -> int:
    """Return the HTTP status of the public health SUMMARY: 503 when nothing serves."""
    return status.HTTP_503_SERVICE_UNAVAILABLE if summary["status"] == "down" else 200


@csrf_exempt  # it changes nothing: any other method gets 405, not the CSRF page
@require_safe
async def public_health(request: HttpRequest) -> JsonResponse:
    """Answer whether this worker can serve (``GET``/``HEAD /health``): public, for load balancers.

    An async view: with this worker's state warm it answers on the loop,
    with no query and no thread hop. No credential is read, so a bad
    ``Authorization`` header cannot fail it.
    """
    summary = await health.ahealth_summary()
    # DRF's compact JSON, as this endpoint always answered.
    return JsonResponse(
        summary, status=_health_status(summary), json_dumps_params={"separators": (",", ":")}
    )


class HealthView(APIView):
    """``GET /health`` as DRF sees it: its OpenAPI description, and the same answer, synchronously.

    drf-spectacular documents DRF views only, so ``public_health.cls`` names this
    class: ``/api/schema/`` describes ``/health`` by this ``get``. The URL
    serves the async ``public_health``.
    """

    authentication_classes: list = []  # a probe carries no key; a bad header must not fail it
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["health"],
        operation_id="health",
        summary="Report whether this worker can serve (public, for load balancers)",
        description=HEALTH_DESCRIPTION,
        auth=[],
        responses={200: HealthSummarySerializer, 503: HealthSummarySerializer},
    )
    def get(self, request: Request) -> Response:
        summary = health.health_summary()
        return Response(HealthSummarySerializer(summary).data, status=_health_status(summary))


# The schema generator finds ``/health``'s DRF view where ``as_view`` would have put it.
public_health.cls = HealthView  # type: ignore[attr-defined]
public_health.initkwargs = {}  # type: ignore[attr-defined]


class ProviderHealthView(APIView):
    """The health of one provider, checked now and recorded."""

    @operation(
        "health_provider",
        "Check one provider now and record the result",
        ProviderHealthSerializer,
        errors=(404,),
        parameters=[NAME],
        tags=["health"],
    )
    def get(self, request: Request, name: str) -> Response:
        checked = health.provider_health_check(name=name)
        return Response(ProviderHealthSerializer(checked).data)
