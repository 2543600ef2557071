"""Every new upstream connection is checked after DNS: rebinding to a blocked address is refused.

The resolver is the one seam replaced (``upstream_connections.resolve_host``),
so that a name can answer 127.0.0.1 (a fake upstream) first and a blocked
address next, as a rebinding attacker's DNS server does. The blocked address
is 127.0.0.2, blocked by ``ECHO_UPSTREAM_BLOCK``, with a listener on it that
proves no connection ever reached it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import aiohappyeyeballs
import pytest

from providers.errors import ProviderUnavailableError
from providers.plugins.openai_provider import OpenAIProvider
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest
from providers.upstream import connections as upstream_connections

KEY = "sk-rebind-0000000000000"
BLOCKED = "127.0.0.2"
REQUEST = ChatRequest(messages=[ChatMessage(role="user", content="hi")])


class SwitchableResolver:
    """Answers every lookup with ANSWERS[0] until told otherwise; records each lookup."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return list(self.answers)


class OneShotOpenAI(OpenAIProvider):
    """Opens a new connection for every request, as when keep-alive has run out."""

    def default_headers(self) -> dict[str, str]:
        return {**super().default_headers(), "Connection": "close"}


@pytest.fixture
def resolver(monkeypatch) -> SwitchableResolver:
    switchable = SwitchableResolver("127.0.0.1")
    monkeypatch.setattr(upstream_connections, "resolve_host", switchable)
    return switchable


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def blocked_listener(upstream: FakeOpenAI, settings) -> Iterator[socket.socket]:
    """A socket on the blocked address, same port as UPSTREAM: a connection there would queue."""
    settings.ECHO_UPSTREAM_BLOCK = [f"{BLOCKED}/32"]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((BLOCKED, upstream.port))
    listener.listen(8)
    listener.setblocking(False)
    yield listener
    listener.close()


def connections_to(listener: socket.socket) -> int:
    """Return how many connections reached LISTENER (the kernel accepts them without us)."""
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def dial_spy(monkeypatch) -> list[str]:
    """Return the list of addresses the upstream pool dials from now on (aiohttp's dialer)."""
    dialled: list[str] = []
    real_start = aiohappyeyeballs.start_connection

    async def spy(addr_infos: Any, *args: Any, **kwargs: Any):
        dialled.extend(info[4][0] for info in addr_infos)
        return await real_start(addr_infos, *args, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", spy)
    return dialled


def name_url(upstream: FakeOpenAI) -> str:
    return f"http://rebind.test:{upstream.port}/v1"


async def test_a_name_rebound_to_a_blocked_address_is_refused_on_the_next_connection(
    resolver, upstream, blocked_listener
) -> None:
    provider = OneShotOpenAI({"api_key": KEY, "base_url": name_url(upstream)}, name="rebound")
    await provider.initialize()  # resolves to 127.0.0.1: allowed
    try:
        answer = await provider.chat_completion(REQUEST)
        assert answer.content
        # The host name went to the upstream as it was, not the address connected to.
        assert upstream.requests[-1].headers["Host"] == f"rebind.test:{upstream.port}"

        resolver.answers = [BLOCKED]
        with pytest.raises(ProviderUnavailableError) as refused:
            await provider.chat_completion(REQUEST)
    finally:
        await provider.shutdown()

    message = refused.value.message
    assert "Echo refused to connect to OpenAI" in message
    assert "'rebind.test' resolves to" in message and f"{BLOCKED} is in a blocked range" in message
    assert refused.value.provider == "rebound"
    assert len(upstream.requests_to("/v1/chat/completions")) == 1
    assert connections_to(blocked_listener) == 0


async def test_one_blocked_address_among_good_ones_refuses_the_connection(
    resolver, upstream, blocked_listener
) -> None:
    # A resolver may answer several addresses; the socket layer could pick any.
    resolver.answers = ["127.0.0.1", BLOCKED]
    provider = OpenAIProvider({"api_key": KEY, "base_url": name_url(upstream)}, name="mixed")
    try:
        with pytest.raises(ProviderUnavailableError, match="blocked range"):
            await provider.chat_completion(REQUEST)
    finally:
        await provider.shutdown()
    assert upstream.requests == []
    assert connections_to(blocked_listener) == 0


@pytest.mark.parametrize(
    "answer", ["169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "0.0.0.0"]
)
async def test_a_metadata_address_in_any_spelling_is_never_dialled(
    resolver, upstream, monkeypatch, answer
) -> None:
    dialled = dial_spy(monkeypatch)
    resolver.answers = [answer]
    provider = OpenAIProvider({"api_key": KEY, "base_url": name_url(upstream)}, name="meta")
    try:
        with pytest.raises(ProviderUnavailableError, match="blocked range"):
            await provider.chat_completion(REQUEST)
        health = await provider.health_check()
        assert health.available is False and "refused to connect" in health.error
        assert dialled == []
        # The spy sees a dial when there is one: the same provider, answered well.
        resolver.answers = ["127.0.0.1"]
        assert (await provider.chat_completion(REQUEST)).content
    finally:
        await provider.shutdown()
    assert dialled == ["127.0.0.1"]


@pytest.mark.parametrize("literal", ["169.254.169.254", "[::ffff:169.254.169.254]", "0.0.0.0"])
async def test_a_blocked_address_literal_is_never_dialled(
    resolver, upstream, monkeypatch, literal
) -> None:
    # An address literal skips the resolver: the pool checks it when it opens a connection.
    dialled = dial_spy(monkeypatch)
    provider = OpenAIProvider({"api_key": KEY, "base_url": name_url(upstream)}, name="lit")
    await provider.initialize()
    try:
        # A row saved before the rule existed: the connection still refuses it.
        provider.config["base_url"] = f"http://{literal}:{upstream.port}/v1"
        provider._session = None  # the session holds the base_url it was made with
        with pytest.raises(ProviderUnavailableError, match="blocked range") as refused:
            await provider.chat_completion(REQUEST)
    finally:
        await provider.shutdown()
    assert "Echo refused to connect to OpenAI" in refused.value.message
    assert dialled == []
    assert resolver.lookups == ["rebind.test"]  # the start-up check only


async def test_pooled_connections_are_checked_once_not_per_request(resolver, upstream) -> None:
    provider = OpenAIProvider({"api_key": KEY, "base_url": name_url(upstream)}, name="pooled")
    try:
        for _ in range(3):
            await provider.chat_completion(REQUEST)
    finally:
        await provider.shutdown()
    assert resolver.lookups == ["rebind.test"]
    assert len(upstream.requests_to("/v1/chat/completions")) == 3


async def test_a_metadata_host_name_is_refused_before_any_lookup(resolver, settings) -> None:
    provider = OpenAIProvider({"api_key": KEY, "base_url": "http://127.0.0.1:9/v1"}, name="m")
    await provider.initialize()
    try:
        # A row saved before the name rule existed: the connection still refuses it.
        provider.config["base_url"] = "http://metadata.google.internal/v1"
        provider._session = None  # the session holds the base_url it was made with
        with pytest.raises(ProviderUnavailableError, match="cloud metadata service"):
            await provider.chat_completion(REQUEST)
    finally:
        await provider.shutdown()
    assert resolver.lookups == ["127.0.0.1"]  # the start-up check only


# --- through the API: a clear JSON error, never a 500 ----------------------------


def test_chat_through_a_rebound_name_is_a_503_json_error(
    resolver, upstream, blocked_listener, echo_config, chat_key
) -> None:
    from django.test import Client

    from providers.config.services import provider_config_create
    from providers.runtime import process as runtime

    row = provider_config_create(
        name="rebound",
        plugin="openai",
        settings={"base_url": name_url(upstream), "max_retries": 0},
        secrets={"api_key": KEY},
    )
    # Starts while the name resolves to 127.0.0.1 ...
    error = runtime.run_in_serving_loop(runtime.apply_config_state, row.name, row.to_spec(), "")
    assert error is None, error
    # ... and the first connection meets the rebound answer.
    resolver.answers = [BLOCKED]
    client = Client(headers={"Authorization": f"Bearer {chat_key[1]}"})
    response = client.post(
        "/chat",
        data=json.dumps({"prompt": "hi", "provider": "rebound"}),
        content_type="application/json",
    )

    assert response.status_code == 503, response.content
    error_body = response.json()["error"]
    assert error_body["type"] == "unavailable"
    assert "refused to connect" in error_body["message"]
    assert "blocked range" in error_body["message"]
    assert upstream.requests == []
    assert connections_to(blocked_listener) == 0
