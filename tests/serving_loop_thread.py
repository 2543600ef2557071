"""A serving loop in a thread of the test process, as a worker has one.

Sync tests (the Django test client, the services) then reach the registry
the way a serving worker's request threads do: through
``runtime.run_in_serving_loop`` onto a loop that keeps running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from providers.runtime import process as runtime


@contextmanager
def serving_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """Run an event loop in a thread, make it the current runtime's serving loop; stop it afterwards.

    Afterwards, that runtime (even if the test installed another meanwhile)
    serves on no loop and its providers are shut down on the loop they served on.
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()
    loop.call_soon(started.set)
    thread = threading.Thread(target=loop.run_forever, name="serving-loop", daemon=True)
    thread.start()
    started.wait(5)
    serving = runtime.current()
    serving.serving_loop = loop
    try:
        yield loop
    finally:
        serving.serving_loop = None
        asyncio.run_coroutine_threadsafe(serving.registry.shutdown_all(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
