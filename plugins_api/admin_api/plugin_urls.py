"""URLs of the guide's plugin management API and the health endpoints.

The fixed paths come before ``plugins/<name>`` so that ``/plugins/health``
is the health check, not a provider called "health".
"""

from __future__ import annotations

from django.urls import path

from plugins_api.admin_api import plugin_views as views
from plugins_api.admin_api import probes

urlpatterns = [
    path("plugins/", views.PluginListView.as_view(), name="plugins"),
    path("plugins/instances", views.PluginInstancesView.as_view(), name="plugins-instances"),
    path("plugins/metadata", views.PluginMetadataListView.as_view(), name="plugins-metadata"),
    path("plugins/health", views.PluginHealthView.as_view(), name="plugins-health"),
    path("plugins/discover", views.PluginDiscoverView.as_view(), name="plugins-discover"),
    path("plugins/<str:name>", views.ProviderView.as_view(), name="plugin"),
    path("plugins/<str:name>/status", views.ProviderStatusView.as_view(), name="plugin-status"),
    path("plugins/<str:name>/reload", views.ProviderReloadView.as_view(), name="plugin-reload"),
    path("plugins/<str:name>/config", views.ProviderConfigView.as_view(), name="plugin-config"),
    path(
        "plugins/<str:name>/config-schema",
        views.ProviderConfigSchemaView.as_view(),
        name="plugin-config-schema",
    ),
    path(
        "plugins/<str:name>/metadata", views.ProviderMetadataView.as_view(), name="plugin-metadata"
    ),
    path("plugins/<str:name>/models", views.ProviderModelsView.as_view(), name="plugin-models"),
    path(
        "plugins/<str:name>/models/<path:model>",
        views.ProviderModelInfoView.as_view(),
        name="plugin-model",
    ),
    path("health", views.public_health, name="health"),
    # Before health/<name>: a provider called "live" or "ready" has only /plugins/<name>/status.
    path("health/live", probes.live, name="health-live"),
    path("health/ready", probes.ready, name="health-ready"),
    path("health/<str:name>", views.ProviderHealthView.as_view(), name="health-provider"),
]
