"""REST resources over the provider models, and the OpenAPI schema and docs.

``/api/providers/`` is the CRUD resource of provider configurations (looked
up by name; secrets write-only, shown masked); every write goes through
``providers.config.services``, whose post-save signal reloads the provider, and is
audited with the caller as actor (the username of a staff session, or
``key:<key name>``; source ``api``). ``/api/health-checks/`` is the
read-only, paginated health history.

The audit trail: ``/api/providers/{name}/history/`` (one provider, deleted
ones too) and ``/api/history/`` (every provider, with filters) are
paginated, newest first; their ``export/`` returns every matching entry at
once, as JSON or, with ``?format=csv`` (or ``Accept: text/csv``), as CSV
with one row per changed field, for auditors.

The schema (``/api/schema/``) and the browsable docs (``/api/docs/``, assets
served locally from drf_spectacular_sidecar) need an admin-scoped key or a
staff session, like the rest of ``/api/``: they describe the management API
and the compatible ``/v1`` APIs. A browser that opens the docs logged out is
sent to the admin login, and back after it.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.db.models import QuerySet
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import generics, viewsets
from rest_framework.exceptions import NotAuthenticated, PermissionDenied, ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from plugins_api.access.authentication import IsAdminClient
from plugins_api.access.key_credentials import presents_key
from plugins_api.admin_api.serializers import (
    ErrorSerializer,
    ExportFormatSerializer,
    HealthCheckFilterSerializer,
    HealthCheckSerializer,
    HistoryFilterSerializer,
    ProviderConfigChangeSerializer,
    ProviderConfigSerializer,
)
from plugins_api.edge.bounded_json_parser import BoundedJSONParser
from providers.audit.export import change_record, export_filename, records_csv
from providers.audit.history import SOURCE_API, Actor, actor_for_request
from providers.config import selectors
from providers.config.services import provider_config_delete
from providers.models import HealthCheck, ProviderConfig, ProviderConfigChange


def _errors(*codes: int) -> dict[int, type[ErrorSerializer]]:
    """Return the error responses CODES, each in Echo's one error shape."""
    return dict.fromkeys(codes, ErrorSerializer)


# 404 on a list: a page past the end ("Invalid page."); 415: a body that is not JSON.
@extend_schema_view(
    list=extend_schema(
        summary="List the configured providers",
        responses={200: ProviderConfigSerializer(many=True), **_errors(401, 403, 404)},
    ),
    create=extend_schema(
        summary="Configure a new provider",
        responses={201: ProviderConfigSerializer, **_errors(400, 401, 403, 415)},
    ),
    retrieve=extend_schema(
        summary="Return one provider",
        responses={200: ProviderConfigSerializer, **_errors(401, 403, 404)},
    ),
    update=extend_schema(
        summary="Replace a provider's configuration (secrets still merge)",
        responses={200: ProviderConfigSerializer, **_errors(400, 401, 403, 404, 415)},
    ),
    partial_update=extend_schema(
        summary="Change part of a provider's configuration",
        responses={200: ProviderConfigSerializer, **_errors(400, 401, 403, 404, 415)},
    ),
    destroy=extend_schema(
        summary="Delete a provider", responses={204: None, **_errors(401, 403, 404)}
    ),
)
@extend_schema(tags=["providers"])
class ProviderConfigViewSet(viewsets.ModelViewSet):
    """Provider configurations, by name."""

    serializer_class = ProviderConfigSerializer
    lookup_field = "name"
    # Any name reaches the view, so that an unknown one gets a JSON 404, not the site's page.
    lookup_value_regex = "[^/]+"
    parser_classes = [BoundedJSONParser]

    def get_queryset(self) -> QuerySet[ProviderConfig]:
        return selectors.provider_config_list()

    def _actor(self) -> Actor:
        return actor_for_request(self.request, SOURCE_API)

    def perform_create(self, serializer: BaseSerializer) -> None:
        serializer.save(actor=self._actor())

    def perform_update(self, serializer: BaseSerializer) -> None:
        serializer.save(actor=self._actor())

    def perform_destroy(self, instance: ProviderConfig) -> None:
        provider_config_delete(config=instance, actor=self._actor())


@extend_schema_view(
    list=extend_schema(
        summary="List recorded health checks, newest first",
        parameters=[HealthCheckFilterSerializer],
        responses={200: HealthCheckSerializer(many=True), **_errors(400, 401, 403, 404)},
    ),
    retrieve=extend_schema(
        summary="Return one recorded health check",
        responses={200: HealthCheckSerializer, **_errors(401, 403, 404)},
    ),
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


class HistoryCSVRenderer(BaseRenderer):
    """Audit records as CSV, one row per changed field (``providers.audit.export``)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: dict[str, Any] | None = None,
    ) -> str:
        return records_csv(data)


HISTORY_TAGS = ["history"]
NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="A provider name.")
EXPORT_RESPONSES = {
    (200, "application/json"): ProviderConfigChangeSerializer(many=True),
    (200, "text/csv"): OpenApiResponse(
        OpenApiTypes.STR, description="One row per changed field, with a header row."
    ),
    (400, "application/json"): ErrorSerializer,
    (401, "application/json"): ErrorSerializer,
    (403, "application/json"): ErrorSerializer,
    (404, "application/json"): ErrorSerializer,
}


def _filtered_changes(query: Any) -> QuerySet[ProviderConfigChange]:
    filters = HistoryFilterSerializer(data=query)
    filters.is_valid(raise_exception=True)
    return selectors.provider_change_list(**filters.validated_data)


def _export(
    request: Request, changes: QuerySet[ProviderConfigChange], name: str | None
) -> Response:
    """Return every entry of CHANGES in the negotiated format, as a download."""
    extension = request.accepted_renderer.format
    filename = export_filename(name, extension)
    return Response(
        [change_record(change) for change in changes],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@extend_schema_view(
    get=extend_schema(
        tags=HISTORY_TAGS,
        operation_id="provider_history",
        summary="List a provider's audited configuration changes, newest first",
        description=(
            "Who changed what, when, from where and through what (admin, api, plugins-api, "
            "yaml-import, command). Secrets appear only as masks. The history stays after the "
            "provider is deleted."
        ),
        parameters=[NAME],
        responses={200: ProviderConfigChangeSerializer(many=True), **_errors(401, 403, 404)},
    )
)
class ProviderHistoryView(generics.ListAPIView):
    """The audit trail of one provider."""

    serializer_class = ProviderConfigChangeSerializer

    def get_queryset(self) -> QuerySet[ProviderConfigChange]:
        return selectors.provider_history(name=self.kwargs["name"])


class ExportMixin:
    """An export's negotiation: JSON or CSV, by ``?format=`` or ``Accept``; errors in JSON."""

    renderer_classes = [JSONRenderer, HistoryCSVRenderer]
    # OPTIONS would describe the view in whatever format was asked: CSV cannot hold it.
    metadata_class = None

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        try:
            return super().perform_content_negotiation(request, force)  # type: ignore[misc]
        except Http404:
            # DRF answers an unknown ?format= with 404; it is a bad parameter.
            raise ValidationError({"format": ["Must be 'csv' or 'json'."]}) from None


class JSONErrorsMixin:
    """Render this view's errors in Echo's JSON error shape, whatever its normal renderer."""

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)  # type: ignore[misc]
        request: Any = self.request  # type: ignore[attr-defined]
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
        return response


@extend_schema_view(
    get=extend_schema(
        tags=HISTORY_TAGS,
        operation_id="provider_history_export",
        summary="Export all of a provider's audited changes as JSON or CSV",
        parameters=[NAME, ExportFormatSerializer],
        responses=EXPORT_RESPONSES,
    )
)
class ProviderHistoryExportView(ExportMixin, JSONErrorsMixin, APIView):
    """The whole audit trail of one provider, as a download."""

    def get(self, request: Request, name: str) -> Response:
        return _export(request, selectors.provider_history(name=name), name)


@extend_schema_view(
    get=extend_schema(
        tags=HISTORY_TAGS,
        operation_id="history_list",
        summary="List audited configuration changes of every provider, newest first",
        parameters=[HistoryFilterSerializer],
        responses={200: ProviderConfigChangeSerializer(many=True), **_errors(400, 401, 403, 404)},
    )
)
class HistoryView(generics.ListAPIView):
    """The audit trail of every provider, filtered."""

    serializer_class = ProviderConfigChangeSerializer

    def get_queryset(self) -> QuerySet[ProviderConfigChange]:
        return _filtered_changes(self.request.query_params)


@extend_schema_view(
    get=extend_schema(
        tags=HISTORY_TAGS,
        operation_id="history_export",
        summary="Export every audited change that matches the filters, as JSON or CSV",
        parameters=[HistoryFilterSerializer, ExportFormatSerializer],
        responses={k: v for k, v in EXPORT_RESPONSES.items() if k[0] != 404},
    )
)
class HistoryExportView(ExportMixin, JSONErrorsMixin, APIView):
    """The filtered audit trail, as a download."""

    def get(self, request: Request) -> Response:
        return _export(request, _filtered_changes(request.query_params), None)


class SchemaView(JSONErrorsMixin, SpectacularAPIView):
    """The OpenAPI 3 schema (YAML, or JSON with ``?format=json`` or ``Accept``)."""

    permission_classes = [IsAdminClient]


class DocsView(JSONErrorsMixin, SpectacularSwaggerView):
    """Swagger UI over the schema, its assets served by this site.

    A person in a browser is answered as a page: logged out, sent to the
    admin login (and back here after it); logged in without staff rights, a
    403 page. API clients, and any request offering a key, get the JSON errors.
    """

    permission_classes = [IsAdminClient]

    def handle_exception(self, exc: Exception) -> HttpResponseBase:
        request: Request = self.request
        if not _is_browser(request):
            return super().handle_exception(exc)
        if isinstance(exc, NotAuthenticated):
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if isinstance(exc, PermissionDenied):
            return _docs_forbidden_page(request)
        return super().handle_exception(exc)


def _is_browser(request: Request) -> bool:
    """Return whether REQUEST is a person's browser: it asks for HTML and offers no key."""
    return "text/html" in request.headers.get("Accept", "") and not presents_key(request.headers)


def _docs_forbidden_page(request: Request) -> HttpResponse:
    """Return the 403 page for a logged-in user who is not staff, with a way to switch accounts."""
    login = f"{reverse('admin:login')}?{urlencode({'next': request.get_full_path()})}"
    page = format_html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>403 Forbidden | Echo API docs</title></head><body>"
        "<h1>403 Forbidden</h1>"
        "<p>The API docs are for staff. You are logged in as <strong>{}</strong>, "
        "which is not a staff account.</p>"
        '<p><a href="{}">Log in as another user</a></p></body></html>',
        request.user.get_username(),
        login,
    )
    return HttpResponseForbidden(page)
