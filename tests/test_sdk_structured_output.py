"""Structured output and provider options through the official SDKs, unchanged, against a live Echo.

``client.chat.completions.parse(response_format=Model)`` (the openai SDK's
Pydantic structured output) must return a parsed object whether the route is
``openai`` (the option passed on), ``anthropic`` (translated to a forced
tool) or the offline ``echo``; the anthropic SDK's ``thinking`` and
``top_k`` must reach Anthropic as Anthropic takes them. Behind Echo are the
built-in plugins aimed at FakeOpenAI and FakeAnthropic, which record every
body they receive.
"""

# ruff: noqa: F811 - the shared fixtures (tests.sdk_gateway) are imported, then named as parameters

from __future__ import annotations

from typing import Any, Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel

from plugins_api.models import ClientAPIKey
from tests.sdk_gateway import UPSTREAM_KEY, claude, fakes, oai, upstreams, user  # noqa: F401

pytestmark = pytest.mark.slow


class Address(BaseModel):
    city: str
    verified: bool


class Contact(BaseModel):
    """A model with the shapes Pydantic writes: nested models ($defs), lists, literals, optionals."""

    name: str
    age: int
    tags: list[str]
    kind: Literal["friend", "foe"]
    home: Address
    nickname: str | None


@pytest.mark.parametrize(
    "model", ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest", "echo/echo-1"]
)
async def test_parse_returns_the_model(oai: openai.AsyncOpenAI, upstreams: Any, model: str) -> None:
    completion = await oai.chat.completions.parse(
        model=model, messages=user("Ada"), response_format=Contact
    )

    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Contact)
    assert parsed.name == "Ada"
    assert parsed.home == Address(city="Ada", verified=False)
    assert parsed.kind == "friend"
    openai_fake, anthropic_fake = upstreams
    if model.startswith("openai/"):
        sent = openai_fake.requests_to("/v1/chat/completions")[-1].body
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["name"] == "Contact"
        assert sent["response_format"]["json_schema"]["strict"] is True
    if model.startswith("anthropic/"):
        sent = anthropic_fake.requests_to("/v1/messages")[-1].body
        assert sent["tool_choice"] == {"type": "tool", "name": "Contact"}
        assert sent["tools"][0]["input_schema"]["properties"]["home"] == {"$ref": "#/$defs/Address"}


async def test_streamed_parse_through_anthropic(oai: openai.AsyncOpenAI) -> None:
    async with oai.chat.completions.stream(
        model="anthropic/claude-3-5-haiku-latest", messages=user("Bo"), response_format=Contact
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == Contact(
        name="Bo",
        age=0,
        tags=[],
        kind="friend",
        home=Address(city="Bo", verified=False),
        nickname="Bo",
    )


async def test_unsupported_option_is_a_bad_request(oai: openai.AsyncOpenAI, upstreams: Any) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.chat.completions.create(
            model="anthropic/claude-3-5-haiku-latest", messages=user("x"), seed=7
        )
    assert refused.value.body["param"] == "seed"
    assert refused.value.body["code"] == "unsupported_option"
    assert upstreams[1].requests_to("/v1/messages") == []


async def test_anthropic_sdk_thinking_and_top_k_reach_anthropic(
    claude: anthropic.AsyncAnthropic, upstreams: Any
) -> None:
    answer = await claude.messages.create(
        model="anthropic/claude-3-5-haiku-latest",
        max_tokens=4096,
        messages=user("think it over"),
        thinking={"type": "enabled", "budget_tokens": 1024},
        # This SDK version dropped its sampling keywords; the API still takes top_k.
        extra_body={"top_k": 5},
        metadata={"user_id": "user-42"},
    )
    assert answer.content[-1].text == "You said: think it over"
    sent = upstreams[1].requests_to("/v1/messages")[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["top_k"] == 5
    assert sent["metadata"] == {"user_id": "user-42"}

    async with claude.messages.stream(
        model="anthropic/claude-3-5-haiku-latest",
        max_tokens=4096,
        messages=user("stream it"),
        thinking={"type": "enabled", "budget_tokens": 2000},
    ) as stream:
        text = await stream.get_final_text()
    assert text == "You said: stream it"

    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(
            model="openai/gpt-4o-mini",
            max_tokens=100,
            messages=user("x"),
            extra_body={"top_k": 5},
        )
    assert "top_k" in refused.value.body["error"]["message"]


# --- LangChain ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"])
async def test_langchain_with_structured_output(
    upstreams: Any, chat_key: tuple[ClientAPIKey, str], live_echo: Any, model: str
) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model=model, base_url=f"{live_echo.url}/v1", api_key=chat_key[1], max_retries=0
    )
    contact = await chat.with_structured_output(Contact).ainvoke("Cy")

    assert isinstance(contact, Contact)
    assert (contact.name, contact.home.city) == ("Cy", "Cy")
    if model.startswith("openai/"):
        sent = upstreams[0].requests_to("/v1/chat/completions")[-1].body
        assert sent["response_format"]["json_schema"]["name"] == "Contact"


async def test_langchain_anthropic_options_reach_anthropic(
    upstreams: Any, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> None:
    from langchain_anthropic import ChatAnthropic

    chat = ChatAnthropic(
        model="anthropic/claude-3-5-haiku-latest",
        base_url=live_echo.url,
        api_key=chat_key[1],
        max_retries=0,
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    answer = await chat.ainvoke("hello")

    assert answer.text == "You said: hello"
    sent = upstreams[1].requests_to("/v1/messages")[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}


# --- every option, as the official SDKs send it ---------------------------------------------

#: Each OpenAI option as the openai SDK takes it, and what the fake must record.
SDK_OPENAI_OPTIONS: list[tuple[str, Any]] = [
    ("seed", 7),
    ("presence_penalty", 0.5),
    ("frequency_penalty", -0.5),
    ("logit_bias", {"1734": -100}),
    ("user", "user-42"),
    ("parallel_tool_calls", False),
    ("response_format", {"type": "json_object"}),
]


@pytest.mark.parametrize(
    ("name", "value"), SDK_OPENAI_OPTIONS, ids=[o[0] for o in SDK_OPENAI_OPTIONS]
)
async def test_each_openai_option_reaches_openai_as_sent(
    oai: openai.AsyncOpenAI, upstreams: Any, name: str, value: Any
) -> None:
    openai_fake, _ = upstreams
    extra: dict[str, Any] = {name: value}
    if name == "parallel_tool_calls":
        extra["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    await oai.chat.completions.create(
        model="openai/gpt-4o-mini", messages=user("answer in json"), **extra
    )
    (request,) = openai_fake.requests_to("/v1/chat/completions")
    assert request.body[name] == value


async def test_logprobs_reach_openai_and_come_back(oai: openai.AsyncOpenAI, upstreams: Any) -> None:
    openai_fake, _ = upstreams
    answer = await oai.chat.completions.create(
        model="openai/gpt-4o-mini", messages=user("hi"), logprobs=True, top_logprobs=2
    )
    (request,) = openai_fake.requests_to("/v1/chat/completions")
    assert (request.body["logprobs"], request.body["top_logprobs"]) == (True, 2)
    assert answer.choices[0].logprobs is not None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        o
        for o in SDK_OPENAI_OPTIONS
        if o[0] in {"seed", "presence_penalty", "frequency_penalty", "logit_bias"}
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_options_anthropic_cannot_honour_are_refused_naming_them(
    oai: openai.AsyncOpenAI, upstreams: Any, name: str, value: Any
) -> None:
    _, anthropic_fake = upstreams
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.chat.completions.create(
            model="anthropic/claude-3-5-haiku-latest", messages=user("hi"), **{name: value}
        )
    assert refused.value.status_code == 400
    assert (
        refused.value.body["param"] == name and refused.value.body["code"] == "unsupported_option"
    )
    assert anthropic_fake.requests_to("/v1/messages") == []


async def test_anthropic_sdk_options_reach_anthropic_in_its_own_form(
    claude: anthropic.AsyncAnthropic, upstreams: Any
) -> None:
    _, anthropic_fake = upstreams
    tool = {"name": "f", "input_schema": {"type": "object", "properties": {}}}
    await claude.messages.create(
        model="anthropic/claude-3-5-haiku-latest",
        max_tokens=50,
        messages=user("hi"),
        metadata={"user_id": "user-42"},
        tools=[tool],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    (request,) = anthropic_fake.requests_to("/v1/messages")
    assert request.body["metadata"] == {"user_id": "user-42"}
    assert request.body["tool_choice"]["disable_parallel_tool_use"] is True
