"""Only the upstream's failures count against a provider; a request that trips a plugin's bug does not.

A plugin's exception that is no ``ProviderError`` (``TypeError``,
``KeyError``, ...) was turned into a retryable "unavailable" error: the
request was retried, failed over to other providers, and every attempt
counted toward the circuit breaker, so a client that could make a plugin
raise could pause the provider for everyone. It is now a ``PluginError``:
one call, no failover, the breaker untouched, the traceback in the log and
not in the answer. Timeouts and lost connections a plugin leaves unwrapped
are still upstream failures, retried and counted as before.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from django.test import Client

from providers.config.services import provider_config_create
from providers.errors import (
    PluginError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.runtime.circuit_breaker import HALF_OPEN
from providers.runtime.manager import ModelManager
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.types import ChatMessage, ChatRequest, ChatResponse, StreamingChunk
from tests.fake_time import FakeClock, RecordedSleep

#: What the plugin's exception says: it must reach the log, never the client.
DETAIL = "internal detail: choices[0] of sk-not-for-clients"


class RaisingProvider(EchoProvider):
    """Raises ``make_error()`` on every call; a stream first yields ``chunks_before`` chunks."""

    calls = 0
    make_error: Callable[[], BaseException] = staticmethod(lambda: TypeError(DETAIL))
    chunks_before = 0

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        type(self).calls += 1
        raise type(self).make_error()

    async def chat_completion_stream(self, request: ChatRequest):
        type(self).calls += 1
        for _ in range(type(self).chunks_before):
            yield StreamingChunk(content="partial ")
        raise type(self).make_error()


class BackupEcho(EchoProvider):
    """An echo that counts its calls: a failover would show here."""

    calls = 0

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        type(self).calls += 1
        return await super().chat_completion(request)

    async def chat_completion_stream(self, request: ChatRequest):
        type(self).calls += 1
        async for chunk in super().chat_completion_stream(request):
            yield chunk


def raising(error: Callable[[], BaseException], chunks_before: int = 0) -> None:
    RaisingProvider.calls = 0
    RaisingProvider.make_error = staticmethod(error)
    RaisingProvider.chunks_before = chunks_before


@pytest.fixture
async def manager() -> ModelManager:
    """A manager over ``buggy`` (falling back to ``backup``), with default retry settings."""
    BackupEcho.calls = 0
    raising(lambda: TypeError(DETAIL))
    registry = ProviderRegistry()
    registry.register(RaisingProvider, "raising")
    registry.register(BackupEcho, "backup")
    await registry.apply(ProviderSpec("backup", "backup", {}, is_default=True))
    await registry.apply(ProviderSpec("buggy", "raising", {}, fallbacks=("backup",)))
    return ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(3), clock=FakeClock())


def ask() -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content="hi")])


def assert_untouched(manager: ModelManager, name: str = "buggy") -> None:
    """Assert NAME's breaker is closed with no failure counted, and nothing was retried."""
    state = manager.provider_state(name)
    assert state["state"] == "closed"
    assert state["consecutive_failures"] == 0 and state["last_failure"] is None
    assert state["counters"]["failures"] == 0 and state["counters"]["retries"] == 0
    assert manager._sleep.waits == []
    assert BackupEcho.calls == 0, "a plugin's bug must not fail over"


async def collect(manager: ModelManager, request: ChatRequest) -> list[StreamingChunk]:
    return [chunk async for chunk in manager.chat_completion_stream(request, "buggy")]


# --- a plugin's bug ------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [lambda: TypeError(DETAIL), lambda: KeyError(DETAIL), lambda: ValueError(DETAIL)],
    ids=["TypeError", "KeyError", "ValueError"],
)
async def test_a_plugin_bug_is_called_once_never_fails_over_and_never_counts(
    manager: ModelManager, error, caplog
) -> None:
    raising(error)
    threshold = manager.provider_state("buggy")["failure_threshold"]
    assert manager.provider_state("buggy")["max_retries"] > 0, "retries would be allowed"
    with caplog.at_level(logging.ERROR, logger="providers.runtime.manager"):
        for sent in range(1, threshold * 2 + 1):
            with pytest.raises(PluginError) as caught:
                await manager.chat_completion(ask(), "buggy")
            assert RaisingProvider.calls == sent, "one call per request: no retry"
    assert caught.value.http_status == 502 and caught.value.kind == "plugin_error"
    assert not caught.value.retryable and caught.value.provider == "buggy"
    assert DETAIL not in caught.value.message and "sk-not" not in caught.value.message
    assert_untouched(manager)
    # The traceback is for the operator: in the log, with the exception itself.
    assert any(r.exc_info and DETAIL in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize("chunks_before", [0, 2], ids=["before-first-chunk", "mid-stream"])
async def test_a_plugin_bug_in_a_stream_never_fails_over_and_never_counts(
    manager: ModelManager, chunks_before: int
) -> None:
    raising(lambda: KeyError(DETAIL), chunks_before)
    threshold = manager.provider_state("buggy")["failure_threshold"]
    for sent in range(1, threshold * 2 + 1):
        received: list[StreamingChunk] = []
        with pytest.raises(PluginError) as caught:
            async for chunk in manager.chat_completion_stream(ask(), "buggy"):
                received.append(chunk)
        assert len(received) == chunks_before, "the partial answer stands"
        assert RaisingProvider.calls == sent
    assert DETAIL not in caught.value.message
    assert_untouched(manager)


async def test_after_many_plugin_bugs_the_provider_still_gets_traffic_and_retries_upstream_failures(
    manager: ModelManager,
) -> None:
    raising(lambda: TypeError(DETAIL))
    for _ in range(10):
        with pytest.raises(PluginError):
            await manager.chat_completion(ask(), "buggy")
    # The breaker stayed closed: the next caller's request reaches the plugin, and
    # a genuine upstream failure is retried and failed over as it always was.
    raising(lambda: ProviderUnavailableError("upstream answered 503", status_code=503))
    response = await manager.chat_completion(ask(), "buggy")
    assert response.provider == "backup"
    assert RaisingProvider.calls == 3, "an upstream failure is retried as before"


async def test_a_probe_that_trips_a_plugin_bug_is_given_back(manager: ModelManager) -> None:
    breaker = manager.breaker("buggy")
    for _ in range(breaker.failure_threshold):
        breaker.record_failure("unavailable")
    manager._clock.now += breaker.cooldown_seconds + 1
    assert breaker.state == HALF_OPEN
    with pytest.raises(PluginError):
        await manager.chat_completion(ask(), "buggy")
    assert RaisingProvider.calls == 1
    assert breaker.state == HALF_OPEN and not breaker.probe_in_flight
    assert breaker.consecutive_failures == breaker.failure_threshold, "not one more"


# --- upstream failures a plugin leaves unwrapped still count --------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (lambda: httpx.ConnectError("connection refused"), ProviderUnavailableError),
        (lambda: ConnectionResetError("reset by peer"), ProviderUnavailableError),
        (lambda: httpx.ReadTimeout("read timed out"), ProviderTimeoutError),
        (lambda: TimeoutError(), ProviderTimeoutError),
    ],
    ids=["httpx-connect", "connection-reset", "httpx-timeout", "timeout"],
)
async def test_a_transport_failure_a_plugin_did_not_wrap_is_retried_counted_and_failed_over(
    manager: ModelManager, error, kind: type[ProviderError]
) -> None:
    raising(error)
    response = await manager.chat_completion(ask(), "buggy")
    assert response.provider == "backup" and BackupEcho.calls == 1
    assert RaisingProvider.calls == 3, "the first call and max_retries retries"
    state = manager.provider_state("buggy")
    assert state["consecutive_failures"] == 3 and state["last_failure"] == kind.kind
    assert len(manager._sleep.waits) == 2


async def test_a_transport_failure_mid_stream_still_counts(manager: ModelManager) -> None:
    raising(lambda: ConnectionResetError("reset by peer"), chunks_before=1)
    with pytest.raises(ProviderUnavailableError):
        await collect(manager, ask())
    state = manager.provider_state("buggy")
    assert state["consecutive_failures"] == 1 and state["counters"]["failures"] == 1
    assert BackupEcho.calls == 0, "a stream never fails over after its first chunk"


# --- through the API -----------------------------------------------------------------


@pytest.fixture
def buggy_live(echo_config, chat_key: tuple[Any, str]) -> Client:
    """Make ``buggy`` (falling back to ``echo``) live in the process; return a keyed client."""
    raising(lambda: KeyError(DETAIL))
    runtime.registry.register(RaisingProvider, "raising")
    buggy = provider_config_create(name="buggy", plugin="raising", fallbacks=["echo"])
    for row in (echo_config, buggy):
        error = runtime.run_in_serving_loop(runtime.apply_config_state, row.name, row.to_spec(), "")
        assert error is None, error
    return Client(headers={"Authorization": f"Bearer {chat_key[1]}"})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat", {"prompt": "hi", "provider": "buggy"}),
        ("/chat", {"prompt": "hi", "provider": "buggy", "stream": True}),
        (
            "/v1/chat/completions",
            {"model": "buggy/echo-1", "messages": [{"role": "user", "content": "hi"}]},
        ),
        (
            "/v1/messages",
            {
                "model": "buggy/echo-1",
                "max_tokens": 8,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
    ],
)
def test_a_plugin_bug_is_a_502_that_names_no_detail_and_leaves_the_breaker_closed(
    buggy_live: Client, path: str, body: dict[str, Any]
) -> None:
    threshold = runtime.manager.provider_state("buggy")["failure_threshold"]
    for _ in range(threshold * 2):
        response = buggy_live.post(path, json.dumps(body), content_type="application/json")
        assert response.status_code == 502
        assert DETAIL not in response.content.decode()
        assert "failed unexpectedly (KeyError)" in response.content.decode()
    assert RaisingProvider.calls == threshold * 2
    state = runtime.manager.provider_state("buggy")
    assert state["state"] == "closed" and state["consecutive_failures"] == 0
    assert runtime.manager.counters("echo").attempts == 0, "no failover to echo"
