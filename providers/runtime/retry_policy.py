"""RetryPolicy: how long to wait before trying a provider again, if at all.

The ModelManager owns retries (provider HTTP clients make none of their
own); this module holds its arithmetic, apart from the routing loop so that
it can be read and tested on its own. Waits use exponential backoff with
full jitter (a uniform draw between 0 and the exponential bound), which
spreads the retries of many clients that failed together; a ``Retry-After``
from the upstream is obeyed as given, unless it is longer than the policy's
cap or the time left, in which case the request fails over instead of
waiting.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from providers.base import ROUTING_SETTINGS_SCHEMA
from providers.errors import ProviderError

#: The first backoff bound in seconds; it doubles with each retry.
BACKOFF_BASE_SECONDS = 0.25

#: The longest wait an upstream may ask for, in seconds (a day). A longer ask,
#: infinite included, counts as this: more than any retry cap allows, so the
#: request fails over, and the client is told a Retry-After it can print.
MAX_RETRY_AFTER_SECONDS = 86400.0

# A plain decimal number, as upstreams send in Retry-After and retry-after-ms.
# float() alone would also take "inf", "nan", "1_000" and surrounding spaces.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Longer text is no delay anyone means; do not spend time parsing it.
_MAX_HEADER_LENGTH = 64


def retry_after_seconds(value: Any) -> float | None:
    """Return VALUE (seconds) as a wait between 0 and ``MAX_RETRY_AFTER_SECONDS``.

    None when VALUE is no number (None, NaN, text): the caller then backs off
    on its own schedule. Infinite and huge values are clamped to the maximum.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float's range
        return MAX_RETRY_AFTER_SECONDS if value > 0 else 0.0
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _header_number(text: str) -> float | None:
    text = text.strip()
    if len(text) > _MAX_HEADER_LENGTH or not _NUMBER.fullmatch(text):
        return None
    return float(text)  # a huge exponent gives inf, which retry_after_seconds clamps


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Return the wait an upstream asked for in HEADERS, in seconds, or None.

    ``retry-after-ms`` (OpenAI's) wins over ``Retry-After``, which is either
    seconds or an HTTP date. Whatever the upstream sends (negative, infinite,
    NaN, a date in year 9999, garbage), the answer is None or a number
    between 0 and ``MAX_RETRY_AFTER_SECONDS``.
    """
    millis = _header_number(headers.get("retry-after-ms") or "")
    if millis is not None:
        return retry_after_seconds(millis / 1000)
    value = (headers.get("retry-after") or "").strip()
    if not value or len(value) > _MAX_HEADER_LENGTH:
        return None
    seconds = _header_number(value)
    if seconds is not None:
        return retry_after_seconds(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, OSError, IndexError):
        return None
    return retry_after_seconds(when - time.time())


def routing_setting(config: dict[str, Any], name: str) -> Any:
    """Return routing setting NAME from a provider CONFIG, or its schema default."""
    value = config.get(name)
    return ROUTING_SETTINGS_SCHEMA[name]["default"] if value is None else value


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry settings of one provider."""

    max_retries: int = ROUTING_SETTINGS_SCHEMA["max_retries"]["default"]
    max_wait: float = ROUTING_SETTINGS_SCHEMA["retry_max_wait_seconds"]["default"]
    base_delay: float = BACKOFF_BASE_SECONDS

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RetryPolicy:
        """Return the policy a provider CONFIG sets (schema defaults where unset)."""
        return cls(
            max_retries=int(routing_setting(config, "max_retries")),
            max_wait=float(routing_setting(config, "retry_max_wait_seconds")),
        )

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Return a fully jittered wait before retry number RETRY (0 for the first)."""
        bound = min(self.max_wait, self.base_delay * 2**retry)
        return rng.uniform(0.0, bound)

    def wait_before_retry(
        self, retry: int, error: ProviderError, remaining: float, rng: random.Random
    ) -> float | None:
        """Return how long to wait before retry number RETRY after ERROR, or None not to retry.

        None means: move on to the next provider now. That is the answer when
        the retries are spent, when ERROR is not retryable, and when the wait
        (Retry-After, or the backoff) is longer than the cap or than the
        REMAINING seconds of the request's deadline, since a retry that
        cannot start in time is worth less than a fallback that can.
        """
        if not error.retryable or retry >= self.max_retries:
            return None
        # A plugin may set any retry_after; a NaN or infinite one must not
        # reach asyncio.sleep or the Retry-After the client is sent.
        asked = retry_after_seconds(error.retry_after)
        if asked is not None:
            wait = asked
            if wait > self.max_wait:
                return None
        else:
            wait = self.backoff(retry, rng)
        if wait >= remaining:
            return None
        return wait
