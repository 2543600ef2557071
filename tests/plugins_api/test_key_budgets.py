"""Per-key budgets (``plugins_api.access.key_budgets``) and their enforcement on every chat endpoint.

The done-when test of issue 17: a key with a tiny budget is accepted, then
refused with 429 ``budget_exceeded`` once its recorded cost passes the
budget (in the worker that charged it, and in a fresh one reading only the
database), and accepted again in the next period (an injected clock). Then:
the refusal in each API's shape on ``/chat``, ``/v1/chat/completions``,
``/v1/messages``, ``/v1/embeddings`` and the websocket; the OpenAI and
Anthropic SDKs raising ``RateLimitError`` after exactly one HTTP call; two
ledgers sharing one budget through the real Redis; a key without a budget
never refused and never reaching a store; and hostile input: a bounded
memory, costs that are not money, Redis and the database away.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from django.utils import timezone

from plugins_api.access import key_budgets
from plugins_api.access.client_keys import ClientIdentity, alookup_key, forget_cached_keys
from plugins_api.access.key_budgets import (
    CACHE_SECONDS,
    MAX_CHARGE_UNITS,
    RECORD_LAG_SECONDS,
    BudgetRefusal,
    KeyBudgetLedger,
    LocalBudgets,
    cost_units,
    set_budget_ledger,
)
from plugins_api.access.key_changes import client_key_issue, client_key_update
from plugins_api.access.key_limits import KeyLimiter, set_key_limiter
from plugins_api.access.key_spend import key_client_label, period_bounds
from plugins_api.edge.request_usage import RequestUsage
from plugins_api.models import ClientAPIKey
from providers.models import UsageRecord
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.types import ChatResponse, Usage
from tests.plugins_api.chat_bodies import MINIMAL_CALLS
from tests.services import require_redis

#: What the priced echo model costs per token, in and out.
PRICE = Decimal("0.001")
TINY = Decimal("0.000001")


class Clock:
    """A wall clock that stands still until told to move."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or timezone.now()

    def __call__(self) -> datetime:
        return self.now


def identity(key_id: int = 1, budget: Decimal | None = TINY, period: str = "day") -> ClientIdentity:
    return ClientIdentity(
        key_id=key_id, name=f"k{key_id}", scope="chat", budget_usd=budget, budget_period=period
    )


class Queries:
    """The recorded spend, as a database would give it, counting the questions asked."""

    def __init__(self, amount: Decimal = Decimal(0), *, fail: bool = False) -> None:
        self.amount = amount
        self.fail = fail
        self.calls = 0

    async def between(self, name: str, start: datetime, end: datetime) -> Decimal:
        return await self.since(name, start)

    async def since(self, name: str, start: datetime) -> Decimal:
        self.calls += 1
        if self.fail:
            raise ConnectionError("database at 10.0.0.7:5432 is away")
        return self.amount


def ledger_with(queries: Queries, **kwargs: Any) -> KeyBudgetLedger:
    return KeyBudgetLedger(spent_between=queries.between, spent_since=queries.since, **kwargs)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """key_budgets' clock, standing at now, at least a minute before the UTC day ends.

    The usage rows a test writes carry the real time: they must fall in the
    day the clock stands in.
    """
    _, end = period_bounds("day", timezone.now())
    left = (end - timezone.now()).total_seconds()
    if left < 60:
        time.sleep(left + 1)
    fake = Clock(timezone.now())
    monkeypatch.setattr(key_budgets, "clock", fake)
    return fake


# --- the ledger ---------------------------------------------------------------------


def test_costs_that_are_not_money_never_change_the_count() -> None:
    for bad in (
        None,
        -1,
        Decimal("-0.5"),
        Decimal("NaN"),
        Decimal("sNaN"),
        float("nan"),
        float("inf"),
        Decimal("Infinity"),
        "1",
        True,
        [1],
        {"usd": 1},
        0,
        Decimal(0),
    ):
        assert cost_units(bad) == 0, bad
    assert cost_units(Decimal("0.00000001")) == 1
    assert cost_units(Decimal("10") ** 30) == MAX_CHARGE_UNITS  # one answer cannot overflow a store
    store = LocalBudgets()
    ledger = KeyBudgetLedger()
    ledger.local = store
    key = identity(3, budget=Decimal("1"))
    ledger.charge(key, Decimal("0.25"))
    entry = store._keys[3]
    for bad in (None, -5, Decimal("NaN"), float("nan"), float("-inf"), "0.5", object()):
        ledger.charge(key, bad)
    assert entry.total() == 25_000_000  # $0.25 in 10^-8 units, nothing else


async def test_a_key_without_budget_is_never_refused_and_reaches_no_store() -> None:
    queries = Queries(amount=Decimal("1e9"))
    ledger = ledger_with(queries, redis_url="redis://127.0.0.1:1/0")

    class Exploding:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"a key without budget reached the store ({name})")

    ledger.redis = Exploding()  # type: ignore[assignment]
    ledger.local = Exploding()  # type: ignore[assignment]
    free = identity(4, budget=None)
    for _ in range(50):
        assert await ledger.check(free) is None
        ledger.charge(free, Decimal("1000"))
    assert await ledger.check(None) is None
    assert queries.calls == 0
    assert not ledger._tasks


async def test_in_process_spend_reads_the_database_once_per_cache_period(clock: Clock) -> None:
    queries = Queries()
    ledger = ledger_with(queries)
    key = identity(5, budget=Decimal("0.01"))
    for _ in range(100):
        assert await ledger.check(key) is None
    assert queries.calls == 1  # never a query per request
    clock.now += timedelta(seconds=CACHE_SECONDS + 1)
    assert await ledger.check(key) is None
    assert queries.calls == 2
    ledger.charge(key, Decimal("0.01"))
    refused = await ledger.check(key)
    assert isinstance(refused, BudgetRefusal) and refused.status == 429
    start, end = period_bounds("day", clock.now)
    assert refused.resets_at == end
    assert refused.retry_after_seconds == max(1, int((end - clock.now).total_seconds() + 0.999))
    assert "$0.01 per day (UTC)" in refused.message and refused.resets_at_text in refused.message
    assert refused.headers()["x-should-retry"] == "false"
    clock.now = end + timedelta(seconds=1)  # the next day: a new period, read afresh
    assert await ledger.check(key) is None
    assert queries.calls == 3


async def test_the_database_away_is_503_unless_an_earlier_reading_stands(clock: Clock) -> None:
    queries = Queries(fail=True)
    ledger = ledger_with(queries)
    key = identity(6, budget=Decimal("1"))
    refused = await ledger.check(key)
    assert isinstance(refused, BudgetRefusal)
    assert (refused.status, refused.kind) == (503, "limits_unavailable")
    assert "10.0.0.7" not in refused.message and "x-should-retry" not in refused.headers()
    queries.fail = False
    assert await ledger.check(key) is None  # read now
    ledger.charge(key, Decimal("2"))
    queries.fail = True
    clock.now += timedelta(seconds=CACHE_SECONDS + 1)
    stale = await ledger.check(key)  # the database fails again: the earlier reading stands
    assert isinstance(stale, BudgetRefusal) and stale.status == 429
    asked = queries.calls
    for _ in range(20):
        assert isinstance(await ledger.check(key), BudgetRefusal)
    assert queries.calls == asked  # an outage costs no query per request


def test_in_process_memory_stays_bounded_with_many_keys_and_many_charges() -> None:
    store = LocalBudgets(max_keys=100)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for key_id in range(10_000):
        store.charge(key_id, "day", start, 1, start)
    assert len(store) == 100
    assert 9_999 in store._keys and 0 not in store._keys  # the newest are kept
    # One key charged every second for an hour, never checked: its buckets stay bounded.
    for second in range(3600):
        store.charge(7, "month", start, 1, start + timedelta(seconds=second))
    assert len(store._keys[7].recent) <= CACHE_SECONDS + RECORD_LAG_SECONDS + 3


async def test_redis_down_follows_the_policy(clock: Clock) -> None:
    dead = "redis://127.0.0.1:1/0"  # nothing listens there
    key = identity(8, budget=Decimal("0.5"))
    local = ledger_with(Queries(), redis_url=dead, when_redis_down="local")
    assert await local.check(key) is None
    local.charge(key, Decimal("0.5"))  # counted in this worker while Redis is away
    await local.drain()
    refused = await local.check(key)
    assert isinstance(refused, BudgetRefusal) and refused.status == 429
    refuse = ledger_with(Queries(), redis_url=dead, when_redis_down="refuse")
    unavailable = await refuse.check(key)
    assert isinstance(unavailable, BudgetRefusal)
    assert (unavailable.status, unavailable.kind) == (503, "limits_unavailable")
    assert "127.0.0.1" not in unavailable.message
    with pytest.raises(ValueError):
        KeyBudgetLedger(when_redis_down="ignore")


async def test_two_ledgers_share_one_budget_through_redis(clock: Clock) -> None:
    """Two workers' ledgers on one Redis: one counter per key and period, seeded once."""
    url, prefix = require_redis(), f"echo-test-{uuid.uuid4().hex[:8]}"
    recorded = Queries(amount=Decimal("0.4"))  # what the database holds already
    a = ledger_with(recorded, redis_url=url, prefix=prefix)
    b = ledger_with(recorded, redis_url=url, prefix=prefix)
    key = identity(9, budget=Decimal("1"))
    assert await a.check(key) is None
    assert recorded.calls == 1  # seeded from the database once
    for _ in range(10):
        assert await b.check(key) is None
    assert recorded.calls == 1  # the other worker reads the counter
    a.charge(key, Decimal("0.3"))
    b.charge(key, Decimal("0.29999999"))
    await asyncio.gather(a.drain(), b.drain())
    assert await a.check(key) is None  # 0.99999999 of 1
    b.charge(key, Decimal("0.00000001"))
    await b.drain()
    for ledger in (a, b):
        refused = await ledger.check(key)
        assert isinstance(refused, BudgetRefusal) and refused.status == 429
    start, end = period_bounds("day", clock.now)
    counter = a.redis.counter(9, "day", start)  # type: ignore[union-attr]
    client = a.redis._client()  # type: ignore[union-attr]
    assert int(await client.get(counter)) == 100_000_000
    ttl = await client.ttl(counter)
    assert 0 < ttl <= (end - clock.now).total_seconds() + key_budgets.COUNTER_MARGIN_SECONDS + 1
    clock.now = end + timedelta(seconds=1)
    recorded.amount = Decimal(0)
    assert await b.check(key) is None  # a new period, a new counter
    assert recorded.calls == 2
    await client.delete(counter, b.redis.counter(9, "day", end))  # type: ignore[union-attr]


async def test_a_charge_never_creates_an_unseeded_redis_counter(clock: Clock) -> None:
    """A counter made by a charge would hide the recorded spend from the seed."""
    url, prefix = require_redis(), f"echo-test-{uuid.uuid4().hex[:8]}"
    ledger = ledger_with(Queries(amount=Decimal("5")), redis_url=url, prefix=prefix)
    key = identity(10, budget=Decimal("5"))
    ledger.charge(key, Decimal("0.01"))
    await ledger.drain()
    refused = await ledger.check(key)  # seeded with the recorded $5: spent
    assert isinstance(refused, BudgetRefusal) and refused.status == 429
    start, _ = period_bounds("day", clock.now)
    client = ledger.redis._client()  # type: ignore[union-attr]
    counter = ledger.redis.counter(10, "day", start)  # type: ignore[union-attr]
    assert int(await client.get(counter)) == 500_000_000
    await client.delete(counter)


def test_request_usage_charges_the_recorded_cost_only_for_a_key_with_a_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    charged: list[tuple[int, Any]] = []

    class Recording:
        def charge(self, who: ClientIdentity, cost: Any) -> None:
            charged.append((who.key_id, cost))

    monkeypatch.setattr(runtime.current().usage_recorder, "record", lambda event: Decimal("0.7"))
    monkeypatch.setattr("plugins_api.edge.request_usage.budget_ledger", lambda: Recording())
    answer = ChatResponse(content="x", model="m", provider="p", usage=Usage(1, 1))
    RequestUsage(client="key:a", endpoint="/chat", stream=False, identity=identity(11)).answered(
        answer
    )
    RequestUsage(
        client="key:b", endpoint="/chat", stream=False, identity=identity(12, budget=None)
    ).answered(answer)
    RequestUsage(client="someone", endpoint="/chat", stream=False).answered(answer)
    assert charged == [(11, Decimal("0.7"))]


# --- the endpoints ------------------------------------------------------------------


@pytest.fixture
def priced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Echo's models cost PRICE per token, in and out."""

    def model_info(self: EchoProvider, model_name: str) -> dict[str, Any] | None:
        return {"input_cost_per_token": float(PRICE), "output_cost_per_token": float(PRICE)}

    monkeypatch.setattr(EchoProvider, "get_model_info", model_info)


@pytest.fixture
def ledger() -> Iterator[KeyBudgetLedger]:
    """An in-process ledger reading the real database, and an in-process limiter."""
    made = KeyBudgetLedger()
    set_budget_ledger(made)
    set_key_limiter(KeyLimiter())
    yield made
    set_budget_ledger(None)
    set_key_limiter(None)


@pytest.fixture
def budget_keys(db: Any, echo_config: Any, priced: None) -> tuple[str, str]:
    """(a key with a budget of $0.000001 a day and 1 request a minute, a key without budget)."""
    error = runtime.run_in_serving_loop(
        runtime.apply_config_state, echo_config.name, echo_config.to_spec(), ""
    )
    assert error is None, error
    forget_cached_keys()
    _, thrifty = client_key_issue(
        name="thrifty", scope="chat", budget_usd=TINY, budget_period="day"
    )
    _, free = client_key_issue(name="free", scope="chat")
    return thrifty, free


CALLS = {**MINIMAL_CALLS, "/v1/embeddings": {"model": "echo/echo-1", "input": "hi"}}


async def _post(client: AsyncClient, path: str, key: str) -> Any:
    return await client.post(
        path, json.dumps(CALLS[path]), content_type="application/json", headers={"x-api-key": key}
    )


async def _spend_it(raw_key: str, amount: Decimal = Decimal("0.01")) -> ClientIdentity:
    """Charge AMOUNT to RAW_KEY's budget in this process's ledger, as an answer would."""
    found = await alookup_key(raw_key)
    assert found is not None
    key_budgets.budget_ledger().charge(found, amount)
    return found


@pytest.mark.django_db(transaction=True)
async def test_a_tiny_budget_is_refused_once_recorded_and_accepted_in_the_next_period(
    budget_keys: tuple[str, str], ledger: KeyBudgetLedger, clock: Clock
) -> None:
    """Issue 17's budget test."""
    thrifty, free = budget_keys
    client = AsyncClient()
    first = await _post(client, "/v1/chat/completions", thrifty)
    assert first.status_code == 200
    await runtime.usage_recorder.flush()
    rows = await sync_to_async(list)(UsageRecord.objects.filter(client=key_client_label("thrifty")))
    assert len(rows) == 1 and rows[0].cost_usd > TINY  # the recorded cost passes the budget
    cost = rows[0].cost_usd

    refused = await _post(client, "/v1/chat/completions", thrifty)
    assert refused.status_code == 429
    body = refused.json()["error"]
    assert (body["type"], body["code"]) == ("insufficient_quota", "budget_exceeded")
    _, end = period_bounds("day", clock.now)
    assert int(refused["Retry-After"]) == pytest.approx((end - clock.now).total_seconds(), abs=2)
    assert refused["x-should-retry"] == "false"
    assert "$0.000001 per day (UTC)" in body["message"]
    assert (await _post(client, "/v1/chat/completions", free)).status_code == 200

    # The worker's count is exact: the recorded row and the charge are one answer, not two.
    who = await alookup_key(thrifty)
    entry = ledger.local._keys[who.key_id]
    assert entry.total() == cost_units(cost)
    clock.now += timedelta(seconds=CACHE_SECONDS + RECORD_LAG_SECONDS + 1)
    assert isinstance(await ledger.check(who), BudgetRefusal)
    assert entry.total() == cost_units(cost)  # now read from the database; the charge dropped

    # A fresh worker knows only the database: refused all the same.
    set_budget_ledger(KeyBudgetLedger())
    assert (await _post(client, "/chat", thrifty)).status_code == 429

    clock.now = end + timedelta(seconds=1)  # the next day
    again = await _post(client, "/v1/chat/completions", thrifty)
    assert again.status_code == 200, again.content


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", list(CALLS))
async def test_every_endpoint_refuses_a_spent_budget_in_its_own_shape(
    path: str, budget_keys: tuple[str, str], ledger: KeyBudgetLedger, clock: Clock
) -> None:
    thrifty, free = budget_keys
    await _spend_it(thrifty)
    client = AsyncClient()
    refused = await _post(client, path, thrifty)
    assert refused.status_code == 429
    _, end = period_bounds("day", clock.now)
    assert int(refused["Retry-After"]) == pytest.approx((end - clock.now).total_seconds(), abs=2)
    assert refused["x-should-retry"] == "false"
    body = refused.json()
    message = body["error"]["message"]
    assert "budget of $0.000001 per day (UTC) is spent" in message
    if path == "/chat":
        assert body["error"]["type"] == "budget_exceeded"
        assert body["error"]["budget_usd"] == "0.000001" and body["error"]["period"] == "day"
        assert body["error"]["resets_at"] == end.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert body["error"]["retry_after"] == int(refused["Retry-After"])
    elif path.startswith("/v1/chat") or path == "/v1/embeddings":
        assert body["error"] == {
            "message": message,
            "type": "insufficient_quota",
            "param": None,
            "code": "budget_exceeded",
        }
    else:
        assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    assert not any(
        h.lower().startswith(("x-ratelimit", "anthropic-ratelimit")) for h in refused.headers
    )
    other = await _post(client, path, free)
    assert other.status_code != 429  # embeddings: echo embeds nothing, but no budget refuses it
    # Nothing was recorded for the refused call.
    await runtime.usage_recorder.flush()
    assert not await UsageRecord.objects.filter(client=key_client_label("thrifty")).aexists()


@pytest.mark.django_db(transaction=True)
async def test_a_refused_budget_takes_no_rate_limit_slot(
    budget_keys: tuple[str, str], ledger: KeyBudgetLedger, clock: Clock
) -> None:
    thrifty, _ = budget_keys
    await sync_to_async(client_key_update)(name="thrifty", changes={"requests_per_minute": 1})
    forget_cached_keys()
    await _spend_it(thrifty)
    client = AsyncClient()
    for _ in range(3):
        assert (await _post(client, "/chat", thrifty)).json()["error"]["type"] == "budget_exceeded"
    await sync_to_async(client_key_update)(name="thrifty", changes={"budget_usd": None})
    forget_cached_keys()
    assert (await _post(client, "/chat", thrifty)).status_code == 200  # its one slot was free
    assert (await _post(client, "/chat", thrifty)).json()["error"]["type"] == "rate_limited"


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_refuses_a_question_past_the_budget_and_stays_open(
    budget_keys: tuple[str, str], ledger: KeyBudgetLedger, clock: Clock
) -> None:
    from echo_site.asgi import application

    thrifty, _ = budget_keys
    socket = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"authorization", f"Bearer {thrifty}".encode())]
    )
    connected, _ = await socket.connect(timeout=10)
    assert connected
    assert (await socket.receive_json_from(timeout=10))["type"] == "providers"
    await socket.send_json_to({"type": "chat", "message": "hi"})
    while (await socket.receive_json_from(timeout=5))["type"] != "done":
        pass  # the answer's cost is charged: it passes the tiny budget
    await socket.send_json_to({"type": "chat", "message": "hi"})
    refused = await socket.receive_json_from(timeout=5)
    assert refused["type"] == "error" and refused["error"]["type"] == "budget_exceeded"
    _, end = period_bounds("day", clock.now)
    assert refused["retry_after"] == pytest.approx((end - clock.now).total_seconds(), abs=2)
    assert refused["resets_at"] == end.strftime("%Y-%m-%dT%H:%M:%SZ")
    await socket.send_json_to({"type": "providers"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "providers"  # still open
    await socket.disconnect()


# --- the SDKs, against a live Echo ----------------------------------------------------


@pytest.fixture
def spent_key(transactional_db: Any, priced: None) -> str:
    """A key with a budget of $0.000001 a day, and the echo provider (loaded at start-up)."""
    from providers.config.services import provider_config_create

    provider_config_create(
        name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
    )
    forget_cached_keys()
    _, raw = client_key_issue(
        name="sdk-thrifty", scope="chat", budget_usd=TINY, budget_period="day"
    )
    assert ClientAPIKey.objects.filter(name="sdk-thrifty").exists()
    return raw


@pytest.mark.slow
async def test_the_openai_and_anthropic_sdks_raise_rate_limit_error_without_retrying(
    spent_key: str, ledger: KeyBudgetLedger, live_echo: Any
) -> None:
    """Each SDK, allowed 3 retries, sends exactly one request (counted by the server's checks)."""
    import anthropic
    import openai

    await _spend_it(spent_key)
    checks: list[int] = []
    check = ledger.check

    async def counted(who: ClientIdentity | None, now: datetime | None = None) -> Any:
        checks.append(who.key_id if who is not None else 0)
        return await check(who, now)

    ledger.check = counted  # type: ignore[method-assign]
    oai = openai.AsyncOpenAI(base_url=f"{live_echo.url}/v1", api_key=spent_key, max_retries=3)
    with pytest.raises(openai.RateLimitError) as refused:
        await oai.chat.completions.create(
            model="echo/echo-1", messages=[{"role": "user", "content": "hi"}]
        )
    assert len(checks) == 1  # x-should-retry: false
    assert refused.value.code == "budget_exceeded"
    assert refused.value.response.headers["x-should-retry"] == "false"
    await oai.close()

    claude = anthropic.AsyncAnthropic(base_url=live_echo.url, api_key=spent_key, max_retries=3)
    with pytest.raises(anthropic.RateLimitError) as refused_too:
        await claude.messages.create(
            model="echo/echo-1", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert len(checks) == 2
    assert "budget" in refused_too.value.message
    await claude.close()
