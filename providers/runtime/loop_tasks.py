"""Cancel a task from outside its event loop: a background writer left by a server that ran before.

A worker's background writers (the usage rows', the keys' last use) run on
the serving loop. At shutdown one may belong to another loop: a server that
ran earlier in the same process, whose loop may be running in another thread
or already closed. ``Task.cancel`` may only be called on the task's own loop,
and raises once that loop is closed; ``cancel_on_its_loop`` asks the loop
itself, and leaves the task alone when its loop is gone (nothing runs it any
more; it is let go quietly, as ``run_until_complete`` lets go of its own: a
task dropped pending on a closed loop is expected here, not a bug to log).
"""

from __future__ import annotations

import asyncio
from typing import Any


def cancel_on_its_loop(task: asyncio.Task[Any]) -> None:
    """Cancel TASK on its own loop, from any thread; nothing when that loop is closed."""
    loop = task.get_loop()
    if loop.is_closed():
        # Without this, the collector logs "Task was destroyed but it is pending!"
        # at ERROR when the dropped task goes; asyncio sets the same flag itself.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        return
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:
        pass  # closed in the meantime: the task will never run again
