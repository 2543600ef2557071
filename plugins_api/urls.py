"""URLs of Echo's HTTP API: chat, plugin management, the REST resources and conversations."""

from django.urls import include, path

from plugins_api.admin_api import metrics_view
from plugins_api.chat import views as chat_views

urlpatterns = [
    path("chat", chat_views.chat, name="chat"),
    path("metrics", metrics_view.metrics, name="metrics"),
    path("", include("plugins_api.admin_api.plugin_urls")),
    path("", include("plugins_api.admin_api.rest_urls")),
    path("", include("plugins_api.chat.conversation_urls")),
    path("", include("plugins_api.compat.urls")),
]
