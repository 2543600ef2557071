"""OpenAI's Responses API on Echo (``plugins_api/compat/responses_api.py``), driven by the ``openai`` SDK.

A live Echo (uvicorn on loopback) with ``openai`` (the default, aimed at
FakeOpenAI, which records every request, so a test can see the whole
conversation a follow-up sent) and the offline ``echo`` provider, which calls
the tools the user names. Stored responses live in PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import openai
import pytest
from django.core.management import call_command
from django.utils import timezone

from plugins_api.access.key_changes import client_key_issue
from plugins_api.access.key_model_access import ModelAccess
from plugins_api.models import ClientAPIKey, StoredResponse
from providers.config.services import provider_config_create
from providers.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-fake-0000000002"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys={UPSTREAM_KEY}) as openai_fake:
        yield openai_fake


@pytest.fixture
def upstream(transactional_db, fake: FakeOpenAI) -> FakeOpenAI:
    """Configure ``openai`` (default, on the fake) and ``echo`` (loaded when Echo starts)."""
    fake.reset()
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": fake.base_url, "max_retries": 0},
        secrets={"api_key": UPSTREAM_KEY},
        is_default=True,
    )
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "Echo: "})
    return fake


def sdk(live_echo: Any, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{live_echo.url}/v1", api_key=key, max_retries=0, timeout=10
    )


@pytest.fixture
async def oai(
    upstream: FakeOpenAI, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(live_echo, chat_key[1]) as client:
        yield client


def sent_messages(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """Return the messages of the last chat call the fake upstream received."""
    return fake.requests_to("/v1/chat/completions")[-1].body["messages"]


def stored_count() -> int:
    return StoredResponse.objects.count()


# --- answers ---------------------------------------------------------------------


async def test_text_answer_is_a_response_object(oai: openai.AsyncOpenAI, upstream) -> None:
    raw = await oai.responses.with_raw_response.create(
        model="openai/gpt-4o-mini",
        input="hello there",
        instructions="Be brief.",
        metadata={"ticket": "42"},
        temperature=0.5,
    )
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "openai/gpt-4o-mini"
    assert response.output_text == "You said: hello there"
    message = response.output[0]
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert message.content[0].type == "output_text"
    assert message.content[0].annotations == []
    assert response.usage.output_tokens == 4
    assert response.usage.total_tokens == response.usage.input_tokens + 4
    assert response.metadata == {"ticket": "42"}
    assert response.temperature == 0.5
    assert raw.headers["x-echo-provider"] == "openai"
    assert raw.headers["x-echo-model"] == "gpt-4o-mini"
    # The instructions went first, as the system prompt; the options went along.
    sent = upstream.requests_to("/v1/chat/completions")[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert sent["temperature"] == 0.5


async def test_input_items_with_image_and_developer_role(oai: openai.AsyncOpenAI, upstream) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    response = await oai.responses.create(
        model="openai/gpt-4o-mini",
        input=[
            {"role": "developer", "content": "Answer plainly."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this"},
                    {"type": "input_image", "image_url": image, "detail": "low"},
                ],
            },
        ],
    )
    assert response.status == "completed"
    messages = sent_messages(upstream)
    assert messages[0] == {"role": "system", "content": "Answer plainly."}
    assert messages[1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": image, "detail": "low"},
    }


async def test_max_output_tokens_makes_an_incomplete_response(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(
        model="echo/echo-1", input="one two three four five six", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Echo: one two"


# --- streaming ---------------------------------------------------------------------


async def test_stream_is_the_documented_event_sequence(oai: openai.AsyncOpenAI, upstream) -> None:
    async with oai.responses.stream(model="openai/gpt-4o-mini", input="one two three") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "You said: one two three" == final.output_text
    assert final.status == "completed"
    assert final.usage.output_tokens == 5
    assert events[0].response.id == final.id
    # It was stored before response.completed: retrievable at once.
    again = await oai.responses.retrieve(final.id)
    assert again.output_text == "You said: one two three"


async def test_create_stream_true_and_a_failure_mid_stream(
    oai: openai.AsyncOpenAI, upstream
) -> None:
    stream = await oai.responses.create(model="openai/gpt-4o-mini", input="a b", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"

    # The stream is cut after it started: an error event, then response.failed.
    upstream.inject(status=None, truncate_after=2, path="/v1/chat/completions")
    stream = await oai.responses.create(
        model="openai/gpt-4o-mini", input="one two three four five six seven", stream=True
    )
    events = [event async for event in stream]
    assert events[-2].type == "error"
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.message
    assert [event.sequence_number for event in events] == list(range(len(events)))


async def test_failure_before_the_answer_is_an_openai_error(
    oai: openai.AsyncOpenAI, upstream
) -> None:
    upstream.inject(status=503, message="upstream down", path="/v1/chat/completions")
    with pytest.raises(openai.APIStatusError) as caught:
        await oai.responses.create(model="openai/gpt-4o-mini", input="hi")
    assert caught.value.status_code in (502, 503)
    assert caught.value.body["type"]
    assert await StoredResponse.objects.acount() == 0


# --- previous_response_id -----------------------------------------------------------


async def test_previous_response_id_sends_the_whole_conversation(
    oai: openai.AsyncOpenAI, upstream
) -> None:
    first = await oai.responses.create(
        model="openai/gpt-4o-mini", input="my name is Ada", instructions="Be brief."
    )
    second = await oai.responses.create(
        model="openai/gpt-4o-mini", input="what is my name", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "You said: what is my name"
    # The upstream saw the first turn; the first call's instructions are not carried over.
    assert sent_messages(upstream) == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "You said: my name is Ada"},
        {"role": "user", "content": "what is my name"},
    ]
    # A streamed third turn continues the chain too, with its own instructions first.
    async with oai.responses.stream(
        model="openai/gpt-4o-mini",
        input="and again",
        previous_response_id=second.id,
        instructions="Be kind.",
    ) as stream:
        third = await stream.get_final_response()
    assert [m["content"] for m in sent_messages(upstream)] == [
        "Be kind.",
        "my name is Ada",
        "You said: my name is Ada",
        "what is my name",
        "You said: what is my name",
        "and again",
    ]
    fourth = await oai.responses.create(
        model="openai/gpt-4o-mini", input="last", previous_response_id=third.id
    )
    assert len(sent_messages(upstream)) == 7
    assert fourth.status == "completed"


async def test_a_long_conversation_opens_no_database_connection_per_call(
    oai: openai.AsyncOpenAI, upstream
) -> None:
    """Each turn reads the one before and stores itself on the kept ORM threads' connections.

    Through Django's async ORM each call opened a connection (on PostgreSQL a
    server process) of its own and closed it as it ended: 7.5 ms of the
    worker's CPU a call where a chat completion costs 1.1.
    """
    import threading

    from django.db.backends.signals import connection_created
    from django.test import override_settings

    opened: list[str] = []

    def note(sender, connection, **kwargs) -> None:
        opened.append(threading.current_thread().name)

    with override_settings(ECHO_ORM_THREADS=4):  # the suite's default is 0 (see settings)
        previous = await oai.responses.create(model="openai/gpt-4o-mini", input="turn 0")
        connection_created.connect(note, weak=False)
        try:
            for turn in range(1, 13):
                previous = await oai.responses.create(
                    model="openai/gpt-4o-mini",
                    input=f"turn {turn}",
                    previous_response_id=previous.id,
                )
        finally:
            connection_created.disconnect(note)

    assert len(sent_messages(upstream)) == 25  # every turn read the whole conversation
    assert await StoredResponse.objects.acount() == 13
    # Twenty-four reads and writes: at most one new connection per ORM thread, none per call.
    assert len(opened) <= 4, opened
    assert all(name.startswith("echo-orm") for name in opened), opened


async def test_function_call_round_trip_with_the_echo_provider(oai: openai.AsyncOpenAI) -> None:
    asked = await oai.responses.create(
        model="echo/echo-1", input="what is the weather? use get_weather", tools=[WEATHER_TOOL]
    )
    calls = [item for item in asked.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id
    assert set(json.loads(call.arguments)) == {"city"}

    answered = await oai.responses.create(
        model="echo/echo-1",
        previous_response_id=asked.id,
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}],
    )
    assert "sunny, 21C" in answered.output_text

    # The same round trip with the history sent by the client (store: false).
    manual = await oai.responses.create(
        model="echo/echo-1",
        store=False,
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "what is the weather? use get_weather"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "get_weather",
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "rainy"},
        ],
    )
    assert "rainy" in manual.output_text


async def test_streamed_function_call_events(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(
        model="echo/echo-1", input="use get_weather", tools=[WEATHER_TOOL]
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    call = next(item for item in final.output if item.type == "function_call")
    assert done.arguments == call.arguments
    assert call.name == "get_weather"
    assert kinds[-1] == "response.completed"


# --- the store ---------------------------------------------------------------------------


async def test_retrieve_delete_and_store_false(oai: openai.AsyncOpenAI) -> None:
    created = await oai.responses.create(model="echo/echo-1", input="keep me")
    fetched = await oai.responses.retrieve(created.id)
    assert fetched.id == created.id
    assert fetched.output_text == "Echo: keep me"
    await oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.delete(created.id)

    unstored = await oai.responses.create(model="echo/echo-1", input="forget me", store=False)
    assert await StoredResponse.objects.filter(pk=unstored.id).aexists() is False
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.responses.create(
            model="echo/echo-1", input="hi", previous_response_id=unstored.id
        )
    assert caught.value.body["param"] == "previous_response_id"


async def test_another_keys_response_is_not_found(oai: openai.AsyncOpenAI, live_echo: Any) -> None:
    mine = await oai.responses.create(model="echo/echo-1", input="private words")
    _, other_key = await _issue("other-key")
    async with sdk(live_echo, other_key) as other:
        with pytest.raises(openai.NotFoundError) as caught:
            await other.responses.create(
                model="echo/echo-1", input="hi", previous_response_id=mine.id
            )
        assert caught.value.body["code"] == "previous_response_not_found"
        assert "private" not in json.dumps(caught.value.body)
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(mine.id)
    assert (await oai.responses.retrieve(mine.id)).output_text == "Echo: private words"


async def _issue(name: str, **kwargs: Any) -> tuple[ClientAPIKey, str]:
    from asgiref.sync import sync_to_async

    return await sync_to_async(client_key_issue)(name=name, **kwargs)


def test_store_is_bounded(upstream, chat_key, live_echo, settings) -> None:
    settings.ECHO_RESPONSES_MAX_STORED_BYTES = 4096
    url = f"{live_echo.url}/v1/responses"
    headers = {"Authorization": f"Bearer {chat_key[1]}"}
    # An input past the bound is refused before the provider is called...
    too_big = httpx.post(url, headers=headers, json={"model": "echo/echo-1", "input": "x " * 2100})
    assert too_big.status_code == 400
    assert too_big.json()["error"]["param"] == "input"
    # ...unless it is not to be stored.
    unstored = httpx.post(
        url, headers=headers, json={"model": "echo/echo-1", "input": "x " * 2100, "store": False}
    )
    assert unstored.status_code == 200
    # An answer that pushes the conversation past the bound is answered, not stored.
    pushed = httpx.post(url, headers=headers, json={"model": "echo/echo-1", "input": "y " * 900})
    assert pushed.status_code == 200
    assert pushed.json()["store"] is False
    assert stored_count() == 0
    gone = httpx.get(f"{url}/{pushed.json()['id']}", headers=headers)
    assert gone.status_code == 404


def test_retention_hides_and_cleanup_deletes_old_responses(
    upstream, chat_key, live_echo, settings
) -> None:
    settings.ECHO_RESPONSES_RETENTION_DAYS = 30
    url = f"{live_echo.url}/v1/responses"
    headers = {"Authorization": f"Bearer {chat_key[1]}"}
    old = httpx.post(url, headers=headers, json={"model": "echo/echo-1", "input": "old"}).json()
    new = httpx.post(url, headers=headers, json={"model": "echo/echo-1", "input": "new"}).json()
    StoredResponse.objects.filter(pk=old["id"]).update(
        created_at=timezone.now() - timedelta(days=31)
    )
    assert httpx.get(f"{url}/{old['id']}", headers=headers).status_code == 404
    follow = httpx.post(
        url,
        headers=headers,
        json={"model": "echo/echo-1", "input": "more", "previous_response_id": old["id"]},
    )
    assert follow.status_code == 404
    call_command("cleanup_responses", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert list(StoredResponse.objects.values_list("pk", flat=True)) == [new["id"]]


# --- who may call, and hostile input --------------------------------------------------------


def test_without_a_key_is_401(upstream, live_echo) -> None:
    url = f"{live_echo.url}/v1/responses"
    assert httpx.post(url, json={"model": "echo/echo-1", "input": "hi"}).status_code == 401
    assert httpx.get(f"{url}/resp_x").status_code == 401
    assert httpx.delete(f"{url}/resp_x").status_code == 401
    bad = httpx.post(
        url,
        json={"model": "echo/echo-1", "input": "hi"},
        headers={"Authorization": "Bearer echo-nope"},
    )
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_api_key"


async def test_a_model_the_key_may_not_use_is_403(upstream, live_echo) -> None:
    _, key = await _issue("echo-only", access=ModelAccess(patterns=("echo/*",)))
    async with sdk(live_echo, key) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.responses.create(model="openai/gpt-4o-mini", input="hi")
        assert caught.value.body["code"] == "model_not_allowed"
        allowed = await client.responses.create(model="echo/echo-1", input="hi")
        assert allowed.status == "completed"
    assert upstream.requests_to("/v1/chat/completions") == []


HOSTILE_BODIES: list[tuple[dict[str, Any], str | None]] = [
    ({"model": "echo/echo-1"}, "input"),
    ({"model": "echo/echo-1", "input": 123}, "input"),
    ({"model": "echo/echo-1", "input": []}, "input"),
    ({"model": "echo/echo-1", "input": [{"role": "user", "content": "x"}] * 10_001}, "input"),
    ({"input": "hi"}, "model"),
    ({"model": ["echo"], "input": "hi"}, "model"),
    ({"model": "m" * 5000, "input": "hi"}, "model"),
    ({"model": "echo/echo-1", "input": [5]}, "input.0"),
    ({"model": "echo/echo-1", "input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
    # Found by fuzzing the schema: an unhashable role was a 500.
    (
        {"model": "echo/echo-1", "input": [{"type": "message", "role": {}, "content": ""}]},
        "input.0.role",
    ),
    ({"model": "echo/echo-1", "input": [{"role": ["user"], "content": "x"}]}, "input.0.role"),
    ({"model": "echo/echo-1", "input": [{"role": "user", "content": 7}]}, "input.0.content"),
    (
        {"model": "echo/echo-1", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
        "input.0.content.0.text",
    ),
    (
        {
            "model": "echo/echo-1",
            "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}],
        },
        "input.0.content.0.file_id",
    ),
    (
        {
            "model": "echo/echo-1",
            "input": [{"role": "user", "content": [{"type": "input_file", "file_data": "x"}]}],
        },
        "input.0.content.0.type",
    ),
    ({"model": "echo/echo-1", "input": [{"type": "item_reference", "id": "x"}]}, "input.0.type"),
    (
        {
            "model": "echo/echo-1",
            "input": [{"type": "function_call", "name": "f", "arguments": "{}"}],
        },
        "input.0.call_id",
    ),
    (
        {"model": "echo/echo-1", "input": [{"type": "function_call_output", "call_id": "c"}]},
        "input.0.output",
    ),
    ({"model": "echo/echo-1", "input": "hi", "tools": "all"}, "tools"),
    ({"model": "echo/echo-1", "input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"model": "echo/echo-1", "input": "hi", "tools": [{"type": "function"}]}, "tools.0.name"),
    (
        {
            "model": "echo/echo-1",
            "input": "hi",
            "tools": [{"type": "function", "name": "f", "parameters": 1}],
        },
        "tools.0.parameters",
    ),
    ({"model": "echo/echo-1", "input": "hi", "tool_choice": {"type": "mcp"}}, "tool_choice"),
    (
        {"model": "echo/echo-1", "input": "hi", "text": {"format": {"type": "json_object"}}},
        "text.format",
    ),
    ({"model": "echo/echo-1", "input": "hi", "text": {"verbosity": "low"}}, "text.verbosity"),
    ({"model": "echo/echo-1", "input": "hi", "reasoning": {"effort": "low"}}, "reasoning"),
    ({"model": "echo/echo-1", "input": "hi", "parallel_tool_calls": False}, "parallel_tool_calls"),
    (
        {"model": "echo/echo-1", "input": "hi", "include": ["reasoning.encrypted_content"]},
        "include",
    ),
    ({"model": "echo/echo-1", "input": "hi", "truncation": "auto"}, "truncation"),
    ({"model": "echo/echo-1", "input": "hi", "background": True}, "background"),
    ({"model": "echo/echo-1", "input": "hi", "seed": 1}, "seed"),
    ({"model": "echo/echo-1", "input": "hi", "stream": "yes"}, "stream"),
    ({"model": "echo/echo-1", "input": "hi", "store": 1}, "store"),
    ({"model": "echo/echo-1", "input": "hi", "temperature": 5}, "temperature"),
    ({"model": "echo/echo-1", "input": "hi", "top_p": "1"}, "top_p"),
    ({"model": "echo/echo-1", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    (
        {"model": "echo/echo-1", "input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}},
        "metadata",
    ),
    ({"model": "echo/echo-1", "input": "hi", "metadata": {"k": 1}}, "metadata.k"),
    ({"model": "echo/echo-1", "input": "hi", "previous_response_id": 5}, "previous_response_id"),
    (
        {"model": "echo/echo-1", "input": "hi", "previous_response_id": "r" * 65},
        "previous_response_id",
    ),
    ({"model": "echo/echo-1", "input": "hi", "api_key": "sk-x"}, "api_key"),
    ({"model": "echo/echo-1", "input": "hi", "user": ["u"]}, "user"),
]


def test_hostile_input_is_a_400_naming_the_field(upstream, chat_key, live_echo) -> None:
    url = f"{live_echo.url}/v1/responses"
    headers = {"Authorization": f"Bearer {chat_key[1]}"}
    with httpx.Client(headers=headers, timeout=10) as client:
        for body, field in HOSTILE_BODIES:
            answer = client.post(url, json=body)
            assert answer.status_code == 400, (body, answer.text[:300])
            error = answer.json()["error"]
            assert error["param"] == field, (body, error)
            assert error["type"] == "invalid_request_error"
            assert len(answer.content) < 2000  # nothing huge is echoed back
        nested: Any = "deep"
        for _ in range(200):
            nested = [nested]
        deep = client.post(url, json={"model": "echo/echo-1", "input": nested})
        assert deep.status_code == 400
        nul = client.post(url, json={"model": "echo/echo-1", "input": "a\u0000b"})
        assert nul.status_code == 400
        assert nul.json()["error"]["param"] == "input"
        not_json = client.post(url, content=b"{nope", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400
        get_id = client.get(f"{url}/{'r' * 5000}")
        assert get_id.status_code == 404
        assert len(get_id.content) < 1000
        replay = client.get(f"{url}/resp_x", params={"stream": "true"})
        assert (replay.status_code, replay.json()["error"]["param"]) == (400, "stream")
        assert client.put(f"{url}/resp_x", json={}).status_code == 405
    assert stored_count() == 0
    assert upstream.requests_to("/v1/chat/completions") == []


@pytest.mark.parametrize(
    "text", ["Hi", ' "quoted" \\ and \n lines', "café 🙂", "lone \ud800 surrogate"]
)
def test_a_text_delta_is_the_same_bytes_as_the_general_way_writes_it(text: str) -> None:
    """The stream's text deltas take a short way (the event's head written once): the same bytes."""
    from plugins_api.compat.responses_api import ResponseEvents, parse_responses_call
    from plugins_api.edge.sse import sse_event
    from providers.types import StreamingChunk, Usage

    call = parse_responses_call({"model": "echo/echo-1", "input": "hi", "stream": True})
    events = ResponseEvents(call, "resp_1", 1_700_000_000)
    meta = {"provider": "echo", "model": "echo-1"}
    first = StreamingChunk(content="first", metadata=meta)
    list(events.opening(first))
    list(events.chunk(first))  # the item and its part added, the first delta
    for _ in range(2):
        sequence = events.sequence
        (event,) = events.chunk(StreamingChunk(content=text, metadata=meta))
        assert event == sse_event(
            "response.output_text.delta",
            {
                "item_id": events.text_id,
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
                "sequence_number": sequence,
            },
        )
        assert events.sequence == sequence + 1
    closing = list(events.chunk(StreamingChunk(is_final=True, finish_reason="stop", usage=Usage())))
    done = [e for e in closing if e.startswith(b"event: response.output_text.done")]
    assert len(done) == 1
    assert json.loads(done[0].split(b"data: ")[1])["text"] == "first" + text + text
