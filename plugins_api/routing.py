"""Websocket routes, and the origin check in front of them.

A browser always sends ``Origin`` on a websocket handshake, and its cookies
ride along whatever page opened the socket: the origin must be the site's
own or a listed one, scheme, host and port alike (``websocket_origins``),
or a page of another site, or another port, could chat as the logged-in
user. A client with a key authenticates with an ``Authorization`` header no
browser page can set, so it may leave ``Origin`` out; if it sends one, that
is checked all the same.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import WebsocketDenier
from django.urls import path

from plugins_api.chat.consumer import ChatConsumer
from plugins_api.chat.websocket_origins import origin_allowed

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi(), name="ws-chat"),
]


class SameOriginOrKeyValidator:
    """Pass handshakes from an allowed origin, and from key clients that send no origin."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origins = [v for k, v in scope.get("headers", []) if k.lower() == b"origin"]
        names = {name.lower() for name, _ in scope.get("headers", [])}
        if not origins:
            allowed = b"authorization" in names
        else:
            # Several Origin headers: no browser sends that; refused rather than guessed.
            allowed = len(origins) == 1 and origin_allowed(origins[0].decode("latin1"), scope)
        if allowed:
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


def websocket_application() -> Any:
    """Return the websocket side of the ASGI app: origin check, session auth, routes."""
    return SameOriginOrKeyValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
