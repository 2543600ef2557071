"""Per-key rate limits: requests per minute, tokens per minute and concurrent requests.

One interface (``KeyLimiter.admit`` before a call, ``Admission.finish`` after
it), two stores: Redis when ``REDIS_URL`` is set, so that every worker shares
one count per key, and this process's memory otherwise.

Both keep the same three counters per key, all O(1) in memory:

- requests per minute, a GCRA: each request moves the key's theoretical
  arrival time (TAT) on by ``60 / rpm`` seconds; a request is admitted while
  the TAT stays within a minute of now. A full minute's quota may come at
  once; after that one request every ``60 / rpm`` seconds.
- tokens per minute, the same clock charged by the tokens an answer used
  (``60 / tpm`` seconds per token), after the answer; a request is admitted
  while the key's tokens of the last minute, so decayed, are under the limit.
- concurrent requests, a set of leases with an expiry (``LEASE_SECONDS``), so
  that a worker that dies holding one does not hold it forever.

In Redis one ``EVALSHA`` checks all three and takes the slot (atomic: Redis
runs a script alone), and one more after the answer charges the tokens and
gives the slot back. When Redis cannot be reached the call follows
``ECHO_KEY_LIMITS_WHEN_REDIS_DOWN``: ``local`` (the default) counts in this
worker's memory for the while, ``refuse`` answers 503; never unlimited.
Redis is then left alone for a while (``shared_redis``, which budgets share)
so that an outage does not cost every request a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from plugins_api.access.shared_redis import (
    POLICY_LOCAL,
    POLICY_REFUSE,
    REDIS_RETRY_SECONDS,
    LoopRedis,
    RedisOutage,
    store_settings,
)

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
LEASE_SECONDS = 600.0
LOCAL_MAX_KEYS = 10_000
#: How long to wait before retrying a call refused for concurrency (no clock says better).
CONCURRENCY_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's limits; None is unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent)
        )


UNLIMITED = KeyLimits()


@dataclass(frozen=True, slots=True)
class LimitState:
    """What a check saw: each limit, what is left of it and seconds until it is whole again."""

    limits: KeyLimits
    requests_remaining: int | None = None
    requests_reset: float = 0.0
    tokens_remaining: int | None = None
    tokens_reset: float = 0.0


@dataclass(frozen=True, slots=True)
class LimitRefusal:
    """Why a call is refused: which LIMIT ("requests", "tokens", "concurrency", "unavailable")."""

    limit: str
    retry_after: float
    state: LimitState
    status: int = 429

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds to wait, at least 1 (what ``Retry-After`` carries)."""
        return max(1, math.ceil(self.retry_after))

    @property
    def message(self) -> str:
        limits = self.state.limits
        if self.limit == "requests":
            what = f"{limits.requests_per_minute} requests per minute"
        elif self.limit == "tokens":
            what = f"{limits.tokens_per_minute} tokens per minute"
        elif self.limit == "concurrency":
            what = f"{limits.max_concurrent} concurrent requests"
        else:
            return "This key's limits cannot be checked right now; retry shortly."
        return (
            f"Rate limit reached for this key ({what}); retry after {self.retry_after_seconds} s."
        )


# --- the algorithm, on one key's numbers ---------------------------------------


def _requests_check(tat: float, now: float, rpm: int) -> tuple[bool, float, float, int]:
    """GCRA: return (admitted, new TAT, seconds to wait or until whole, remaining)."""
    interval = WINDOW_SECONDS / rpm
    new_tat = max(tat, now) + interval
    allow_at = new_tat - WINDOW_SECONDS
    if allow_at > now:
        return False, tat, allow_at - now, 0
    remaining = int((WINDOW_SECONDS - (new_tat - now)) / interval + 1e-9)
    return True, new_tat, new_tat - now, remaining


def _tokens_check(tat: float, now: float, tpm: int) -> tuple[bool, float, int]:
    """Return (admitted, seconds to wait or until whole, tokens remaining) for a key's token TAT."""
    per_token = WINDOW_SECONDS / tpm
    used = max(0.0, tat - now) / per_token
    if used >= tpm:
        return False, (used - tpm) * per_token + per_token, 0
    return True, max(0.0, tat - now), int(tpm - used)


def _tokens_charge(tat: float, now: float, tpm: int, tokens: int) -> float:
    """Return the token TAT after charging TOKENS (capped: one answer never bans for hours)."""
    per_token = WINDOW_SECONDS / tpm
    return min(max(tat, now) + tokens * per_token, now + 2 * WINDOW_SECONDS)


# --- the in-process store -----------------------------------------------------


@dataclass(slots=True)
class _LocalKey:
    requests_tat: float = 0.0
    tokens_tat: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)

    def idle(self, now: float) -> bool:
        return self.requests_tat <= now and self.tokens_tat <= now and not self.leases


class LocalLimits:
    """The counters in this process's memory, for at most MAX_KEYS keys (atomic under a lock)."""

    def __init__(self, *, max_keys: int = LOCAL_MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[int, _LocalKey] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def _key(self, key_id: int, now: float) -> _LocalKey:
        state = self._keys.get(key_id)
        if state is not None:
            self._keys.move_to_end(key_id)
            return state
        if len(self._keys) >= self.max_keys:
            for idle in [k for k, s in self._keys.items() if s.idle(now)]:
                del self._keys[idle]
            while len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
        state = self._keys[key_id] = _LocalKey()
        return state

    def admit(
        self, key_id: int, limits: KeyLimits, lease: str, now: float
    ) -> LimitState | LimitRefusal:
        with self._lock:
            state = self._key(key_id, now)
            for token, expires in list(state.leases.items()):
                if expires <= now:
                    del state.leases[token]
            checked, refusal = _judge(
                limits,
                now,
                requests_tat=state.requests_tat,
                tokens_tat=state.tokens_tat,
                slots_taken=len(state.leases),
            )
            if refusal is not None:
                return refusal
            new_tat, result = checked
            if limits.requests_per_minute is not None:
                state.requests_tat = new_tat
            if limits.max_concurrent is not None:
                state.leases[lease] = now + LEASE_SECONDS
            return result

    def finish(self, key_id: int, limits: KeyLimits, lease: str, tokens: int, now: float) -> None:
        with self._lock:
            state = self._keys.get(key_id)
            if state is None:
                return
            state.leases.pop(lease, None)
            if limits.tokens_per_minute is not None and tokens > 0:
                state.tokens_tat = _tokens_charge(
                    state.tokens_tat, now, limits.tokens_per_minute, tokens
                )


def _judge(
    limits: KeyLimits, now: float, *, requests_tat: float, tokens_tat: float, slots_taken: int
) -> tuple[tuple[float, LimitState], LimitRefusal | None]:
    """Check LIMITS against one key's counters; return (new requests TAT, state) and any refusal."""
    new_tat = requests_tat
    req_remaining: int | None = None
    req_reset = 0.0
    tok_remaining: int | None = None
    tok_reset = 0.0
    refusal: tuple[str, float] | None = None
    if limits.tokens_per_minute is not None:
        ok, tok_reset, tok_remaining = _tokens_check(tokens_tat, now, limits.tokens_per_minute)
        if not ok:
            refusal = ("tokens", tok_reset)
    if limits.requests_per_minute is not None:
        ok, new_tat, req_reset, req_remaining = _requests_check(
            requests_tat, now, limits.requests_per_minute
        )
        if not ok and refusal is None:
            refusal = ("requests", req_reset)
    if refusal is None and limits.max_concurrent is not None:
        if slots_taken >= limits.max_concurrent:
            refusal = ("concurrency", CONCURRENCY_RETRY_SECONDS)
    state = LimitState(limits, req_remaining, req_reset, tok_remaining, tok_reset)
    if refusal is not None:
        return (requests_tat, state), LimitRefusal(refusal[0], refusal[1], state)
    return (new_tat, state), None


# --- the Redis store ----------------------------------------------------------

# KEYS: requests TAT, tokens TAT, leases (a sorted set: lease -> expiry).
# ARGV: now, rpm, tpm, max concurrent (0 = none), lease, lease seconds, window.
# Returns {admitted, limit (1 requests, 2 tokens, 3 concurrency), wait ms,
#          requests remaining, requests reset ms, tokens remaining, tokens reset ms}.
ADMIT_SCRIPT = """
local now = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local conc = tonumber(ARGV[4])
local window = tonumber(ARGV[7])
local refused, wait = 0, 0
local req_left, req_reset, tok_left, tok_reset = -1, 0, -1, 0
local new_tat = 0
if tpm > 0 then
  local per = window / tpm
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  local used = math.max(0, tat - now) / per
  if used >= tpm then
    refused, wait, tok_left = 2, (used - tpm) * per + per, 0
  else
    tok_left, tok_reset = math.floor(tpm - used), math.max(0, tat - now)
  end
end
if rpm > 0 then
  local interval = window / rpm
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  new_tat = math.max(tat, now) + interval
  local allow_at = new_tat - window
  if allow_at > now then
    req_left, req_reset = 0, allow_at - now
    if refused == 0 then refused, wait = 1, allow_at - now end
  else
    req_left = math.floor((window - (new_tat - now)) / interval + 1e-9)
    req_reset = new_tat - now
  end
end
if refused == 0 and conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then
    refused, wait = 3, 1
  end
end
if refused == 0 then
  if rpm > 0 then
    redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
  end
  if conc > 0 then
    local lease_seconds = tonumber(ARGV[6])
    redis.call('ZADD', KEYS[3], now + lease_seconds, ARGV[5])
    redis.call('PEXPIRE', KEYS[3], math.ceil(lease_seconds * 1000) + 1000)
  end
end
return {refused == 0 and 1 or 0, refused, math.ceil(wait * 1000),
        req_left, math.ceil(req_reset * 1000), tok_left, math.ceil(tok_reset * 1000)}
"""

# KEYS: tokens TAT, leases. ARGV: now, tpm (0 = none), tokens, lease, window.
FINISH_SCRIPT = """
local now = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local window = tonumber(ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[4])
if tpm > 0 and tokens > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local new_tat = math.min(math.max(tat, now) + tokens * window / tpm, now + 2 * window)
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
end
return 1
"""

_LIMIT_NAMES = {1: "requests", 2: "tokens", 3: "concurrency"}


class RedisLimits:
    """The counters in the Redis at URL, under PREFIX; one client per event loop, bounded pool."""

    def __init__(self, url: str, *, prefix: str = "echo") -> None:
        self.url = url
        self.prefix = prefix
        self._redis = LoopRedis(url)
        self._admit = None
        self._finish = None

    def _client(self):  # noqa: ANN202 (redis.asyncio.Redis, imported lazily)
        return self._redis.client()

    def _keys(self, key_id: int) -> list[str]:
        base = f"{self.prefix}:keylimits:{{{key_id}}}"
        return [f"{base}:requests", f"{base}:tokens", f"{base}:leases"]

    async def admit(
        self, key_id: int, limits: KeyLimits, lease: str, now: float
    ) -> LimitState | LimitRefusal:
        client = self._client()
        if self._admit is None:
            self._admit = client.register_script(ADMIT_SCRIPT)
        found = await self._admit(
            keys=self._keys(key_id),
            args=[
                repr(now),
                limits.requests_per_minute or 0,
                limits.tokens_per_minute or 0,
                limits.max_concurrent or 0,
                lease,
                LEASE_SECONDS,
                WINDOW_SECONDS,
            ],
            client=client,
        )
        admitted, limit, wait_ms, req_left, req_reset, tok_left, tok_reset = (int(v) for v in found)
        state = LimitState(
            limits,
            req_left if req_left >= 0 else None,
            req_reset / 1000,
            tok_left if tok_left >= 0 else None,
            tok_reset / 1000,
        )
        if admitted:
            return state
        return LimitRefusal(_LIMIT_NAMES[limit], wait_ms / 1000, state)

    async def finish(
        self, key_id: int, limits: KeyLimits, lease: str, tokens: int, now: float
    ) -> None:
        client = self._client()
        if self._finish is None:
            self._finish = client.register_script(FINISH_SCRIPT)
        keys = self._keys(key_id)
        await self._finish(
            keys=[keys[1], keys[2]],
            args=[repr(now), limits.tokens_per_minute or 0, tokens, lease, WINDOW_SECONDS],
            client=client,
        )


# --- the interface ------------------------------------------------------------


class Admission:
    """An admitted call: give it back with ``finish(tokens)`` once it ends (once; later calls do nothing)."""

    __slots__ = ("limiter", "key_id", "limits", "lease", "state", "shared", "_done")

    def __init__(
        self,
        limiter: KeyLimiter,
        key_id: int,
        limits: KeyLimits,
        lease: str,
        state: LimitState,
        shared: bool,
    ) -> None:
        self.limiter = limiter
        self.key_id = key_id
        self.limits = limits
        self.lease = lease
        self.state = state
        self.shared = shared
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def finish(self, tokens: int = 0) -> None:
        """Charge TOKENS to the key and give back its concurrency slot; never blocks, never raises."""
        if self._done:
            return
        self._done = True
        try:
            count = max(0, int(tokens or 0))
        except (TypeError, ValueError, OverflowError):
            count = 0  # a provider's odd usage charges nothing rather than fail the answer
        try:
            self.limiter.finish(self, count)
        except Exception:  # noqa: BLE001 (the lease expires on its own)
            logger.exception("key limits: could not finish an admission")


class KeyLimiter:
    """Admit or refuse a key's calls against its limits; Redis at REDIS_URL if given, else memory."""

    def __init__(
        self,
        *,
        redis_url: str = "",
        prefix: str = "echo",
        when_redis_down: str = POLICY_LOCAL,
        clock: Callable[[], float] = time.time,
        local_max_keys: int = LOCAL_MAX_KEYS,
    ) -> None:
        self.outage = RedisOutage("key limits", when_redis_down)
        self.redis = RedisLimits(redis_url, prefix=prefix) if redis_url else None
        self.local = LocalLimits(max_keys=local_max_keys)
        self.when_redis_down = when_redis_down
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def _redis_usable(self) -> bool:
        return self.redis is not None and self.outage.usable()

    def _redis_failed(self, exc: BaseException) -> None:
        self.outage.failed(exc)

    async def admit(self, key_id: int, limits: KeyLimits) -> Admission | LimitRefusal | None:
        """Return the Admission of a call by KEY_ID, the refusal, or None for an unlimited key."""
        if not limits.any:
            return None
        lease = uuid.uuid4().hex
        now = self.clock()
        if self.redis is not None:
            if self._redis_usable():
                try:
                    found = await self.redis.admit(key_id, limits, lease, now)
                except Exception as exc:  # noqa: BLE001 (any Redis failure: the policy decides)
                    self._redis_failed(exc)
                else:
                    return self._result(found, key_id, limits, lease, shared=True)
            if self.when_redis_down == POLICY_REFUSE:
                return LimitRefusal("unavailable", REDIS_RETRY_SECONDS, LimitState(limits), 503)
        found = self.local.admit(key_id, limits, lease, now)
        return self._result(found, key_id, limits, lease, shared=False)

    def _result(
        self,
        found: LimitState | LimitRefusal,
        key_id: int,
        limits: KeyLimits,
        lease: str,
        *,
        shared: bool,
    ) -> Admission | LimitRefusal:
        if isinstance(found, LimitRefusal):
            return found
        return Admission(self, key_id, limits, lease, found, shared)

    def finish(self, admission: Admission, tokens: int) -> None:
        """Charge and release ADMISSION, in the store that admitted it."""
        now = self.clock()
        if not admission.shared or self.redis is None:
            self.local.finish(admission.key_id, admission.limits, admission.lease, tokens, now)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to talk to Redis from: the lease expires on its own
        task = loop.create_task(self._finish_shared(admission, tokens, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_shared(self, admission: Admission, tokens: int, now: float) -> None:
        assert self.redis is not None
        try:
            await self.redis.finish(
                admission.key_id, admission.limits, admission.lease, tokens, now
            )
        except Exception as exc:  # noqa: BLE001 (the lease expires; the tokens are lost)
            self._redis_failed(exc)

    async def drain(self) -> None:
        """Wait for the releases under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


_limiter: KeyLimiter | None = None


def key_limiter() -> KeyLimiter:
    """Return this process's limiter, made from the settings on first use."""
    global _limiter
    if _limiter is None:
        _limiter = KeyLimiter(**store_settings())
    return _limiter


def set_key_limiter(limiter: KeyLimiter | None) -> None:
    """Replace this process's limiter (tests); None makes the next use build it from settings."""
    global _limiter
    _limiter = limiter
