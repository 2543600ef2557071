"""ASGI entry point: HTTP and websockets through Channels, with the provider runtime.

Serve it with uvicorn (``make run``): it speaks the ASGI lifespan protocol, so
the runtime starts at boot and stops (flushing usage) at shutdown, and it
streams request bodies with flow control, so ``RequestBodyLimit`` refuses an
unauthenticated or oversized body before it is read. Daphne, which buffers
whole bodies and has no lifespan, still works: the runtime then starts on the
first request of each process. Static files (the admin's, the chat page's) are served from the apps'
``static/`` directories, with no collectstatic step.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echo_site.settings")
django_asgi_app = get_asgi_application()

# Imported after get_asgi_application(): they import models.
from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from echo_site.request_body_limit import RequestBodyLimit  # noqa: E402
from plugins_api.routing import websocket_application  # noqa: E402
from providers.runtime import process as runtime  # noqa: E402

router = ProtocolTypeRouter(
    {
        "http": RequestBodyLimit(ASGIStaticFilesHandler(django_asgi_app)),
        "websocket": websocket_application(),
    }
)


async def application(scope, receive, send):
    """Serve SCOPE, starting the provider runtime first if this process has not."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    lifecycle = runtime.current().lifecycle
    if not lifecycle.started:
        await lifecycle.ensure_started()
    await router(scope, receive, send)


async def _lifespan(receive, send) -> None:
    lifecycle = runtime.current().lifecycle
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await lifecycle.ensure_started()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await lifecycle.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
