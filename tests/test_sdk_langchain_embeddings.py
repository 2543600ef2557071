"""LangChain's ``OpenAIEmbeddings`` with its default settings, against a live Echo and FakeOpenAI.

By default LangChain tokenizes each text with tiktoken and sends the token-id
arrays (not the text) to ``/v1/embeddings``; Echo passes them on to openai
as they are, with ``dimensions`` when set, and answers with the upstream's
usage. tiktoken downloads its vocabulary from OpenAI's cloud, which this
machine cannot reach: the test gives it a byte-level vocabulary instead
(the only stand-in; LangChain, the openai SDK, Echo and the fake are real).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings

from plugins_api.models import ClientAPIKey
from providers.config.services import provider_config_create
from providers.testing.fake_openai import EMBEDDING_DIMENSIONS, FakeOpenAI

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-fake-0000000019"


def byte_encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    """Return a tiktoken encoding whose tokens are the bytes of the text (no download)."""
    return tiktoken.Encoding(
        name=f"bytes-{name}",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={},
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys={UPSTREAM_KEY}) as server:
        yield server


@pytest.fixture
def upstream(
    transactional_db: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> FakeOpenAI:
    monkeypatch.setattr(tiktoken, "get_encoding", byte_encoding)
    fake.reset()
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": fake.base_url, "max_retries": 0},
        secrets={"api_key": UPSTREAM_KEY},
        is_default=True,
    )
    return fake


def embedder(live_echo: Any, key: str, **options: Any) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(
        model="openai/text-embedding-3-small",
        base_url=f"{live_echo.url}/v1",
        api_key=key,
        max_retries=0,
        **options,
    )


def test_default_settings_send_token_arrays_and_get_vectors(
    upstream: FakeOpenAI, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> None:
    vectors = embedder(live_echo, chat_key[1]).embed_documents(["hello world", "second text"])

    assert len(vectors) == 2 and vectors[0] != vectors[1]
    assert all(len(v) == EMBEDDING_DIMENSIONS for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vectors)
    sent = upstream.requests_to("/v1/embeddings")[-1].body
    assert sent["input"] == [list(b"hello world"), list(b"second text")]  # token ids, as sent
    assert sent["model"] == "text-embedding-3-small"


def test_dimensions_and_queries(
    upstream: FakeOpenAI, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> None:
    model = embedder(live_echo, chat_key[1], dimensions=5)

    query = model.embed_query("what is echo?")

    assert len(query) == 5
    assert upstream.requests_to("/v1/embeddings")[-1].body["dimensions"] == 5


async def test_async_embeddings(
    upstream: FakeOpenAI, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> None:
    vectors = await embedder(live_echo, chat_key[1]).aembed_documents(["one", "two", "three"])

    assert len(vectors) == 3
