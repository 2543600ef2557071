"""URLs of Echo's HTTP API: chat, plugin management, the REST resources and conversations."""

from django.urls import include, path

from plugins_api import chat_views, metrics_view

urlpatterns = [
    path("chat", chat_views.chat, name="chat"),
    path("metrics", metrics_view.metrics, name="metrics"),
    path("", include("plugins_api.plugin_urls")),
    path("", include("plugins_api.rest_urls")),
    path("", include("plugins_api.conversation_urls")),
    path("", include("plugins_api.compat_urls")),
]
