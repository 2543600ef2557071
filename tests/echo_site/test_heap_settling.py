"""A worker's start-up freezes the heap it built: full collections under load no longer walk it."""

from __future__ import annotations

import gc
import weakref

import pytest

from echo_site import asgi


class StartedLifecycle:
    """A runtime lifecycle whose start does nothing: the test is about what follows it."""

    def __init__(self) -> None:
        self.starts = 0

    async def ensure_started(self) -> None:
        self.starts += 1


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.django_db(transaction=True)
async def test_start_up_freezes_what_it_built_and_requests_garbage_is_still_collected(
    unfrozen,
) -> None:
    built_at_start = [[n] for n in range(1000)]  # containers: the collector tracks them
    lifecycle = StartedLifecycle()

    await asgi._start(lifecycle)

    assert lifecycle.starts == 1
    assert gc.get_freeze_count() >= len(built_at_start)
    watched = {id(o) for o in built_at_start}
    assert not any(id(o) in watched for o in gc.get_objects()), "start-up's objects not frozen"

    class Cycle:
        pass

    made_by_a_request = Cycle()
    made_by_a_request.me = made_by_a_request  # a reference cycle: only the collector frees it
    gone = []
    weakref.finalize(made_by_a_request, gone.append, True)
    del made_by_a_request
    gc.collect()
    assert gone == [True]


def test_settle_heap_collects_garbage_before_freezing(unfrozen) -> None:
    class Cycle:
        pass

    garbage = Cycle()
    garbage.me = garbage
    gone = []
    weakref.finalize(garbage, gone.append, True)
    del garbage

    asgi.settle_heap()

    assert gone == [True], "a cycle alive only by itself was frozen instead of freed"
    assert gc.get_freeze_count() > 0
