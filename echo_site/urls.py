"""Echo's URL map."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from plugins_api.access import login_throttle
from plugins_api.chat import page_views

# Both logins are throttled (plugins_api.access.login_throttle): these say why they refuse.
admin.site.login_form = login_throttle.ThrottledAdminAuthenticationForm
admin.site.site_header = "Echo administration"
admin.site.site_title = "Echo admin"
admin.site.index_title = "Providers, keys, usage and history"

urlpatterns = [
    path("admin/login/", login_throttle.admin_login_view),
    path("admin/", admin.site.urls),
    path("accounts/login/", login_throttle.login_view, name="login"),
    # Logout and password change for the chat page (templates/registration/).
    path("accounts/", include("django.contrib.auth.urls")),
    path("", page_views.chat_page, name="chat-page"),
    # With the slash: "POST /chat" (no slash) is the JSON chat API.
    path("chat/", page_views.chat_page, name="chat-page-alias"),
    # One conversation of the chat page; any id text reaches the page, which says "not found".
    path(
        "chat/c/<str:conversation_id>", page_views.chat_conversation_page, name="chat-conversation"
    ),
    path("chat/c/<str:conversation_id>/", page_views.chat_conversation_page),
    # Browsers ask for it on every site: the icon the pages link to.
    path("favicon.ico", RedirectView.as_view(url=static("echo/favicon.svg"), permanent=True)),
    path("", include("plugins_api.urls")),
]

handler400 = "plugins_api.edge.error_views.refused_request"
handler404 = "plugins_api.edge.error_views.not_found"
handler500 = "plugins_api.edge.error_views.server_error"
