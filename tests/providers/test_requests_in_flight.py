"""A request counts as in flight (what a drain waits for) while it is served, and no longer."""

from __future__ import annotations

import asyncio

import pytest

from providers.runtime.lifecycle import ServingRequest


async def test_the_serving_task_counts_while_inside_even_when_it_fails() -> None:
    requests: set[asyncio.Task] = set()
    with ServingRequest(requests):
        assert requests == {asyncio.current_task()}
    assert requests == set()
    with pytest.raises(ValueError), ServingRequest(requests):
        assert len(requests) == 1
        raise ValueError("the view failed")
    assert requests == set()


async def test_outside_a_task_nothing_is_counted() -> None:
    requests: set[asyncio.Task] = set()
    seen: list[set[asyncio.Task]] = []

    def callback() -> None:  # run by the loop itself, in no task
        with ServingRequest(requests):
            seen.append(set(requests))

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(lambda: (callback(), done.set_result(None)))
    await done
    assert seen == [set()] and requests == set()
