"""Work a request does once its answer is written: the answer first, the bookkeeping after.

Recording a call's usage (its row queued, its metrics, its key's budget
charged) takes a few tens of microseconds that the client need not wait
for: nothing in the answer depends on it. A server that writes the answer
itself (the hot path, ``echo_site.hot_path``) opens a ``deferred_work()``
around the request; ``after_answer(work)`` then keeps WORK until the
server calls ``run_deferred`` with the answer's last byte sent, or the
client gone. Everywhere else (Django's own handler, the websocket consumer,
tests calling a view) nothing is open and WORK runs at once, as before.

Deferred work always runs: after a whole answer, after a stream's last
event, after a cancelled request. One piece that raises is logged and
does not stop the others.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

Work = Callable[[], None]


class Deferred:
    """The work a request keeps for after its answer; once run, it keeps nothing more."""

    __slots__ = ("open", "work")

    def __init__(self) -> None:
        self.work: list[Work] = []
        self.open = True


_deferred: contextvars.ContextVar[Deferred | None] = contextvars.ContextVar(
    "echo_after_answer", default=None
)


def after_answer(work: Work) -> None:
    """Run WORK once the current request's answer is written; at once when no server defers.

    Also at once when the request's deferred work already ran: code that
    outlives its request (an abandoned stream's generator, closed later by
    the event loop, in a copy of the request's context) loses nothing.
    """
    deferred = _deferred.get()
    if deferred is None or not deferred.open:
        work()
    else:
        deferred.work.append(work)


class deferred_work:  # noqa: N801  (used as a function: ``with deferred_work() as deferred``)
    """Keep the ``after_answer`` work of the code run inside; the caller runs it (``run_deferred``).

    A class rather than a generator's context manager: every hot-path request opens one.
    """

    __slots__ = ("_deferred", "_token")

    def __init__(self) -> None:
        self._deferred = Deferred()
        self._token: contextvars.Token[Deferred | None] | None = None

    def __enter__(self) -> Deferred:
        self._token = _deferred.set(self._deferred)
        return self._deferred

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _deferred.reset(self._token)
            self._token = None


def run_deferred(deferred: Deferred) -> None:
    """Run DEFERRED's work in order, each once, and keep no more; one that raises is logged."""
    deferred.open = False
    for work in deferred.work:
        try:
            work()
        except Exception:
            logger.exception("work deferred after an answer failed")
    deferred.work.clear()
