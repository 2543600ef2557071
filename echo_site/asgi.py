"""ASGI entry point: HTTP and websockets through Channels, with the provider runtime.

Serve it with uvicorn (``make run``): it speaks the ASGI lifespan protocol, so
the runtime starts at boot and stops (flushing usage) at shutdown, and it
streams request bodies with flow control, so ``RequestBodyLimit`` refuses an
unauthenticated or oversized body before it is read. Daphne, which buffers
whole bodies and has no lifespan, still works: the runtime then starts on the
first request of each process. Key clients' chat calls (``POST /chat``,
``/v1/chat/completions``, ``/v1/messages``, ``/v1/embeddings``) take the hot
path (``echo_site.hot_path``): the same middleware and views, without
Django's request signals and their thread hops. Static files (the admin's, the chat page's) are served from the apps'
``static/`` directories, with no collectstatic step. With ``ECHO_CORS_ORIGINS``
set, ``echo_site.cors`` answers other origins' preflights and marks the answers
they may read, the early refusals included.

Graceful shutdown, under uvicorn: SIGTERM starts the runtime's drain
(``providers.runtime.lifecycle``) before uvicorn's own handler runs, since
uvicorn would close every websocket at once (1012). While draining, new
requests get 503 ``shutting_down`` (with ``Connection: close``) and new
sockets are closed with 1001; only ``/health`` paths are still answered,
for the probes. At start-up, answers left ``streaming`` by a worker that
died are marked ``interrupted``, and the heap start-up built is frozen out of
the garbage collector's full passes (``settle_heap``). Each HTTP request is
logged once its answer is sent (``echo_site.access_log``; run uvicorn with
``--no-access-log``, as ``make run`` does, or both log it).
"""

from __future__ import annotations

import gc
import json
import logging
import os
from datetime import timedelta

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echo_site.settings")
django_asgi_app = get_asgi_application()

# Imported after get_asgi_application(): they import models.
from asgiref.sync import sync_to_async  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.utils import timezone  # noqa: E402

from echo_site import access_log, collector_pauses  # noqa: E402
from echo_site.cors import with_cors  # noqa: E402
from echo_site.hot_path import HotPath  # noqa: E402
from echo_site.request_body_limit import RequestBodyLimit  # noqa: E402
from plugins_api.access.key_last_use import key_last_use  # noqa: E402
from plugins_api.chat.conversations import chat_answers_interrupt_orphaned  # noqa: E402
from plugins_api.routing import websocket_application  # noqa: E402
from providers.runtime import process as runtime  # noqa: E402

logger = logging.getLogger(__name__)

#: A ``streaming`` answer this old at start-up belongs to a worker that died:
#: no live worker streams one answer for this long. Younger ones may be another
#: live worker's (several serve one database), so they are left alone.
ORPHANED_ANSWER_AGE = timedelta(hours=1)
#: Paths still answered while draining: the health probes (readiness says 503 itself).
PROBE_PREFIX = "/health"
SHUTTING_DOWN_BODY = json.dumps(
    {
        "error": {
            "type": "shutting_down",
            "message": "This server is shutting down; send the request again.",
        }
    }
).encode()

#: Every HTTP request as Django serves it, static files included.
django_http = ASGIStaticFilesHandler(django_asgi_app)
#: Key clients' chat calls take the hot path (``echo_site.hot_path``); the rest go to Django.
hot_path = HotPath(django_http)

router = ProtocolTypeRouter(
    {
        "http": with_cors(RequestBodyLimit(hot_path)),
        "websocket": websocket_application(),
    }
)


async def application(scope, receive, send):
    """Serve SCOPE, starting the provider runtime first if this process has not."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await served(scope, receive, send)


async def _serve(scope, receive, send):
    """Serve an HTTP or websocket SCOPE: refused while draining, else by the router."""
    lifecycle = runtime.current().lifecycle
    if not lifecycle.started:
        await _start(lifecycle)
    if lifecycle.draining:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1001})
            return
        if not scope["path"].startswith(PROBE_PREFIX):
            await _refuse_while_draining(send)
            return
    with lifecycle.serving_request():
        await router(scope, receive, send)


#: Every HTTP request is logged once its answer is sent (``echo_site.access_log``).
served = access_log.AccessLog(_serve)


def settle_heap() -> None:
    """Move every object alive now out of the garbage collector's sight, for good.

    What start-up built (Django's settings, URL map, templates, models, the
    providers, their schemas: most of a worker's heap) lives as long as the
    process. Left with the collector, each full collection walks all of it,
    and a full collection under load is a pause of tens of milliseconds in
    the middle of some request: most of a worker's p99 latency
    (``make bench``). Frozen, it is never walked again; what requests make
    is still collected as before.

    Then the young collections are spaced out: Python collects its youngest
    objects each time 700 more are alive than at the last collection, and
    a worker holding hundreds of streams gains that in a few milliseconds.
    Each stream's objects, alive for seconds, were walked again and again,
    promoted, and soon set off a full collection of all of them (20 to 60
    ms with 256 streams open, the worker's loop stopped meanwhile): at 256
    streams a quarter of ``make bench``'s rounds saw every stream stall at
    once. With ``ECHO_GC_YOUNG_THRESHOLD`` (20,000) objects between young
    collections none did (docs/BENCHMARKS.md); a request's objects are
    freed by their reference counts long before, as they always were, and
    garbage in cycles waits a little longer for the collector. How long
    each pass stops the worker is in ``/metrics`` (``echo_site.collector_pauses``).
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(settings.ECHO_GC_YOUNG_THRESHOLD, middle, oldest)
    collector_pauses.watch()  # each pass from now on timed: echo_gc_pause_seconds


async def _start(lifecycle) -> None:
    """Start the runtime, settle the answers a dead worker left ``streaming``, freeze the heap."""
    await lifecycle.ensure_started()
    await _interrupt_orphaned_answers()
    settle_heap()


async def _interrupt_orphaned_answers() -> None:
    try:
        swept = await sync_to_async(chat_answers_interrupt_orphaned)(
            started_before=timezone.now() - ORPHANED_ANSWER_AGE
        )
    except Exception:
        logger.exception("could not settle the answers left streaming")
        return
    if swept:
        logger.warning("%d answers left streaming by a stopped worker are now interrupted", swept)


async def _refuse_while_draining(send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(SHUTTING_DOWN_BODY)).encode()),
                (b"connection", b"close"),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": SHUTTING_DOWN_BODY})


async def _lifespan(receive, send) -> None:
    lifecycle = runtime.current().lifecycle
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await _start(lifecycle)
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            lifecycle.catch_sigterm()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # Before the runtime's stop closes the database connections.
            await key_last_use.stop()
            await lifecycle.stop()
            access_log.flush()
            await send({"type": "lifespan.shutdown.complete"})
            return
