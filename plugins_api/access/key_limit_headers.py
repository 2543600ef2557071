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


def openai_headers(state: LimitState) -> dict[str, str]:
    """Return OpenAI's ``x-ratelimit-*`` headers for STATE."""
    headers: dict[str, str] = {}
    limits = state.limits
    if limits.requests_per_minute is not None and state.requests_remaining is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(state.requests_remaining)
        headers["x-ratelimit-reset-requests"] = duration(state.requests_reset)
    if limits.tokens_per_minute is not None and state.tokens_remaining is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(state.tokens_remaining)
        headers["x-ratelimit-reset-tokens"] = duration(state.tokens_reset)
    return headers


def anthropic_headers(state: LimitState) -> dict[str, str]:
    """Return Anthropic's ``anthropic-ratelimit-*`` headers for STATE."""
    headers: dict[str, str] = {}
    limits = state.limits
    if limits.requests_per_minute is not None and state.requests_remaining is not None:
        headers["anthropic-ratelimit-requests-limit"] = str(limits.requests_per_minute)
        headers["anthropic-ratelimit-requests-remaining"] = str(state.requests_remaining)
        headers["anthropic-ratelimit-requests-reset"] = _timestamp(state.requests_reset)
    if limits.tokens_per_minute is not None and state.tokens_remaining is not None:
        headers["anthropic-ratelimit-tokens-limit"] = str(limits.tokens_per_minute)
        headers["anthropic-ratelimit-tokens-remaining"] = str(state.tokens_remaining)
        headers["anthropic-ratelimit-tokens-reset"] = _timestamp(state.tokens_reset)
    return headers
