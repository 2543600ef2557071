"""URLs of the browser chat's REST resource: ``/api/conversations/``."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from plugins_api.chat import conversation_views

router = SimpleRouter(trailing_slash=True)
router.register("conversations", conversation_views.ConversationViewSet, basename="conversation")

urlpatterns = [path("api/", include(router.urls))]
