"""The answer first, the bookkeeping after: on the hot path, usage is recorded once the answer is written.

Elsewhere (Django's own path, a view called by a test) it is recorded at
once, as before. Either way it is recorded exactly once, a cancelled call
included.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from plugins_api.edge.after_answer import after_answer, deferred_work, run_deferred
from providers.config.services import provider_config_create
from providers.runtime import process as runtime
from tests.echo_site.test_hot_path import (
    DJANGO,
    HOT,
    USER,
    Endless,
    go_live,
    leave_mid_stream,
    serve_async,
)

pytestmark = pytest.mark.django_db


def test_work_runs_at_once_when_nothing_defers_it() -> None:
    done: list[str] = []
    after_answer(lambda: done.append("now"))
    assert done == ["now"]


def test_deferred_work_waits_for_run_deferred_then_runs_once_in_order() -> None:
    done: list[int] = []
    with deferred_work() as deferred:
        after_answer(lambda: done.append(1))
        after_answer(lambda: done.append(2))
        assert done == []
        run_deferred(deferred)
        assert done == [1, 2]
        # Once run, the request keeps nothing: later work (a stream closed late) runs at once.
        after_answer(lambda: done.append(3))
        assert done == [1, 2, 3]
        run_deferred(deferred)
    assert done == [1, 2, 3]


def test_one_failing_piece_is_logged_and_the_others_still_run(caplog) -> None:
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("bookkeeping bug")

    with caplog.at_level(logging.ERROR, logger="plugins_api.edge.after_answer"):
        with deferred_work() as deferred:
            after_answer(broken)
            after_answer(lambda: done.append("still"))
            run_deferred(deferred)
    assert done == ["still"]
    assert "work deferred after an answer failed" in caplog.text


@pytest.fixture
def recorded(monkeypatch) -> list[Any]:
    """Every usage event recorded, as it is recorded."""
    events: list[Any] = []
    real = runtime.usage_recorder.record

    def spy(event: Any) -> Any:
        events.append(event)
        return real(event)

    monkeypatch.setattr(runtime.usage_recorder, "record", spy)
    return events


def _answer_and_count(app: Any, path: str, payload: dict, key: str, recorded: list[Any]):
    """Serve PAYLOAD through APP; return (answer, events recorded when its last byte was sent)."""
    at_last_byte: list[int] = []

    async def go():
        # Wrap the app's send: note how many events were recorded when the answer ended.
        async def app_watching(scope, receive, send):
            async def watching_send(message):
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    at_last_byte.append(len(recorded))
                await send(message)

            await app(scope, receive, watching_send)

        return await serve_async(
            app_watching,
            path,
            json.dumps(payload).encode(),
            {"Authorization": f"Bearer {key}"},
        )

    answer = async_to_sync(go)()
    return answer, at_last_byte[0]


CALLS = [
    ("/v1/chat/completions", {"model": "echo/echo-1", "messages": USER}),
    ("/v1/chat/completions", {"model": "echo/echo-1", "messages": USER, "stream": True}),
    ("/v1/messages", {"model": "echo/echo-1", "max_tokens": 50, "messages": USER}),
    ("/chat", {"prompt": "Hello", "stream": True}),
    ("/v1/chat/completions", {"model": "nope/gpt-x", "messages": USER}),
]


@pytest.mark.parametrize(("path", "payload"), CALLS)
def test_the_hot_path_records_usage_after_the_answers_last_byte(
    echo_config, chat_key, recorded, path: str, payload: dict
) -> None:
    go_live(echo_config)
    answer, at_last_byte = _answer_and_count(HOT, path, payload, chat_key[1], recorded)

    assert at_last_byte == 0, "usage was recorded before the answer was written"
    assert len(recorded) == 1
    if answer.status == 404:  # an unknown model: the error is recorded, after its answer too
        assert recorded[0].outcome == "error"
        assert recorded[0].error_kind == "model_not_found"
        return
    assert answer.status == 200, answer.body
    assert recorded[0].outcome == "ok"
    assert recorded[0].prompt_tokens > 0


def test_djangos_own_path_still_records_usage_once(echo_config, chat_key, recorded) -> None:
    go_live(echo_config)
    answer, at_last_byte = _answer_and_count(DJANGO, *CALLS[0], chat_key[1], recorded)

    assert answer.status == 200
    assert at_last_byte == 1, "Django's path defers nothing: usage is recorded with the answer"
    assert len(recorded) == 1


def test_a_call_cancelled_by_a_client_gone_mid_stream_is_still_recorded(chat_key, recorded) -> None:
    Endless.closed = threading.Event()
    runtime.registry.register(Endless, "endless")
    go_live(provider_config_create(name="endless", plugin="endless"))

    leave_mid_stream(chat_key[1], b'{"prompt": "go", "provider": "endless", "stream": true}', 3)

    assert Endless.closed.wait(2), "the provider's stream was not closed"
    assert [event.outcome for event in recorded] == ["cancelled"]


@pytest.mark.parametrize(("path", "payload"), [CALLS[0], CALLS[2]])
def test_a_whole_answers_usage_event_is_made_after_its_last_byte(
    echo_config, chat_key, monkeypatch, path: str, payload: dict
) -> None:
    """Only the clock is read on the client's wait; the event itself is bookkeeping."""
    from plugins_api.edge import request_usage

    made: list[Any] = []
    real = request_usage.UsageEvent

    def making(**fields: Any) -> Any:
        made.append(fields["endpoint"])
        return real(**fields)

    monkeypatch.setattr(request_usage, "UsageEvent", making)
    go_live(echo_config)
    answer, made_at_last_byte = _answer_and_count(HOT, path, payload, chat_key[1], made)

    assert answer.status == 200, answer.body
    assert made_at_last_byte == 0, "the usage event was made before the answer was written"
    assert made == [path]
