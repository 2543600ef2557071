"""Answer ids: 32 hex digits, unique, and different in each forked worker."""

from __future__ import annotations

import os
import re

from providers.types import ChatResponse, answer_id


def test_ids_are_32_hex_digits_and_do_not_repeat() -> None:
    ids = [answer_id() for _ in range(100_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[:1000])
    assert len(set(ids)) == len(ids)
    assert ChatResponse(content="", model="m").id.startswith("chat-")


def test_a_forked_worker_makes_other_ids_than_its_parent() -> None:
    # uvicorn and daphne fork their workers: each must not replay the parent's sequence.
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        os.write(write, answer_id().encode())
        os._exit(0)
    os.close(write)
    parent_id = answer_id()
    with os.fdopen(read) as pipe:
        child_id = pipe.read()
    os.waitpid(child, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", child_id)
    assert child_id != parent_id
