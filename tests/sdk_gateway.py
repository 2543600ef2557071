"""A live Echo before FakeOpenAI and FakeAnthropic, and the official SDKs pointed at it: shared fixtures.

Behind Echo: ``openai`` (the routing default, so that a fault injected there
reaches the client: a default provider would otherwise take over as the last
failover) and ``anthropic``, built-in plugins aimed at the fakes, and the
offline ``echo``. Providers have ``max_retries: 0``: one injected fault is
one failed request. A test module imports the fixtures it uses:

    from tests.sdk_gateway import claude, fakes, oai, upstreams, user  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest

from plugins_api.models import ClientAPIKey
from providers.config.services import provider_config_create
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_openai import FakeOpenAI

#: The key the fakes take, and Echo's providers send: it must never reach a client.
UPSTREAM_KEY = "sk-upstream-fake-0000000001"


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    with (
        FakeOpenAI(api_keys={UPSTREAM_KEY}) as openai_fake,
        FakeAnthropic(api_keys={UPSTREAM_KEY}) as anthropic_fake,
    ):
        yield openai_fake, anthropic_fake


@pytest.fixture
def upstreams(transactional_db, fakes) -> tuple[FakeOpenAI, FakeAnthropic]:
    """Configure the three providers (loaded when the live server starts)."""
    openai_fake, anthropic_fake = fakes
    openai_fake.reset()
    anthropic_fake.reset()
    routing = {"max_retries": 0}
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": openai_fake.base_url, **routing},
        secrets={"api_key": UPSTREAM_KEY},
        is_default=True,
    )
    provider_config_create(
        name="anthropic",
        plugin="anthropic",
        settings={"base_url": anthropic_fake.url, **routing},
        secrets={"api_key": UPSTREAM_KEY},
    )
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "Echo: "})
    return fakes


@pytest.fixture
async def oai(
    upstreams: Any, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{live_echo.url}/v1", api_key=chat_key[1], max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def claude(
    upstreams: Any, chat_key: tuple[ClientAPIKey, str], live_echo: Any
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=live_echo.url, api_key=chat_key[1], max_retries=0, timeout=10
    ) as client:
        yield client


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]
