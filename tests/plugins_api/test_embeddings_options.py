"""``/v1/embeddings``: ``dimensions``, token-id input, real ``usage``, recorded and charged like chat.

A live Echo in front of FakeOpenAI (which honours ``dimensions`` and token
arrays, and reports its usage) and FakeOllama (which does neither: Echo
refuses those options for it with a 400 naming them, and estimates its usage
as one token per word). Hostile inputs get a 400 naming the field.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from plugins_api.access.key_changes import client_key_issue
from plugins_api.access.key_limits import KeyLimits
from plugins_api.access.key_spend import key_client_label
from plugins_api.compat.openai_api import MAX_DIMENSIONS, MAX_EMBEDDING_INPUTS, MAX_INPUT_TOKENS
from plugins_api.models import ClientAPIKey
from providers.config.services import provider_config_create
from providers.models import UsageRecord
from providers.testing.fake_ollama import FakeOllama
from providers.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-fake-0000000020"


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOllama]]:
    with FakeOpenAI(api_keys={UPSTREAM_KEY}) as openai_fake, FakeOllama() as ollama_fake:
        yield openai_fake, ollama_fake


@pytest.fixture
def upstreams(transactional_db: Any, fakes: tuple[FakeOpenAI, FakeOllama]) -> FakeOpenAI:
    openai_fake, ollama_fake = fakes
    openai_fake.reset()
    ollama_fake.reset()
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": openai_fake.base_url, "max_retries": 0},
        secrets={"api_key": UPSTREAM_KEY},
        is_default=True,
    )
    provider_config_create(
        name="ollama", plugin="ollama", settings={"base_url": ollama_fake.url, "max_retries": 0}
    )
    return openai_fake


@pytest.fixture
def api(upstreams: Any, chat_key: tuple[ClientAPIKey, str], live_echo: Any) -> Iterator[Any]:
    with httpx.Client(
        base_url=f"{live_echo.url}/v1",
        headers={"authorization": f"Bearer {chat_key[1]}"},
        timeout=10,
    ) as client:
        yield client


def embed(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/embeddings", json=body)


def wait_for_rows(client: str, count: int) -> list[UsageRecord]:
    """Return CLIENT's usage rows once COUNT are written (the writer batches them off the request)."""
    deadline = time.monotonic() + 10
    while True:
        rows = list(UsageRecord.objects.filter(client=client).order_by("id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_openai_usage_is_the_upstreams_and_is_recorded(api: httpx.Client) -> None:
    response = embed(api, model="openai/text-embedding-3-small", input=["one two three", "four"])

    assert response.status_code == 200
    assert response.json()["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    rows = wait_for_rows(key_client_label("test-chat"), 1)
    assert [(r.endpoint, r.provider, r.prompt_tokens) for r in rows] == [
        ("/v1/embeddings", "openai", 4)
    ]


def test_dimensions_and_token_arrays_pass_to_openai(
    api: httpx.Client, upstreams: FakeOpenAI
) -> None:
    response = embed(
        api, model="openai/text-embedding-3-small", input=[[1, 2, 3], [4, 5]], dimensions=3
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert [len(item["embedding"]) for item in body["data"]] == [3, 3]
    assert body["usage"]["prompt_tokens"] == 5  # one per token id
    sent = upstreams.requests_to("/v1/embeddings")[-1].body
    assert sent["input"] == [[1, 2, 3], [4, 5]] and sent["dimensions"] == 3

    single = embed(api, model="openai/text-embedding-3-small", input=[7, 8, 9])
    assert single.status_code == 200 and len(single.json()["data"]) == 1
    assert upstreams.requests_to("/v1/embeddings")[-1].body["input"] == [[7, 8, 9]]


def test_ollama_refuses_what_it_cannot_honour_and_estimates_usage(
    api: httpx.Client, fakes: tuple[FakeOpenAI, FakeOllama]
) -> None:
    _, ollama_fake = fakes
    dimensions = embed(api, model="ollama/nomic-embed-text", input="hi", dimensions=4)
    tokens = embed(api, model="ollama/nomic-embed-text", input=[[1, 2]])

    assert dimensions.status_code == 400
    assert dimensions.json()["error"]["param"] == "dimensions"
    assert tokens.status_code == 400
    assert tokens.json()["error"]["param"] == "input"
    assert "token" in tokens.json()["error"]["message"]
    assert ollama_fake.requests_to("/api/embed") == []  # refused before any upstream call

    plain = embed(api, model="ollama/nomic-embed-text", input=["three little words", "two more"])
    assert plain.status_code == 200, plain.text
    assert plain.json()["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


def test_embedding_tokens_count_toward_the_keys_tokens_per_minute(
    upstreams: Any, live_echo: Any
) -> None:
    _, raw = client_key_issue(name="tpm", limits=KeyLimits(tokens_per_minute=10))
    with httpx.Client(
        base_url=f"{live_echo.url}/v1", headers={"authorization": f"Bearer {raw}"}, timeout=10
    ) as client:
        first = embed(client, model="openai/text-embedding-3-small", input=" ".join(["w"] * 12))
        second = embed(client, model="openai/text-embedding-3-small", input="w")

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "tokens"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": []}, "input"),
        ({"input": [[]]}, "input.0"),
        ({"input": [[1, "2"]]}, "input.0"),
        ({"input": [[1, -2]]}, "input.0"),
        ({"input": [[True, 1]]}, "input.0"),
        ({"input": [[1.5]]}, "input.0"),
        ({"input": [[2**40]]}, "input.0"),
        ({"input": [[[1]]]}, "input.0"),
        ({"input": ["text", [1, 2]]}, "input.1"),
        ({"input": [{"text": "x"}]}, "input.0"),
        ({"input": None}, "input"),
        ({"input": 42}, "input"),
        ({"input": ["x"] * (MAX_EMBEDDING_INPUTS + 1)}, "input"),
        ({"input": [[1] * (MAX_INPUT_TOKENS + 1)]}, "input.0"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": MAX_DIMENSIONS + 1}, "dimensions"),
        ({"input": "x", "dimensions": "8"}, "dimensions"),
        ({"input": "x", "dimensions": True}, "dimensions"),
        ({"input": "x", "dimensions": 2.0}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "user": {"id": 1}}, "user"),
    ],
)
def test_hostile_embedding_bodies_are_a_400_naming_the_field(
    api: httpx.Client, upstreams: FakeOpenAI, body: dict[str, Any], field: str
) -> None:
    response = embed(api, model="openai/text-embedding-3-small", **body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field
    assert upstreams.requests_to("/v1/embeddings") == []
