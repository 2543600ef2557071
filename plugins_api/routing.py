"""Websocket routes, and the origin check in front of them.

A browser always sends ``Origin`` on a websocket handshake, and its cookies
ride along whatever page opened the socket: the origin must be one of
``ALLOWED_HOSTS`` (read per connection), or a page of another site could
chat as the logged-in user. A client with a key authenticates with an
``Authorization`` header no browser page can set, so it may leave
``Origin`` out; if it sends one, that is checked all the same.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.urls import path

from plugins_api.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi(), name="ws-chat"),
]


class AllowedHostsOrKeyOriginValidator(OriginValidator):
    """Accept origins in ALLOWED_HOSTS, and key clients that send no origin."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, allowed_origins=[])

    def valid_origin(self, parsed_origin: Any) -> bool:
        hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:  # as Django's own host check does
            hosts = ["localhost", "127.0.0.1", "[::1]"]
        self.allowed_origins = hosts
        return super().valid_origin(parsed_origin)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        names = {name.lower() for name, _ in scope.get("headers", [])}
        if b"origin" not in names and b"authorization" in names:
            return await self.application(scope, receive, send)
        return await super().__call__(scope, receive, send)


def websocket_application() -> Any:
    """Return the websocket side of the ASGI app: origin check, session auth, routes."""
    return AllowedHostsOrKeyOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
