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
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


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


def test_settle_heap_spaces_out_the_young_collections_as_configured(unfrozen, settings) -> None:
    gc.set_threshold(700, 11, 12)
    settings.ECHO_GC_YOUNG_THRESHOLD = 4321

    asgi.settle_heap()

    assert gc.get_threshold() == (4321, 11, 12), "only the young generation's threshold changes"


def test_young_collections_wait_for_the_configured_number_of_new_objects(
    unfrozen, settings
) -> None:
    settings.ECHO_GC_YOUNG_THRESHOLD = 20_000
    asgi.settle_heap()
    collections = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        # 10,000 more tracked objects: half the threshold (room for other threads' own)
        kept = [[n] for n in range(10_000)]
        assert collections == [], "a collection ran before 20,000 new objects"
        kept += [[n] for n in range(15_000)]  # past it
    finally:
        gc.callbacks.remove(count)
    assert collections, "no young collection after 25,000 new objects"
    assert len(kept) == 25_000
