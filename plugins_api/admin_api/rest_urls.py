"""URLs of the REST resources (``/api/``), the audit history, and the OpenAPI schema and docs.

``/api/keys/history/`` comes before the keys' routes: it is every key's
history, not a key named ``history`` (the API refuses that name).
"""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from plugins_api.admin_api import (
    key_views,
    model_group_views,
    openapi,  # noqa: F401 - registers the schema's auth extensions
    rest_views,
)

router = SimpleRouter(trailing_slash=True)
router.register("providers", rest_views.ProviderConfigViewSet, basename="provider")
router.register("health-checks", rest_views.HealthCheckViewSet, basename="health-check")
router.register("keys", key_views.ClientKeyViewSet, basename="client-key")
router.register("model-groups", model_group_views.ModelGroupViewSet, basename="model-group")

urlpatterns = [
    path(
        "api/providers/<str:name>/history/",
        rest_views.ProviderHistoryView.as_view(),
        name="provider-history",
    ),
    path(
        "api/providers/<str:name>/history/export/",
        rest_views.ProviderHistoryExportView.as_view(),
        name="provider-history-export",
    ),
    path("api/history/", rest_views.HistoryView.as_view(), name="history"),
    path("api/history/export/", rest_views.HistoryExportView.as_view(), name="history-export"),
    path("api/keys/history/", key_views.ClientKeyHistoryView.as_view(), name="client-key-history"),
    path("api/", include(router.urls)),
    path("api/schema/", rest_views.SchemaView.as_view(), name="schema"),
    path("api/docs/", rest_views.DocsView.as_view(url_name="schema"), name="docs"),
]
