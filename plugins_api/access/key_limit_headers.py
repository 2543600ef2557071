"""The rate-limit headers of a key's calls, in each API's own names.

A refused call carries ``Retry-After`` (whole seconds) everywhere, and
``retry-after-ms`` too, which OpenAI's SDK prefers. The counters go as
each vendor sends them, so that their SDKs and dashboards read them:

- OpenAI: ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
  ``x-ratelimit-reset-requests`` (a duration such as ``12s`` or ``1m0s``)
  and the same with ``-tokens``;
- Anthropic: ``anthropic-ratelimit-requests-limit``, ``-remaining`` and
  ``-reset`` (an RFC 3339 time), and the same with ``tokens``;
- Echo's ``/chat``: OpenAI's names.

Only the limits a key has are described; an unlimited key gets none.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable

from plugins_api.access.key_limits import LimitRefusal, LimitState


def duration(seconds: float) -> str:
    """Return SECONDS as OpenAI writes a reset: ``250ms``, ``12s``, ``1m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text


def _timestamp(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(time.time() + seconds, tz=dt.UTC)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def retry_headers(refusal: LimitRefusal) -> dict[str, str]:
    """Return the headers that say how long a refused call should wait."""
    return {
        "Retry-After": str(refusal.retry_after_seconds),
        "retry-after-ms": str(max(1, math.ceil(refusal.retry_after * 1000))),
    }


def _counters(
    state: LimitState, name: Callable[[str, str], str], reset: Callable[[float], str]
) -> dict[str, str]:
    """Return STATE's counters, each header named by NAME(kind, field), resets written by RESET."""
    headers: dict[str, str] = {}
    limits = state.limits
    for kind, limit, remaining, resets_in in (
        ("requests", limits.requests_per_minute, state.requests_remaining, state.requests_reset),
        ("tokens", limits.tokens_per_minute, state.tokens_remaining, state.tokens_reset),
    ):
        if limit is not None and remaining is not None:
            headers[name(kind, "limit")] = str(limit)
            headers[name(kind, "remaining")] = str(remaining)
            headers[name(kind, "reset")] = reset(resets_in)
    return headers


def openai_headers(state: LimitState) -> dict[str, str]:
    """Return OpenAI's ``x-ratelimit-*`` headers for STATE."""
    return _counters(state, lambda kind, field: f"x-ratelimit-{field}-{kind}", duration)


def anthropic_headers(state: LimitState) -> dict[str, str]:
    """Return Anthropic's ``anthropic-ratelimit-*`` headers for STATE."""
    return _counters(state, lambda kind, field: f"anthropic-ratelimit-{kind}-{field}", _timestamp)
