"""Per-key rate limits (``plugins_api.access.key_limits``) and their enforcement on every chat endpoint.

The limiter's semantics run on both stores, in-process and the real Redis
(each test its own prefix), with an injected clock: the GCRA window, tokens
charged after an answer and checked before the next, concurrency slots and
their leases, atomicity under 50 concurrent callers, one key never touching
another, the in-process store's bound on tracked keys, and the Redis-down
policy. The endpoint tests drive ``/chat``, ``/v1/chat/completions``,
``/v1/messages`` and the websocket in process, with an in-process limiter.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.core.exceptions import ValidationError
from django.test import AsyncClient

from plugins_api.access import key_limits
from plugins_api.access.client_keys import averify_key, forget_cached_keys
from plugins_api.access.key_changes import client_key_issue, client_key_set_limits
from plugins_api.access.key_limit_headers import duration
from plugins_api.access.key_limits import (
    Admission,
    KeyLimiter,
    KeyLimits,
    LimitRefusal,
    LocalLimits,
    set_key_limiter,
)
from plugins_api.edge.request_usage import RequestUsage
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.types import ChatRequest, StreamingChunk
from tests.plugins_api.chat_bodies import MINIMAL_CALLS
from tests.services import require_redis


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "redis"])
def limiter(request: pytest.FixtureRequest) -> Iterator[tuple[KeyLimiter, Clock]]:
    """A limiter on each store, with an injected clock (Redis: a prefix of its own)."""
    clock = Clock()
    url = require_redis() if request.param == "redis" else ""
    yield KeyLimiter(redis_url=url, prefix=f"echo-test-{uuid.uuid4().hex[:8]}", clock=clock), clock


def admitted(found: Admission | LimitRefusal | None) -> Admission:
    assert isinstance(found, Admission), found
    return found


# --- the limiter -----------------------------------------------------------------


async def test_an_unlimited_key_costs_nothing(limiter: Any) -> None:
    lim, _ = limiter
    lim.redis = None if lim.redis is None else _Exploding()  # any store call would raise
    assert await lim.admit(1, KeyLimits()) is None


class _Exploding:
    async def admit(self, *args: Any) -> Any:
        raise AssertionError("an unlimited key must not reach a store")


async def test_requests_per_minute_window(limiter: Any) -> None:
    lim, clock = limiter
    limits = KeyLimits(requests_per_minute=5)
    remaining = []
    for _ in range(5):
        admission = admitted(await lim.admit(7, limits))
        remaining.append(admission.state.requests_remaining)
        admission.finish()
        clock.now += 0.5
    assert remaining == [4, 3, 2, 1, 0]
    refused = await lim.admit(7, limits)
    assert isinstance(refused, LimitRefusal) and refused.limit == "requests"
    # GCRA: one request back every 60/5 = 12 s after a full burst at ~t0.
    assert refused.retry_after == pytest.approx(12 - 2.5, abs=0.01)
    assert refused.retry_after_seconds == 10
    assert "5 requests per minute" in refused.message
    clock.now += 9.4
    assert isinstance(await lim.admit(7, limits), LimitRefusal)
    clock.now += 0.2
    admitted(await lim.admit(7, limits))
    assert isinstance(await lim.admit(7, limits), LimitRefusal)
    clock.now += 60
    for _ in range(5):
        admitted(await lim.admit(7, limits))
    await lim.drain()


async def test_tokens_are_charged_after_the_answer_and_checked_before_the_next(
    limiter: Any,
) -> None:
    lim, clock = limiter
    limits = KeyLimits(tokens_per_minute=100)
    first = admitted(await lim.admit(8, limits))
    second = admitted(await lim.admit(8, limits))  # nothing charged yet: admitted
    first.finish(70)
    second.finish(50)
    await lim.drain()
    refused = await lim.admit(8, limits)
    assert isinstance(refused, LimitRefusal) and refused.limit == "tokens"
    # 120 used of 100, decaying at 100/60 per second: under the limit after 20 tokens' time.
    assert refused.retry_after == pytest.approx(12.6, abs=0.05)
    clock.now += 12.7
    third = admitted(await lim.admit(8, limits))
    assert 0 <= third.state.tokens_remaining <= 1
    third.finish(0)
    await lim.drain()


async def test_concurrency_slots_are_given_back_and_leases_expire(limiter: Any) -> None:
    lim, clock = limiter
    limits = KeyLimits(max_concurrent=2)
    a = admitted(await lim.admit(9, limits))
    admitted(await lim.admit(9, limits))  # never finished: a worker that died
    refused = await lim.admit(9, limits)
    assert isinstance(refused, LimitRefusal) and refused.limit == "concurrency"
    a.finish()
    a.finish()  # twice gives back one slot
    await lim.drain()
    c = admitted(await lim.admit(9, limits))
    assert isinstance(await lim.admit(9, limits), LimitRefusal)
    clock.now += key_limits.LEASE_SECONDS + 1  # the dead one's lease (and c's) expire
    admitted(await lim.admit(9, limits))
    c.finish()
    await lim.drain()


async def test_one_keys_limits_never_touch_another(limiter: Any) -> None:
    lim, _ = limiter
    tight = KeyLimits(requests_per_minute=1, tokens_per_minute=1, max_concurrent=1)
    admitted(await lim.admit(10, tight)).finish(1000)
    await lim.drain()
    assert isinstance(await lim.admit(10, tight), LimitRefusal)
    for _ in range(3):
        admitted(await lim.admit(11, tight.__class__(requests_per_minute=10))).finish()
    assert await lim.admit(12, KeyLimits()) is None
    await lim.drain()


async def test_atomic_under_50_concurrent_callers(limiter: Any) -> None:
    lim, _ = limiter
    limits = KeyLimits(requests_per_minute=20, max_concurrent=30)
    results = await asyncio.gather(*(lim.admit(13, limits) for _ in range(50)))
    assert sum(isinstance(r, Admission) for r in results) == 20
    concurrency = KeyLimits(max_concurrent=7)
    held = await asyncio.gather(*(lim.admit(14, concurrency) for _ in range(50)))
    assert sum(isinstance(r, Admission) for r in held) == 7
    for found in held:
        if isinstance(found, Admission):
            found.finish()
    await lim.drain()


async def test_redis_limits_are_shared_by_two_limiters() -> None:
    """Two workers' limiters on one Redis count one window per key."""
    url, prefix, clock = require_redis(), f"echo-test-{uuid.uuid4().hex[:8]}", Clock()
    workers = [KeyLimiter(redis_url=url, prefix=prefix, clock=clock) for _ in range(2)]
    limits = KeyLimits(requests_per_minute=5)
    outcomes = [await workers[i % 2].admit(15, limits) for i in range(6)]
    assert [isinstance(o, Admission) for o in outcomes] == [True] * 5 + [False]


async def test_redis_down_follows_the_policy() -> None:
    dead = "redis://127.0.0.1:1/0"  # nothing listens there
    limits = KeyLimits(requests_per_minute=2)
    local = KeyLimiter(redis_url=dead, when_redis_down="local", clock=Clock())
    outcomes = [await local.admit(16, limits) for _ in range(3)]
    assert [type(o) for o in outcomes] == [Admission, Admission, LimitRefusal]
    assert not outcomes[0].shared  # counted in this worker's memory
    refuse = KeyLimiter(redis_url=dead, when_redis_down="refuse", clock=Clock())
    refused = await refuse.admit(16, limits)
    assert isinstance(refused, LimitRefusal)
    assert (refused.status, refused.limit) == (503, "unavailable")
    assert "127.0.0.1" not in refused.message  # no address (nor any password) leaks
    with pytest.raises(ValueError):
        KeyLimiter(when_redis_down="ignore")


def test_in_process_counters_track_a_bounded_number_of_keys() -> None:
    store = LocalLimits(max_keys=100)
    limits = KeyLimits(requests_per_minute=1)
    for key_id in range(10_000):
        store.admit(key_id, limits, "lease", 0.0)
    assert len(store) == 100
    # The newest keys are kept: key 9999 is still counted.
    assert isinstance(store.admit(9_999, limits, "lease", 1.0), LimitRefusal)


def test_reset_durations_read_as_openai_writes_them() -> None:
    assert [duration(s) for s in (0.25, 12, 12.5, 60, 61.25)] == [
        "250ms",
        "12s",
        "12.5s",
        "1m0s",
        "1m1.25s",
    ]


def test_request_usage_finishes_its_admission_once_with_the_answers_tokens() -> None:
    charged: list[int] = []

    class Recording:
        def finish(self, admission: Any, tokens: int) -> None:
            charged.append(tokens)

    admission = Admission(Recording(), 1, KeyLimits(tokens_per_minute=10), "l", None, False)  # type: ignore[arg-type]
    usage = RequestUsage(client="key:x", endpoint="/chat", stream=True, admission=admission)
    usage.stream_ended(first=None, final=StreamingChunk(is_final=True, usage=_usage(3, 4)))
    usage.release()
    assert charged == [7]


def _usage(prompt: int, completion: int) -> Any:
    from providers.types import Usage

    return Usage(prompt, completion)


# --- enforcement on the endpoints ------------------------------------------------


@pytest.fixture
def local_limiter() -> Iterator[KeyLimiter]:
    limiter = KeyLimiter()
    set_key_limiter(limiter)
    yield limiter
    set_key_limiter(None)


@pytest.fixture
def limited_keys(db: Any, echo_config: Any) -> tuple[str, str]:
    """(a key limited to 2 requests a minute and 1 at a time, an unlimited key); echo live."""
    error = runtime.run_in_serving_loop(
        runtime.apply_config_state, echo_config.name, echo_config.to_spec(), ""
    )
    assert error is None, error
    forget_cached_keys()
    _, tight = client_key_issue(
        name="tight", scope="chat", limits=KeyLimits(requests_per_minute=2, max_concurrent=1)
    )
    _, free = client_key_issue(name="free", scope="chat")
    return tight, free


CALLS = MINIMAL_CALLS


async def _post(client: AsyncClient, path: str, key: str, stream: bool = False) -> Any:
    body = {**CALLS[path], "stream": stream}
    return await client.post(
        path, json.dumps(body), content_type="application/json", headers={"x-api-key": key}
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", list(CALLS))
async def test_every_endpoint_answers_429_past_the_limit(
    path: str, limited_keys: tuple[str, str], local_limiter: KeyLimiter
) -> None:
    tight, free = limited_keys
    client = AsyncClient()
    first = await _post(client, path, tight)
    assert first.status_code == 200
    second = await _post(client, path, tight, stream=True)
    assert second.status_code == 200
    b"".join([part async for part in second.streaming_content])
    refused = await _post(client, path, tight)
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert int(refused["retry-after-ms"]) > 0
    body = refused.json()
    if path == "/chat":
        assert body["error"]["type"] == "rate_limited" and body["error"]["retry_after"] >= 1
        assert refused["x-ratelimit-limit-requests"] == "2"
    elif path == "/v1/chat/completions":
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert body["error"]["type"] == "requests"
        assert refused["x-ratelimit-remaining-requests"] == "0"
        assert first["x-ratelimit-remaining-requests"] == "1"
    else:
        assert body == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": body["error"]["message"]},
        }
        assert refused["anthropic-ratelimit-requests-limit"] == "2"
        assert refused["anthropic-ratelimit-requests-reset"].endswith("Z")
    # The other key is untouched, and carries no limit headers.
    other = await _post(client, path, free)
    assert other.status_code == 200
    assert not any(
        name.lower().startswith(("x-ratelimit", "anthropic-ratelimit")) for name in other.headers
    )


async def _held(self: EchoProvider, request: ChatRequest) -> Any:
    """An answer that never comes: the call holds its slot until it is cancelled."""
    await asyncio.Event().wait()


@pytest.mark.django_db(transaction=True)
async def test_the_concurrency_slot_is_given_back_when_the_client_leaves(
    limited_keys: tuple[str, str], local_limiter: KeyLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    tight, _ = limited_keys
    monkeypatch.setattr(EchoProvider, "chat_completion", _held)
    client = AsyncClient()
    waiting = asyncio.create_task(_post(client, "/chat", tight))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if any(s.leases for s in local_limiter.local._keys.values()):
            break
    busy = await _post(client, "/chat", tight)
    assert busy.status_code == 429 and busy.json()["error"]["limit"] == "concurrency"
    waiting.cancel()  # the client went away: the view is cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not any(s.leases for s in local_limiter.local._keys.values())


@pytest.mark.django_db(transaction=True)
async def test_changed_limits_apply_at_once_in_this_process(
    limited_keys: tuple[str, str], local_limiter: KeyLimiter
) -> None:
    tight, _ = limited_keys
    before = await averify_key(tight)
    assert before is not None and before.limits.requests_per_minute == 2
    from asgiref.sync import sync_to_async

    await sync_to_async(client_key_set_limits)(name="tight", limits=KeyLimits())
    after = await averify_key(tight)
    assert after is not None and not after.limits.any


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_refuses_a_question_over_the_limit_and_stays_open(
    limited_keys: tuple[str, str], local_limiter: KeyLimiter
) -> None:
    from echo_site.asgi import application

    tight, _ = limited_keys
    socket = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"authorization", f"Bearer {tight}".encode())]
    )
    connected, _ = await socket.connect(timeout=10)
    assert connected
    assert (await socket.receive_json_from(timeout=10))["type"] == "providers"
    for _ in range(2):
        await socket.send_json_to({"type": "chat", "message": "hi"})
        while (await socket.receive_json_from(timeout=5))["type"] != "done":
            pass
    await socket.send_json_to({"type": "chat", "message": "hi"})
    refused = await socket.receive_json_from(timeout=5)
    assert refused["type"] == "error"
    assert refused["error"]["type"] == "rate_limited"
    assert refused["retry_after"] >= 1 and refused["limit"] == "requests"
    await socket.send_json_to({"type": "providers"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "providers"  # still open
    await socket.disconnect()


def test_issue_api_key_takes_limits_and_refuses_nonsense(db: Any) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from plugins_api.access.client_keys import key_limits_of
    from plugins_api.models import ClientAPIKey

    call_command("issue_api_key", "limited", "--rpm", "5", "--tpm", "1000", "--max-concurrent", "2")
    row = ClientAPIKey.objects.get(name="limited")
    assert key_limits_of(row) == KeyLimits(5, 1000, 2)
    for bad in ("0", "-1", "1e9", "99999999999", "five"):
        with pytest.raises(CommandError):
            call_command("issue_api_key", f"bad{bad}", "--rpm", bad)
    row.requests_per_minute = 0  # written past the validators: read as the strictest limit
    assert key_limits_of(row).requests_per_minute == 1
    with pytest.raises(ValidationError) as refused:
        client_key_issue(name="x", scope="chat", limits=KeyLimits(max_concurrent=0))
    assert list(refused.value.message_dict) == ["max_concurrent_requests"]
    assert not ClientAPIKey.objects.filter(name="x").exists()
