"""OpenAI's ``n`` through the official SDK against a live Echo: several choices, whole and streamed.

Behind Echo are the built-in openai plugin aimed at FakeOpenAI (which answers
``n`` natively and records every body) and the offline ``echo`` provider
(which answers once a call: Echo makes N calls and merges them). A stream of
several choices is always N streams merged, so its chunks carry each
choice's ``index``. ``n`` is bounded (``MAX_CHOICES``) and checked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from django.test import AsyncClient

from plugins_api.compat.openai_api import MAX_CHOICES
from plugins_api.models import ClientAPIKey
from providers.config.services import provider_config_create
from providers.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-fake-0000000018"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys={UPSTREAM_KEY}) as server:
        yield server


@pytest.fixture
def upstream(transactional_db: Any, fake: FakeOpenAI) -> FakeOpenAI:
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


@pytest.fixture
async def oai(
    upstream: FakeOpenAI, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{live_echo.url}/v1", api_key=chat_key[1], max_retries=0, timeout=10
    ) as client:
        yield client


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def test_openai_answers_n_natively(oai: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    completion = await oai.chat.completions.create(
        model="openai/gpt-4o-mini", messages=user("two of them"), n=2
    )

    assert [choice.index for choice in completion.choices] == [0, 1]
    assert all(choice.message.content for choice in completion.choices)
    calls = upstream.requests_to("/v1/chat/completions")
    assert len(calls) == 1 and calls[0].body["n"] == 2  # passed on, one upstream call
    # The fake counts the prompt once and each choice's words: Echo passes its usage on.
    assert completion.usage.completion_tokens == 2 * len(
        completion.choices[0].message.content.split()
    )


async def test_echo_answers_n_by_parallel_calls_with_usage_summed(
    oai: openai.AsyncOpenAI,
) -> None:
    one = await oai.chat.completions.create(model="echo/echo-1", messages=user("hello there"))
    three = await oai.chat.completions.create(
        model="echo/echo-1", messages=user("hello there"), n=3
    )

    assert [choice.index for choice in three.choices] == [0, 1, 2]
    assert {choice.message.content for choice in three.choices} == {"Echo: hello there"}
    assert three.usage.prompt_tokens == 3 * one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert three.model == "echo/echo-1"


@pytest.mark.parametrize("model", ["echo/echo-1", "openai/gpt-4o-mini"])
async def test_a_stream_of_two_choices_interleaves_them_by_index(
    oai: openai.AsyncOpenAI, upstream: FakeOpenAI, model: str
) -> None:
    stream = await oai.chat.completions.create(
        model=model,
        messages=user("stream me twice"),
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    roles: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.delta.role:
                roles[choice.index] = choice.delta.role
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason

    assert texts[0] and texts[0] == texts[1]
    assert roles == {0: "assistant", 1: "assistant"}
    assert finishes == {0: "stop", 1: "stop"}
    assert usage is not None
    assert usage.completion_tokens == 2 * len(texts[0].split())
    if model.startswith("openai/"):  # two upstream streams, each asked once
        calls = upstream.requests_to("/v1/chat/completions")
        assert len(calls) == 2 and all("n" not in call.body for call in calls)


async def test_a_failing_choice_fails_the_call(
    oai: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    # Every choice fails before its first chunk: the call gets the honest status, not a 200.
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.chat.completions.create(
            model="openai/no-such-model", messages=user("hi"), n=2, stream=True
        )
    assert "no-such-model" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(model="echo/no-such-model", messages=user("hi"), n=2)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("bad", [0, MAX_CHOICES + 1, 128, -1, 2.5, "2", True, "two", [2], {"n": 2}])
async def test_a_hostile_n_is_a_400_naming_it(
    echo_config: Any, chat_key: tuple[ClientAPIKey, str], bad: Any
) -> None:
    response = await AsyncClient().post(
        "/v1/chat/completions",
        json.dumps({"model": "echo/echo-1", "messages": user("hi"), "n": bad}),
        content_type="application/json",
        headers={"authorization": f"Bearer {chat_key[1]}"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"


async def test_n_of_one_is_one_choice(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(model="echo/echo-1", messages=user("hi"), n=1)

    assert len(completion.choices) == 1
