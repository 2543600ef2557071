"""Anthropic ``document`` blocks, ``message_start``'s input tokens, and a forced ``tool_choice`` on Ollama.

Through the official SDKs against a live Echo in front of FakeAnthropic,
FakeOpenAI and FakeOllama (each records the bodies it receives) and the
offline ``echo`` provider:

- a document block (a base64 PDF, a plain text) reaches anthropic as sent,
  and openai as a ``file`` part (the PDF's data URL) or a text part; a
  provider that cannot read documents refuses the call with a 400 naming
  them, and hostile blocks get a 400 naming the field;
- a streamed ``/v1/messages`` reports the input tokens in ``message_start``
  (the upstream's count for anthropic, Echo's estimate otherwise) and the
  provider's count at the end;
- Ollama, which has no ``tool_choice``, gets a forced one emulated (the named
  tool alone, an instruction) and its answer checked: no call is a 422.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest

from plugins_api.models import ClientAPIKey
from providers.config.services import provider_config_create
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_ollama import FakeOllama
from providers.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-fake-0000000021"
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n").decode()
PDF_BLOCK = {
    "type": "document",
    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
    "title": "report",
}
TEXT_BLOCK = {
    "type": "document",
    "source": {"type": "text", "media_type": "text/plain", "data": "The sky is green."},
    "title": "Facts",
    "context": "From the almanac",
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}

Fakes = tuple[FakeAnthropic, FakeOpenAI, FakeOllama]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    with (
        FakeAnthropic(api_keys={UPSTREAM_KEY}) as anthropic_fake,
        FakeOpenAI(api_keys={UPSTREAM_KEY}) as openai_fake,
        FakeOllama() as ollama_fake,
    ):
        yield anthropic_fake, openai_fake, ollama_fake


@pytest.fixture
def upstreams(transactional_db: Any, fakes: Fakes) -> Fakes:
    for fake in fakes:
        fake.reset()
    anthropic_fake, openai_fake, ollama_fake = fakes
    routing = {"max_retries": 0}
    provider_config_create(
        name="anthropic",
        plugin="anthropic",
        settings={"base_url": anthropic_fake.url, **routing},
        secrets={"api_key": UPSTREAM_KEY},
        is_default=True,
    )
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": openai_fake.base_url, **routing},
        secrets={"api_key": UPSTREAM_KEY},
    )
    provider_config_create(
        name="ollama", plugin="ollama", settings={"base_url": ollama_fake.url, **routing}
    )
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "Echo: "})
    return fakes


@pytest.fixture
async def claude(
    upstreams: Fakes, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=live_echo.url, api_key=chat_key[1], max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def oai(
    upstreams: Fakes, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{live_echo.url}/v1", api_key=chat_key[1], max_retries=0, timeout=10
    ) as client:
        yield client


def asking(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": "Summarise them."}]}]


# --- document blocks ------------------------------------------------------------


async def test_documents_reach_anthropic_as_sent(
    claude: anthropic.AsyncAnthropic, upstreams: Fakes
) -> None:
    message = await claude.messages.create(
        model="anthropic/claude-3-5-haiku-latest",
        max_tokens=100,
        messages=asking(PDF_BLOCK, TEXT_BLOCK),
    )

    assert message.content[0].text
    sent = upstreams[0].requests_to("/v1/messages")[-1].body["messages"][0]["content"]
    assert sent[0] == PDF_BLOCK and sent[1] == TEXT_BLOCK
    assert sent[2] == {"type": "text", "text": "Summarise them."}


async def test_documents_reach_openai_as_file_and_text_parts(
    claude: anthropic.AsyncAnthropic, upstreams: Fakes
) -> None:
    message = await claude.messages.create(
        model="openai/gpt-4o-mini", max_tokens=100, messages=asking(PDF_BLOCK, TEXT_BLOCK)
    )

    assert message.content[0].text
    parts = upstreams[1].requests_to("/v1/chat/completions")[-1].body["messages"][0]["content"]
    assert parts[0] == {
        "type": "file",
        "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF}"},
    }
    assert parts[1] == {"type": "text", "text": "Facts\n\nFrom the almanac\n\nThe sky is green."}


async def test_a_pdf_by_url_cannot_go_to_openai(
    claude: anthropic.AsyncAnthropic, upstreams: Fakes
) -> None:
    by_url = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(
            model="openai/gpt-4o-mini", max_tokens=100, messages=asking(by_url)
        )

    assert "base64" in caught.value.message
    assert upstreams[1].requests_to("/v1/chat/completions") == []
    # Anthropic fetches it itself: passed on.
    await claude.messages.create(
        model="anthropic/claude-3-5-haiku-latest", max_tokens=100, messages=asking(by_url)
    )
    assert upstreams[0].requests_to("/v1/messages")[-1].body["messages"][0]["content"][0] == by_url


@pytest.mark.parametrize("model", ["echo/echo-1", "ollama/llama3"])
async def test_providers_that_cannot_read_documents_refuse_them(
    claude: anthropic.AsyncAnthropic, upstreams: Fakes, model: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(model=model, max_tokens=100, messages=asking(TEXT_BLOCK))

    assert "documents" in caught.value.message
    assert upstreams[2].requests_to("/api/chat") == []


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"type": "document"}, "messages.0.content.0.source"),
        ({"type": "document", "source": "x"}, "messages.0.content.0.source"),
        ({"type": "document", "source": {"type": "file", "file_id": "f"}}, ".source"),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "image/png"}},
            ".source.media_type",
        ),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf"}},
            ".source.data",
        ),
        (
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": "<%PDF>"},
            },
            ".source.data",
        ),
        (
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "a\x00b"},
            },
            ".source.data",
        ),
        (
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": 5}},
            ".source.data",
        ),
        ({"type": "document", "source": {"type": "url", "url": "file:///etc/passwd"}}, ".url"),
        ({"type": "document", "source": {"type": "url", "url": ["x"]}}, ".source.url"),
        ({**TEXT_BLOCK, "title": {"a": 1}}, ".title"),
        ({**TEXT_BLOCK, "context": "x" * 20_000}, ".context"),
        ({**TEXT_BLOCK, "citations": {"enabled": True}}, ".citations"),
        ({**TEXT_BLOCK, "citations": {"enabled": "yes"}}, ".citations.enabled"),
    ],
)
async def test_hostile_document_blocks_are_a_400_naming_the_field(
    claude: anthropic.AsyncAnthropic, upstreams: Fakes, block: dict[str, Any], field: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(
            model="anthropic/claude-3-5-haiku-latest", max_tokens=100, messages=asking(block)
        )

    named = caught.value.body["error"]["message"].split(":", 1)[0]
    assert named.startswith("messages.0.content.0") and named.endswith(field), named
    assert upstreams[0].requests_to("/v1/messages") == []


async def test_documents_without_citations_asked_pass(
    claude: anthropic.AsyncAnthropic, upstreams: Fakes
) -> None:
    block = {**TEXT_BLOCK, "citations": {"enabled": False}}
    message = await claude.messages.create(
        model="anthropic/claude-3-5-haiku-latest", max_tokens=100, messages=asking(block)
    )
    assert message.content[0].text


# --- message_start's input tokens -----------------------------------------------


@pytest.mark.parametrize("model", ["anthropic/claude-3-5-haiku-latest", "echo/echo-1"])
async def test_message_start_reports_the_input_tokens(
    claude: anthropic.AsyncAnthropic, model: str
) -> None:
    messages = [{"role": "user", "content": "Tell me about the weather in Paris today, please."}]
    started = None
    async with claude.messages.stream(model=model, max_tokens=100, messages=messages) as stream:
        async for event in stream:
            if event.type == "message_start":
                started = event.message.usage.input_tokens
        final = await stream.get_final_message()

    assert started is not None and started > 0
    if model.startswith("anthropic/"):  # the upstream's own count, known at the start
        assert started == final.usage.input_tokens
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


# --- a forced tool_choice on Ollama ---------------------------------------------


def weather_question(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def test_ollama_gets_only_the_named_tool_and_its_call_is_checked(
    oai: openai.AsyncOpenAI, upstreams: Fakes
) -> None:
    completion = await oai.chat.completions.create(
        model="ollama/llama3",
        messages=weather_question('call get_weather {"city": "Paris"}'),
        tools=[CLOCK, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )

    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    sent = upstreams[2].requests_to("/api/chat")[-1].body
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_weather"]
    assert sent["messages"][0]["role"] == "system"
    assert "get_weather" in sent["messages"][0]["content"]


@pytest.mark.parametrize("stream", [False, True])
async def test_ollama_answering_text_to_a_forced_choice_is_a_422(
    oai: openai.AsyncOpenAI, stream: bool
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await oai.chat.completions.create(
            model="ollama/llama3",
            messages=weather_question("just chat with me"),
            tools=[WEATHER],
            tool_choice="required",
            stream=stream,
        )
    assert caught.value.body["code"] == "tool_choice_not_followed"
    assert caught.value.body["param"] == "tool_choice"


async def test_ollama_forced_stream_is_one_checked_answer(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="ollama/llama3",
        messages=weather_question('call get_weather {"city": "Oslo"}'),
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
    )
    calls = [
        call.function.name
        async for chunk in stream
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
    ]
    assert calls == ["get_weather"]


async def test_ollama_tool_choice_naming_no_offered_tool_is_a_400(
    oai: openai.AsyncOpenAI, upstreams: Fakes
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(
            model="ollama/llama3",
            messages=weather_question("hi"),
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    assert caught.value.body["param"] == "tool_choice"
    assert upstreams[2].requests_to("/api/chat") == []


# --- OpenAI's file parts are documents too ---------------------------------------


async def test_an_openai_pdf_file_part_reaches_anthropic_as_a_document(
    oai: openai.AsyncOpenAI, upstreams: Fakes
) -> None:
    part = {
        "type": "file",
        "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF}"},
    }
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "Summarise it."}]}]

    await oai.chat.completions.create(model="anthropic/claude-3-5-haiku-latest", messages=messages)
    await oai.chat.completions.create(model="openai/gpt-4o-mini", messages=messages)
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(model="echo/echo-1", messages=messages)

    sent = upstreams[0].requests_to("/v1/messages")[-1].body["messages"][0]["content"][0]
    assert sent == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        "title": "report.pdf",
    }
    assert (
        upstreams[1].requests_to("/v1/chat/completions")[-1].body["messages"][0]["content"][0]
        == part
    )  # openai gets its own part back, as sent
    assert caught.value.body["param"] == "documents"
