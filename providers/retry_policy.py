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

import random
from dataclasses import dataclass
from typing import Any

from providers.base import ROUTING_SETTINGS_SCHEMA
from providers.errors import ProviderError

#: The first backoff bound in seconds; it doubles with each retry.
BACKOFF_BASE_SECONDS = 0.25


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
        if error.retry_after is not None:
            wait = float(error.retry_after)
            if wait > self.max_wait:
                return None
        else:
            wait = self.backoff(retry, rng)
        if wait >= remaining:
            return None
        return wait
