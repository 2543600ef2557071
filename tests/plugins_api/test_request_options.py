"""Every OpenAI and Anthropic option is honoured in the provider's wire form, or refused by name.

Echo is served over real HTTP; behind it ``openai``, ``anthropic`` and
``ollama`` are the built-in plugins aimed at FakeOpenAI, FakeAnthropic and
FakeOllama (each records the bodies it receives), and ``echo`` is offline.
For each option and each endpoint (``/v1/chat/completions``,
``/v1/messages``, ``/chat``) a test checks the body the fake received: the
option passed on as it is (openai), translated (anthropic, ollama), or the
request refused with a 400 naming the option and nothing sent upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from providers.config.services import provider_config_create
from providers.runtime import process as runtime
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_ollama import FakeOllama
from providers.testing.fake_openai import FakeOpenAI
from tests.conftest import LiveEcho

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-fake-0000000002"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"enum": ["friend", "foe"]},
        "home": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "verified": {"type": "boolean"}},
            "required": ["city", "verified"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "tags", "kind", "home"],
    "additionalProperties": False,
}
PERSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
}


def person(text: str) -> dict[str, Any]:
    """Return the instance of PERSON_SCHEMA every fake and echo build from TEXT."""
    return {
        "name": text,
        "age": 0,
        "tags": [],
        "kind": "friend",
        "home": {"city": text, "verified": False},
    }


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeAnthropic, FakeOllama]]:
    with (
        FakeOpenAI(api_keys={UPSTREAM_KEY}) as openai_fake,
        FakeAnthropic(api_keys={UPSTREAM_KEY}) as anthropic_fake,
        FakeOllama() as ollama_fake,
    ):
        yield openai_fake, anthropic_fake, ollama_fake


@pytest.fixture
def echo(transactional_db, fakes, chat_key) -> Iterator[httpx.Client]:
    """Echo over HTTP with the four providers; ``openai`` fails over to ``anthropic``, then ``ollama``."""
    openai_fake, anthropic_fake, ollama_fake = fakes
    for fake in fakes:
        fake.reset()
    routing = {"max_retries": 0}
    provider_config_create(name="echo", plugin="echo", is_default=True)
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": openai_fake.base_url, **routing},
        secrets={"api_key": UPSTREAM_KEY},
        fallbacks=["anthropic", "ollama/llama3"],
    )
    provider_config_create(
        name="anthropic",
        plugin="anthropic",
        settings={"base_url": anthropic_fake.url, **routing},
        secrets={"api_key": UPSTREAM_KEY},
    )
    provider_config_create(
        name="ollama",
        plugin="ollama",
        settings={"base_url": ollama_fake.url, "default_model": "llama3", **routing},
    )
    server = LiveEcho().start()
    headers = {"Authorization": f"Bearer {chat_key[1]}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        yield client
    server.stop()


def completion(client: httpx.Client, model: str, text: str = "Ada", **options: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **options}
    return client.post("/v1/chat/completions", json=body)


def message(client: httpx.Client, model: str, text: str = "Ada", **options: Any) -> Any:
    body = {
        "model": model,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": text}],
        **options,
    }
    return client.post("/v1/messages", json=body)


def sent(fake: Any, path: str) -> list[dict[str, Any]]:
    """Return the bodies FAKE received at PATH."""
    return [r.body for r in fake.requests_to(path)]


def refused(response: httpx.Response, field: str, status: int = 400) -> None:
    """Assert RESPONSE is a STATUS naming FIELD, in whichever API shape it has."""
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    named = error.get("param") or error.get("field") or error.get("message")
    assert field in named, body


def breakers_untouched() -> None:
    for name in ("openai", "anthropic", "ollama"):
        assert runtime.manager.breaker(name).consecutive_failures == 0, name


# --- openai: every OpenAI option passed on as it is --------------------------------

OPENAI_OPTIONS: dict[str, Any] = {
    "response_format": PERSON_FORMAT,
    "seed": 42,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logprobs": True,
    "top_logprobs": 3,
    "logit_bias": {"50256": -100, "1234": 5.5},
    "parallel_tool_calls": False,
    "user": "user-7",
}


def test_openai_gets_every_option_verbatim(echo: httpx.Client, fakes: Any) -> None:
    openai_fake = fakes[0]
    response = completion(echo, "openai/gpt-4o-mini", **OPENAI_OPTIONS)

    assert response.status_code == 200, response.text
    (body,) = sent(openai_fake, "/v1/chat/completions")
    for name, value in OPENAI_OPTIONS.items():
        assert body[name] == value, name
    choice = response.json()["choices"][0]
    assert json.loads(choice["message"]["content"]) == person("Ada")
    # Asked for and answered: the logprobs come back as OpenAI sent them.
    tokens = [t["token"] for t in choice["logprobs"]["content"]]
    assert "".join(tokens) == choice["message"]["content"]
    assert all(t["logprob"] == 0.0 for t in choice["logprobs"]["content"])


def test_openai_json_object_and_streamed_logprobs(echo: httpx.Client, fakes: Any) -> None:
    openai_fake = fakes[0]
    response = completion(
        echo, "openai/gpt-4o-mini", "answer in json", response_format={"type": "json_object"}
    )
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {
        "you_said": "answer in json"
    }
    assert sent(openai_fake, "/v1/chat/completions")[-1]["response_format"] == {
        "type": "json_object"
    }

    streamed = completion(echo, "openai/gpt-4o-mini", "one two", stream=True, logprobs=True)
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in streamed.text.split("\n\n")
        if line.startswith("data: {")
    ]
    tokens = [
        entry["token"]
        for chunk in chunks
        for entry in ((chunk["choices"][0].get("logprobs") or {}).get("content") or [])
    ]
    assert tokens == ["You", " said:", " one", " two"]


def test_openai_refuses_what_openai_lacks(echo: httpx.Client, fakes: Any) -> None:
    openai_fake = fakes[0]
    for name, value in (("top_k", 5), ("thinking", {"type": "enabled", "budget_tokens": 2048})):
        response = completion(echo, "openai/gpt-4o-mini", **{name: value})
        refused(response, name)
        assert response.json()["error"]["code"] == "unsupported_option"
        assert "'openai'" in response.json()["error"]["message"]
    assert sent(openai_fake, "/v1/chat/completions") == []
    breakers_untouched()


# --- anthropic: translated, or refused -----------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"seed": 1},
        {"presence_penalty": 1},
        {"frequency_penalty": 1},
        {"logprobs": True},
        {"logit_bias": {"1": 1}},
    ],
    ids=lambda options: next(iter(options)),
)
def test_anthropic_refuses_openai_only_options(
    echo: httpx.Client, fakes: Any, options: dict[str, Any]
) -> None:
    anthropic_fake = fakes[1]
    (name,) = options
    response = completion(echo, "anthropic/claude-3-5-haiku-latest", **options)
    refused(response, name)
    assert response.json()["error"]["code"] == "unsupported_option"
    assert sent(anthropic_fake, "/v1/messages") == []
    breakers_untouched()


def test_anthropic_response_format_is_a_forced_tool(echo: httpx.Client, fakes: Any) -> None:
    anthropic_fake = fakes[1]
    response = completion(echo, "anthropic/claude-3-5-haiku-latest", response_format=PERSON_FORMAT)

    assert response.status_code == 200, response.text
    body = sent(anthropic_fake, "/v1/messages")[-1]
    assert body["tools"] == [
        {
            "name": "person",
            "description": "Give your whole answer as this tool's input.",
            "input_schema": PERSON_SCHEMA,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "person"}
    assert "response_format" not in body
    choice = response.json()["choices"][0]
    assert json.loads(choice["message"]["content"]) == person("Ada")
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]

    # json_object: a forced tool with a free object schema; streamed, the JSON arrives as text.
    streamed = completion(
        echo,
        "anthropic/claude-3-5-haiku-latest",
        stream=True,
        response_format={"type": "json_object"},
    )
    body = sent(anthropic_fake, "/v1/messages")[-1]
    assert body["tool_choice"] == {"type": "tool", "name": "json_object"}
    assert body["tools"][0]["input_schema"] == {"type": "object", "additionalProperties": True}
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in streamed.text.split("\n\n")
        if line.startswith("data: {")
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert json.loads(text) == {}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_anthropic_translates_the_common_options(echo: httpx.Client, fakes: Any) -> None:
    anthropic_fake = fakes[1]
    response = completion(
        echo,
        "anthropic/claude-3-5-haiku-latest",
        'call get_weather {"city": "Oslo"}\ncall get_time {}',
        tools=[WEATHER, CLOCK],
        parallel_tool_calls=False,
        user="user-9",
        top_k=7,
    )
    assert response.status_code == 200, response.text
    body = sent(anthropic_fake, "/v1/messages")[-1]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["metadata"] == {"user_id": "user-9"}
    assert body["top_k"] == 7
    for leaked in ("parallel_tool_calls", "user", "response_format"):
        assert leaked not in body
    calls = response.json()["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]


def test_messages_api_options_reach_anthropic(echo: httpx.Client, fakes: Any) -> None:
    anthropic_fake = fakes[1]
    response = message(
        echo,
        "anthropic/claude-3-5-haiku-latest",
        'call get_weather {"city": "Oslo"}\ncall get_time {}',
        thinking={"type": "enabled", "budget_tokens": 2048},
        top_k=3,
        metadata={"user_id": "u-1"},
        tools=[
            {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]},
            {"name": "get_time", "input_schema": {"type": "object"}},
        ],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert response.status_code == 200, response.text
    body = sent(anthropic_fake, "/v1/messages")[-1]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["top_k"] == 3
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    content = response.json()["content"]
    # The thinking block is dropped on purpose: the common shape has no place for it.
    assert [block["type"] for block in content] == ["text", "tool_use"]

    streamed = client_stream_text(
        echo,
        message_body("anthropic/claude-3-5-haiku-latest", thinking={"type": "disabled"}),
    )
    assert "You said: Ada" in streamed
    assert sent(anthropic_fake, "/v1/messages")[-1]["thinking"] == {"type": "disabled"}


def message_body(model: str, **options: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Ada"}],
        "stream": True,
        **options,
    }


def client_stream_text(client: httpx.Client, body: dict[str, Any]) -> str:
    """Return the text of a streamed ``/v1/messages`` answer."""
    response = client.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    text = ""
    for frame in response.text.split("\n\n"):
        for line in frame.splitlines():
            if line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if data.get("type") == "content_block_delta":
                    text += data["delta"].get("text", "")
    return text


def test_messages_api_refusals(echo: httpx.Client, fakes: Any) -> None:
    openai_fake, anthropic_fake, _ = fakes
    refused(
        message(echo, "anthropic/claude-3-5-haiku-latest", metadata={"user_id": "u", "tier": 1}),
        "metadata.tier",
    )
    refused(
        message(echo, "openai/gpt-4o-mini", thinking={"type": "enabled", "budget_tokens": 2048}),
        "thinking",
    )
    refused(message(echo, "openai/gpt-4o-mini", top_k=4), "top_k")
    # Anthropic cannot force the JSON tool while thinking: said before anything is sent.
    refused(
        completion(
            echo,
            "anthropic/claude-3-5-haiku-latest",
            response_format={"type": "json_object"},
            thinking={"type": "enabled", "budget_tokens": 2048},
            max_tokens=4096,
        ),
        "response_format",
        422,  # the plugin's refusal of a combination, as its other wire refusals
    )
    assert sent(openai_fake, "/v1/chat/completions") == []
    assert sent(anthropic_fake, "/v1/messages") == []
    breakers_untouched()


# --- ollama: format and options --------------------------------------------------------


def test_ollama_translates_format_and_options(echo: httpx.Client, fakes: Any) -> None:
    ollama_fake = fakes[2]
    response = completion(
        echo,
        "ollama/llama3",
        response_format=PERSON_FORMAT,
        seed=11,
        top_k=20,
        presence_penalty=0.25,
        frequency_penalty=0.75,
        stop=["never"],
    )
    assert response.status_code == 200, response.text
    body = sent(ollama_fake, "/api/chat")[-1]
    assert body["format"] == PERSON_SCHEMA
    assert body["options"] == {
        "seed": 11,
        "top_k": 20,
        "presence_penalty": 0.25,
        "frequency_penalty": 0.75,
        "stop": ["never"],
    }
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == person("Ada")

    response = completion(echo, "ollama/llama3", response_format={"type": "json_object"})
    assert sent(ollama_fake, "/api/chat")[-1]["format"] == "json"
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"you_said": "Ada"}

    count = len(sent(ollama_fake, "/api/chat"))
    for name, value in (
        ("logprobs", True),
        ("logit_bias", {"1": 1}),
        ("parallel_tool_calls", False),
        ("thinking", {"type": "enabled", "budget_tokens": 2048}),
    ):
        refused(completion(echo, "ollama/llama3", **{name: value}), name)
    assert len(sent(ollama_fake, "/api/chat")) == count


# --- echo and /chat ----------------------------------------------------------------------


def test_echo_answers_json_and_refuses_the_rest(echo: httpx.Client) -> None:
    response = completion(echo, "echo/echo-1", response_format={"type": "json_object"}, seed=3)
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"echo": "Ada"}
    response = completion(echo, "echo/echo-1", response_format=PERSON_FORMAT)
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == person("Ada")
    for name, value in (("presence_penalty", 1), ("top_k", 2), ("logprobs", True)):
        refused(completion(echo, "echo/echo-1", **{name: value}), name)
    # Values that ask for nothing more than the default are no demand.
    ok = completion(
        echo,
        "echo/echo-1",
        response_format={"type": "text"},
        logprobs=False,
        parallel_tool_calls=True,
        thinking={"type": "disabled"},
    )
    assert ok.status_code == 200, ok.text


def test_chat_endpoint_takes_the_same_options(echo: httpx.Client, fakes: Any) -> None:
    openai_fake = fakes[0]
    response = echo.post(
        "/chat", json={"prompt": "Ada", "provider": "echo", "response_format": PERSON_FORMAT}
    )
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["content"]) == person("Ada")

    response = echo.post(
        "/chat",
        json={"prompt": "Ada", "provider": "openai", "seed": 5, "logit_bias": {"7": 1}},
    )
    assert response.status_code == 200, response.text
    body = sent(openai_fake, "/v1/chat/completions")[-1]
    assert (body["seed"], body["logit_bias"]) == (5, {"7": 1})

    response = echo.post("/chat", json={"prompt": "Ada", "provider": "echo", "seed": 1.5})
    refused(response, "seed")
    response = echo.post("/chat", json={"prompt": "Ada", "provider": "anthropic", "seed": 1})
    refused(response, "seed")


# --- failover never drops an option ---------------------------------------------------------


def test_failover_skips_a_fallback_that_cannot_honour_an_option(
    echo: httpx.Client, fakes: Any
) -> None:
    openai_fake, anthropic_fake, ollama_fake = fakes
    openai_fake.inject(status=500)
    response = completion(echo, "openai/gpt-4o-mini", seed=99)

    assert response.status_code == 200, response.text
    assert response.headers["x-echo-provider"] == "ollama"
    assert sent(anthropic_fake, "/v1/messages") == []  # no seed there: skipped, never called
    assert sent(ollama_fake, "/api/chat")[-1]["options"]["seed"] == 99

    # Without the option, the same chain goes to anthropic.
    openai_fake.inject(status=500)
    response = completion(echo, "openai/gpt-4o-mini")
    assert response.headers["x-echo-provider"] == "anthropic"


# --- hostile values ----------------------------------------------------------------------------


def deep_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"logit_bias": {"12": 101}}, "logit_bias.12"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
    ({"seed": "1"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": "high"}, "frequency_penalty"),
    ({"top_logprobs": 5}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
        "response_format.json_schema.name",
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "deep", "schema": deep_schema(40)},
            }
        },
        "response_format.json_schema.schema",
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "wide", "schema": {"enum": list(range(20_000))}},
            }
        },
        "response_format.json_schema.schema",
    ),
    ({"response_format": {"type": "json_object", "extra": 1}}, "response_format.extra"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": "5"}, "top_k"),
    ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ({"thinking": {"type": "maybe"}}, "thinking.type"),
    ({"user": ["a"]}, "user"),
]


def test_hostile_option_values_are_refused_by_field(echo: httpx.Client, fakes: Any) -> None:
    for options, field in HOSTILE:
        for model in ("openai/gpt-4o-mini", "echo/echo-1"):
            refused(completion(echo, model, **options), field)
        refused(echo.post("/chat", json={"prompt": "x", **options}), field)
    # NaN and Infinity, as some JSON writers spell them.
    for raw in (b"NaN", b"Infinity"):
        body = b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],'
        response = echo.post(
            "/v1/chat/completions",
            content=body + b' "presence_penalty": ' + raw + b"}",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
    for path in ("/v1/chat/completions",):
        assert sent(fakes[0], path) == []
    breakers_untouched()


def test_hostile_messages_api_options(echo: httpx.Client, fakes: Any) -> None:
    cases = [
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"metadata": "u"}, "metadata"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id"),
        ({"metadata": {"user_id": "u", "x" * 10_000: 1}}, "metadata.xxx"),
        ({"thinking": {"type": "enabled", "budget_tokens": "many"}}, "thinking.budget_tokens"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2048, "extra": True}},
            "thinking.extra",
        ),
        (
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}},
            "tool_choice.disable_parallel_tool_use",
        ),
        (
            {"tool_choice": {"type": "none", "disable_parallel_tool_use": True}},
            "tool_choice.disable_parallel_tool_use",
        ),
    ]
    for options, field in cases:
        response = message(echo, "anthropic/claude-3-5-haiku-latest", **options)
        refused(response, field)
        assert len(response.text) < 2_000  # a huge key is never echoed back whole
    assert sent(fakes[1], "/v1/messages") == []
    breakers_untouched()
