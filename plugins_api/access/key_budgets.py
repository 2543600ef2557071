"""Per-key budgets: a key's spend this period, checked before each chat call and charged after it.

A key with ``budget_usd`` may spend that much per ``budget_period`` (a UTC
day, a week from Monday, a calendar month; ``key_spend.period_bounds``).
``KeyBudgetLedger.check`` refuses a call (429 ``budget_exceeded``, until the
next period starts) once the key's spend in the current period reaches its
budget; ``charge`` adds an answer's cost (``UsageRecorder.record`` returns it)
after the answer. A key without a budget costs nothing here: no store, no query.

The spend of a period is what the database has recorded (``UsageRecord`` rows,
written in batches a moment after each answer) plus what has been charged
since and is not recorded yet. Money is counted in whole units of 10^-8 USD
(the usage column's precision), so that sums are exact integers.

Two stores, as for the rate limits (``key_limits``):

- **Redis** (``REDIS_URL`` set), shared by every worker: one counter per key
  and period, seeded once from the database with ``SET NX`` (the first worker
  to need it; the others read it) and raised with ``INCRBY`` by every charge,
  by a script that charges only a seeded counter: a counter created by a
  charge would hide the recorded spend from the seed. The counter is never
  read from the database again during its period, so no answer is counted
  twice (its row reaches the database after the seed). It expires an hour
  after its period ends. The price: an answer that ends while a period's
  counter is first seeded (between the seed's query and its ``SET``), and
  whose row is not yet written, is not counted; every call is checked, and so
  seeds its period's counter, before it is charged, so this can only happen at
  the turn of a period or when Redis has lost the counter.
- **In process** (no Redis, or Redis down under the ``local`` policy), per
  worker: the recorded spend of rows older than ``RECORD_LAG_SECONDS``
  (re-read at most every ``CACHE_SECONDS`` per key, never once per request)
  plus this worker's own charges since that cut-off, kept in buckets of one
  second. Rows newer than the cut-off may not be written yet, so they are
  counted from the charges; older ones from the database: nothing is counted
  twice, and nothing is lost. Another worker's charges are seen once their
  rows are older than the cut-off, within ``CACHE_SECONDS`` and
  ``RECORD_LAG_SECONDS``. At most ``LOCAL_MAX_KEYS`` keys are kept (the
  least recently used go) and a key's buckets are bounded by the same
  window.

Charges go to the in-process store always (so that a Redis outage starts from
this worker's recent charges) and to Redis, off the request's path, when it
is used. When Redis cannot be reached, ``ECHO_KEY_LIMITS_WHEN_REDIS_DOWN``
decides, as for the rate limits: ``local`` counts in process, ``refuse``
answers 503; never unlimited. A database that cannot be read is a 503 too,
unless an earlier reading of this period is at hand.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django.utils import timezone

from plugins_api.access.client_keys import ClientIdentity
from plugins_api.access.key_spend import aspent_between, aspent_since, period_bounds
from plugins_api.access.shared_redis import (
    POLICY_LOCAL,
    POLICY_REFUSE,
    REDIS_RETRY_SECONDS,
    LoopRedis,
    RedisOutage,
    store_settings,
)
from plugins_api.models import ClientAPIKey
from providers.usage.row_writer import MAX_COST

logger = logging.getLogger(__name__)

#: Money is counted in these units per US dollar (the usage column keeps 8 decimals).
UNITS_PER_USD = 10**8
#: The largest charge one answer may add (the usage column's largest cost).
MAX_CHARGE_UNITS = int(MAX_COST * UNITS_PER_USD)
#: In process: how old the database's share of a key's spend may get before it is read again.
CACHE_SECONDS = 10.0
#: In process: rows younger than this may still be on their way to the database.
RECORD_LAG_SECONDS = 5.0
LOCAL_MAX_KEYS = 10_000
#: A refresh that has not answered after this long no longer holds the others back.
REFRESH_STALE_SECONDS = 30.0
#: How long a Redis counter outlives its period.
COUNTER_MARGIN_SECONDS = 3600

#: The wall clock budget periods are read from (tests replace it).
clock: Callable[[], datetime] = timezone.now


# --- money --------------------------------------------------------------------


def cost_units(cost: object) -> int:
    """Return COST (USD) in whole units; 0 for anything that is not a finite, positive amount."""
    if isinstance(cost, bool) or not isinstance(cost, Decimal | int | float):
        return 0
    try:
        amount = Decimal(str(cost)) if isinstance(cost, float) else Decimal(cost)
        if not amount.is_finite() or amount <= 0:
            return 0
        units = int((amount * UNITS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError, OverflowError):
        return 0
    return min(units, MAX_CHARGE_UNITS)


def recorded_units(amount: Decimal) -> int:
    """Return a recorded total AMOUNT (USD, a database sum) in whole units, at least 0."""
    try:
        if not amount.is_finite() or amount <= 0:
            return 0
        return int((amount * UNITS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))
    except (AttributeError, InvalidOperation, OverflowError):
        return 0


def budget_units(budget: Decimal) -> int:
    """Return BUDGET in whole units; 0 (nothing may be spent) for one that is not a finite amount."""
    try:
        if not budget.is_finite() or budget <= 0:
            return 0
        return int((budget * UNITS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))
    except (AttributeError, InvalidOperation, OverflowError):
        return 0


def usd(units: int) -> Decimal:
    """Return UNITS as US dollars."""
    return Decimal(units) / UNITS_PER_USD


def budget_period_of(identity: ClientIdentity) -> str:
    """Return IDENTITY's budget period; an unknown one reads as a month (the longest: fail closed)."""
    periods = {value for value, _ in ClientAPIKey.BUDGET_PERIODS}
    period = identity.budget_period
    return period if period in periods else ClientAPIKey.PERIOD_MONTH


# --- refusals -----------------------------------------------------------------

_PERIOD_WORDS = {
    ClientAPIKey.PERIOD_DAY: "day (UTC)",
    ClientAPIKey.PERIOD_WEEK: "week (from Monday, UTC)",
    ClientAPIKey.PERIOD_MONTH: "month (UTC)",
}


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    """Why a call is refused: its key's BUDGET_USD per PERIOD is spent until RESETS_AT (429).

    STATUS 503 says the spend cannot be read right now (Redis down under the
    ``refuse`` policy, or the database away with no earlier reading).
    """

    budget_usd: Decimal
    period: str
    resets_at: datetime
    retry_after: float
    status: int = 429

    @property
    def kind(self) -> str:
        return "budget_exceeded" if self.status == 429 else "limits_unavailable"

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds to wait, at least 1 (what ``Retry-After`` carries)."""
        return max(1, math.ceil(self.retry_after))

    @property
    def resets_at_text(self) -> str:
        """RESETS_AT as an RFC 3339 time in UTC."""
        return (
            self.resets_at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        )

    @property
    def message(self) -> str:
        if self.status != 429:
            return "This key's budget cannot be checked right now; retry shortly."
        per = _PERIOD_WORDS.get(self.period, self.period)
        return (
            f"This key's budget of ${self.budget_usd.normalize():f} per {per} is spent; "
            f"it resets at {self.resets_at_text} (in {self.retry_after_seconds} s)."
        )

    def headers(self) -> dict[str, str]:
        """Return the headers of the refusal: ``Retry-After``, and ``x-should-retry: false`` on 429.

        The OpenAI and Anthropic SDKs read ``x-should-retry`` before anything
        else: a spent budget is not worth an automatic retry.
        """
        headers = {"Retry-After": str(self.retry_after_seconds)}
        if self.status == 429:
            headers["x-should-retry"] = "false"
        return headers


# --- the in-process store -----------------------------------------------------


def _second(moment: datetime) -> int:
    return math.floor(moment.timestamp())


@dataclass(slots=True)
class _LocalSpend:
    """One key's spend in one period, as this worker knows it."""

    period: str
    start: datetime
    recorded: int = 0  # units the database held for rows before CUTOFF
    cutoff: int | None = None  # a whole UTC second; None: never read
    read_at: datetime | None = None
    refreshing_since: float | None = None  # monotonic; a refresh under way
    recent: dict[int, int] = field(default_factory=dict)  # second -> units charged in it

    def total(self) -> int:
        cutoff = self.cutoff if self.cutoff is not None else -1
        return self.recorded + sum(
            units for second, units in self.recent.items() if second >= cutoff
        )

    def fresh(self, now: datetime) -> bool:
        if self.read_at is None:
            return False
        age = (now - self.read_at).total_seconds()
        return 0 <= age < CACHE_SECONDS


class LocalBudgets:
    """The spend of at most MAX_KEYS keys in this process's memory (atomic under a lock)."""

    def __init__(self, *, max_keys: int = LOCAL_MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[int, _LocalSpend] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def _entry(
        self, key_id: int, period: str, start: datetime, *, replace_later: bool = False
    ) -> _LocalSpend | None:
        """Return KEY_ID's entry for the period from START (a new one replaces an older period's).

        None when the key's entry is of a later period (a late charge), unless
        REPLACE_LATER (a check: the clock went back).
        """
        entry = self._keys.get(key_id)
        if entry is not None:
            self._keys.move_to_end(key_id)
            if entry.period == period and entry.start == start:
                return entry
            if entry.period == period and entry.start > start and not replace_later:
                return None
        elif len(self._keys) >= self.max_keys:
            while len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
        entry = self._keys[key_id] = _LocalSpend(period=period, start=start)
        return entry

    def reading(
        self, key_id: int, period: str, start: datetime, now: datetime
    ) -> tuple[int | None, bool]:
        """Return (the spend as known, or None if never read; whether the caller should read it again).

        Only one caller at a time is asked to read it again; the others go on
        with the value known, unless there is none.
        """
        with self._lock:
            entry = self._entry(key_id, period, start, replace_later=True)
            assert entry is not None
            known = entry.total() if entry.cutoff is not None else None
            if entry.fresh(now):
                return known, False
            busy = entry.refreshing_since is not None and (
                time.monotonic() - entry.refreshing_since < REFRESH_STALE_SECONDS
            )
            if busy and known is not None:
                return known, False
            entry.refreshing_since = time.monotonic()
            return known, True

    def refreshed(
        self,
        key_id: int,
        period: str,
        start: datetime,
        *,
        cutoff: int,
        recorded: int | None,
        now: datetime,
    ) -> int | None:
        """Store a reading of the database (RECORDED units before CUTOFF; None: it failed); return the spend."""
        with self._lock:
            entry = self._entry(key_id, period, start)
            if entry is None:  # a later period began meanwhile: this reading stands alone
                return recorded
            entry.refreshing_since = None
            if recorded is None:
                if entry.cutoff is None:
                    return None
                entry.read_at = now  # the earlier reading stands a while: no query per request
                return entry.total()
            entry.recorded = recorded
            entry.cutoff = cutoff
            entry.read_at = now
            for second in [s for s in entry.recent if s < cutoff]:
                del entry.recent[second]
            return entry.total()

    def charge(self, key_id: int, period: str, start: datetime, units: int, now: datetime) -> None:
        """Add UNITS charged at NOW to KEY_ID's spend of the period from START."""
        with self._lock:
            entry = self._entry(key_id, period, start)
            if entry is None:
                return
            second = _second(now)
            entry.recent[second] = entry.recent.get(second, 0) + units
            # Below the cut-off, or older than any cut-off a fresh reading can have:
            # the database counts them (so a key keeps at most that window of buckets).
            horizon = second - math.ceil(CACHE_SECONDS + RECORD_LAG_SECONDS) - 1
            floor = horizon if entry.cutoff is None else max(horizon, entry.cutoff)
            for old in [s for s in entry.recent if s < floor]:
                del entry.recent[old]


# --- the Redis store ----------------------------------------------------------

# KEYS: the counter. ARGV: units recorded, seconds to live. Returns the counter.
SEED_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2]))
return redis.call('GET', KEYS[1])
"""

# KEYS: the counter. ARGV: units. Charges a seeded counter only.
CHARGE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return false
"""


class RedisBudgets:
    """The counters in the Redis at URL, under PREFIX; one client per event loop, bounded pool."""

    def __init__(self, url: str, *, prefix: str = "echo") -> None:
        self.url = url
        self.prefix = prefix
        self._redis = LoopRedis(url)
        self._seed = None
        self._charge = None

    def _client(self):  # noqa: ANN202 (redis.asyncio.Redis, imported lazily)
        return self._redis.client()

    def counter(self, key_id: int, period: str, start: datetime) -> str:
        """Return the name of KEY_ID's counter for the PERIOD from START."""
        return f"{self.prefix}:keybudget:{{{key_id}}}:{period}:{_second(start)}"

    async def spent(self, counter: str) -> int | None:
        """Return COUNTER's units, or None when it is not seeded."""
        found = await self._client().get(counter)
        return None if found is None else int(found)

    async def seed(self, counter: str, units: int, ttl: int) -> int:
        """Set COUNTER to UNITS unless another worker has (SET NX); return its value."""
        client = self._client()
        if self._seed is None:
            self._seed = client.register_script(SEED_SCRIPT)
        return int(await self._seed(keys=[counter], args=[units, max(1, ttl)], client=client))

    async def charge(self, counter: str, units: int) -> None:
        """Add UNITS to COUNTER if it is seeded."""
        client = self._client()
        if self._charge is None:
            self._charge = client.register_script(CHARGE_SCRIPT)
        await self._charge(keys=[counter], args=[units], client=client)


# --- the interface ------------------------------------------------------------

SpentBetween = Callable[[str, datetime, datetime], Awaitable[Decimal]]
SpentSince = Callable[[str, datetime], Awaitable[Decimal]]


class KeyBudgetLedger:
    """Check and charge keys' budgets; Redis at REDIS_URL if given, else memory.

    SPENT_BETWEEN and SPENT_SINCE read the recorded spend (``key_spend``'s
    queries; tests count them).
    """

    def __init__(
        self,
        *,
        redis_url: str = "",
        prefix: str = "echo",
        when_redis_down: str = POLICY_LOCAL,
        local_max_keys: int = LOCAL_MAX_KEYS,
        spent_between: SpentBetween = aspent_between,
        spent_since: SpentSince = aspent_since,
    ) -> None:
        self.outage = RedisOutage("key budgets", when_redis_down)
        self.redis = RedisBudgets(redis_url, prefix=prefix) if redis_url else None
        self.local = LocalBudgets(max_keys=local_max_keys)
        self.when_redis_down = when_redis_down
        self.spent_between = spent_between
        self.spent_since = spent_since
        self._tasks: set[asyncio.Task[None]] = set()

    def _redis_usable(self) -> bool:
        return self.redis is not None and self.outage.usable()

    def _redis_failed(self, exc: BaseException) -> None:
        self.outage.failed(exc)

    async def check(
        self, identity: ClientIdentity | None, now: datetime | None = None
    ) -> BudgetRefusal | None:
        """Return the refusal of a call by IDENTITY's key at NOW, or None when it may spend.

        None at once, with no store touched, for a caller without a budget.
        """
        if identity is None or identity.budget_usd is None:
            return None
        now = now or clock()
        period = budget_period_of(identity)
        start, end = period_bounds(period, now)
        budget = identity.budget_usd
        spent: int | None = None
        if self.redis is not None:
            if self._redis_usable():
                try:
                    spent = await self._redis_spent(identity, period, start, end, now)
                except _DatabaseAway:
                    return _unavailable(budget, period, end, now)
                except Exception as exc:  # noqa: BLE001 (any Redis failure: the policy decides)
                    self._redis_failed(exc)
                else:
                    return _judge(spent, budget, period, end, now)
            if self.when_redis_down == POLICY_REFUSE:
                return _unavailable(budget, period, end, now)
        spent = await self._local_spent(identity, period, start, now)
        if spent is None:
            return _unavailable(budget, period, end, now)
        return _judge(spent, budget, period, end, now)

    async def _redis_spent(
        self, identity: ClientIdentity, period: str, start: datetime, end: datetime, now: datetime
    ) -> int:
        assert self.redis is not None
        counter = self.redis.counter(identity.key_id, period, start)
        spent = await self.redis.spent(counter)
        if spent is not None:
            return spent
        try:
            recorded = recorded_units(await self.spent_since(identity.name, start))
        except Exception as exc:
            logger.warning(
                "key budgets: the recorded spend could not be read (%s)", type(exc).__name__
            )
            raise _DatabaseAway from exc
        ttl = math.ceil((end - now).total_seconds()) + COUNTER_MARGIN_SECONDS
        return await self.redis.seed(counter, recorded, ttl)

    async def _local_spent(
        self, identity: ClientIdentity, period: str, start: datetime, now: datetime
    ) -> int | None:
        known, read_again = self.local.reading(identity.key_id, period, start, now)
        if not read_again:
            return known
        cutoff = max(_second(now - timedelta(seconds=RECORD_LAG_SECONDS)), _second(start))
        cut = datetime.fromtimestamp(cutoff, tz=UTC)
        recorded: int | None
        try:
            recorded = recorded_units(await self.spent_between(identity.name, start, cut))
        except asyncio.CancelledError:
            self.local.refreshed(
                identity.key_id, period, start, cutoff=cutoff, recorded=None, now=now
            )
            raise
        except Exception as exc:  # noqa: BLE001 (the database away: an earlier reading, or 503)
            logger.warning(
                "key budgets: the recorded spend could not be read (%s)", type(exc).__name__
            )
            recorded = None
        return self.local.refreshed(
            identity.key_id, period, start, cutoff=cutoff, recorded=recorded, now=now
        )

    def charge(self, identity: ClientIdentity | None, cost: object) -> None:
        """Add COST (USD, from the answer's usage) to IDENTITY's spend; never blocks, never raises.

        A caller without a budget, and a cost that is not a finite positive
        amount (None, negative, NaN, not a number), change nothing.
        """
        if identity is None or identity.budget_usd is None:
            return
        units = cost_units(cost)
        if units <= 0:
            return
        try:
            now = clock()
            period = budget_period_of(identity)
            start, _ = period_bounds(period, now)
            self.local.charge(identity.key_id, period, start, units, now)
            if self.redis is None or not self._redis_usable():
                return
            counter = self.redis.counter(identity.key_id, period, start)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop to reach Redis from: the row reaches the database all the same
            task = loop.create_task(self._charge_shared(counter, units))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:  # noqa: BLE001 (the answer is given; its row still records the cost)
            logger.exception("key budgets: could not charge a key")

    async def _charge_shared(self, counter: str, units: int) -> None:
        assert self.redis is not None
        try:
            await self.redis.charge(counter, units)
        except Exception as exc:  # noqa: BLE001 (counted in process; recorded in the database)
            self._redis_failed(exc)

    async def drain(self) -> None:
        """Wait for the charges under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class _DatabaseAway(Exception):
    """The recorded spend could not be read to seed a counter."""


def _judge(
    spent: int, budget: Decimal, period: str, end: datetime, now: datetime
) -> BudgetRefusal | None:
    if spent < budget_units(budget):
        return None
    return BudgetRefusal(budget, period, end, (end - now).total_seconds())


def _unavailable(budget: Decimal, period: str, end: datetime, now: datetime) -> BudgetRefusal:
    return BudgetRefusal(budget, period, end, REDIS_RETRY_SECONDS, status=503)


_ledger: KeyBudgetLedger | None = None


def budget_ledger() -> KeyBudgetLedger:
    """Return this process's ledger, made from the settings on first use (the rate limits' Redis and policy)."""
    global _ledger
    if _ledger is None:
        _ledger = KeyBudgetLedger(**store_settings())
    return _ledger


def set_budget_ledger(ledger: KeyBudgetLedger | None) -> None:
    """Replace this process's ledger (tests); None makes the next use build it from settings."""
    global _ledger
    _ledger = ledger
