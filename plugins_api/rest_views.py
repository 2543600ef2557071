"""REST resources over the provider models, and the OpenAPI schema and docs.

``/api/providers/`` is the CRUD resource of provider configurations (looked
up by name; secrets write-only, shown masked); every write goes through
``providers.services``, whose post-save signal reloads the provider.
``/api/health-checks/`` is the read-only, paginated health history.

The schema (``/api/schema/``) and the browsable docs (``/api/docs/``, assets
served locally from drf_spectacular_sidecar) need an admin-scoped key or a
staff session, like the rest of ``/api/``: they describe the management API.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import viewsets
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from plugins_api.authentication import IsAdminClient
from plugins_api.serializers import (
    HealthCheckFilterSerializer,
    HealthCheckSerializer,
    ProviderConfigSerializer,
)
from providers import selectors
from providers.models import HealthCheck, ProviderConfig
from providers.services import provider_config_delete


@extend_schema_view(
    list=extend_schema(summary="List the configured providers"),
    create=extend_schema(summary="Configure a new provider"),
    retrieve=extend_schema(summary="Return one provider"),
    update=extend_schema(summary="Replace a provider's configuration (secrets still merge)"),
    partial_update=extend_schema(summary="Change part of a provider's configuration"),
    destroy=extend_schema(summary="Delete a provider"),
)
@extend_schema(tags=["providers"])
class ProviderConfigViewSet(viewsets.ModelViewSet):
    """Provider configurations, by name."""

    serializer_class = ProviderConfigSerializer
    lookup_field = "name"
    # Any name reaches the view, so that an unknown one gets a JSON 404, not the site's page.
    lookup_value_regex = "[^/]+"
    parser_classes = [JSONParser]

    def get_queryset(self) -> QuerySet[ProviderConfig]:
        return selectors.provider_config_list()

    def perform_destroy(self, instance: ProviderConfig) -> None:
        provider_config_delete(config=instance)


@extend_schema_view(
    list=extend_schema(
        summary="List recorded health checks, newest first",
        parameters=[HealthCheckFilterSerializer],
    ),
    retrieve=extend_schema(summary="Return one recorded health check"),
)
@extend_schema(tags=["health"])
class HealthCheckViewSet(viewsets.ReadOnlyModelViewSet):
    """The health history of the providers."""

    serializer_class = HealthCheckSerializer

    def get_queryset(self) -> QuerySet[HealthCheck]:
        if self.action != "list":
            return selectors.health_check_list()
        filters = HealthCheckFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return selectors.health_check_list(**filters.validated_data)


class JSONErrorsMixin:
    """Render this view's errors in Echo's JSON error shape, whatever its normal renderer."""

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)  # type: ignore[misc]
        request: Any = self.request  # type: ignore[attr-defined]
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
        return response


class SchemaView(JSONErrorsMixin, SpectacularAPIView):
    """The OpenAPI 3 schema (YAML, or JSON with ``?format=json`` or ``Accept``)."""

    permission_classes = [IsAdminClient]


class DocsView(JSONErrorsMixin, SpectacularSwaggerView):
    """Swagger UI over the schema, its assets served by this site."""

    permission_classes = [IsAdminClient]
