"""Echo's URL map."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("plugins_api.urls")),
]

handler404 = "plugins_api.error_views.not_found"
handler500 = "plugins_api.error_views.server_error"
