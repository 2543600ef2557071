"""CircuitBreaker: stop sending traffic to a provider that keeps failing.

Closed, it counts consecutive failures; at ``failure_threshold`` it opens
and refuses traffic for ``cooldown_seconds``. Then it is half-open: exactly
one caller (a request or a health check) is let through as a probe; success
closes it, failure opens it for another cooldown. State lives in the
process, like the provider instances it guards; ``on_transition`` hears when
it opens or closes, so that ``providers.runtime.shared_breakers`` can tell
the other workers, whose news arrives through ``open_from_peer`` and
``close_from_peer`` (which tell no one, so news never echoes back).

A breaker also remembers that its provider is *misconfigured* (the upstream
refused its credentials): the provider is broken rather than busy, which a
status page should say apart from an outage. A success clears the mark.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class BreakerNews(Protocol):
    """Where a breaker's transitions go to reach the other workers."""

    def publish(self, name: str, breaker: CircuitBreaker) -> None:
        """Tell the others that provider NAME's BREAKER opened or closed; never block, never raise."""


@dataclass(slots=True)
class CircuitBreaker:
    """The breaker of one provider."""

    failure_threshold: int = 5
    cooldown_seconds: float = 30.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    consecutive_failures: int = 0
    opened_at: float | None = None
    probe_in_flight: bool = False
    last_failure: str | None = None
    misconfigured: str | None = None
    misconfigured_since: float | None = None
    # Called with OPEN when the breaker opens (from closed, or a failed probe), CLOSED when it closes.
    on_transition: Callable[[str], None] | None = field(default=None, repr=False)

    @property
    def state(self) -> str:
        """Return ``closed``, ``open`` or ``half_open``."""
        if self.opened_at is None:
            return CLOSED
        if self.clock() - self.opened_at < self.cooldown_seconds:
            return OPEN
        return HALF_OPEN

    def allow(self) -> bool:
        """Return whether a call may go through now; in half-open, claim the one probe."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """Note a call that succeeded: the breaker closes and the provider is no longer misconfigured."""
        was_open = self.opened_at is not None
        self._close()
        if was_open and self.on_transition is not None:
            self.on_transition(CLOSED)

    def record_failure(self, reason: str | None = None) -> None:
        """Note a call that failed; open at the threshold, or again after a failed probe."""
        self.consecutive_failures += 1
        self.last_failure = reason
        was_probe = self.probe_in_flight
        was_closed = self.opened_at is None
        self.probe_in_flight = False
        if (
            was_probe
            or self.opened_at is not None
            or (self.consecutive_failures >= self.failure_threshold)
        ):
            self.opened_at = self.clock()
            # A failure while already open only pushes the cooldown on: no news for the others.
            if (was_closed or was_probe) and self.on_transition is not None:
                self.on_transition(OPEN)

    def open_from_peer(self, *, remaining: float, reason: str | None = None) -> None:
        """Open because another worker's breaker opened; let a probe through in REMAINING seconds."""
        remaining = min(max(0.0, remaining), self.cooldown_seconds)
        self.opened_at = self.clock() - (self.cooldown_seconds - remaining)
        self.consecutive_failures = max(self.consecutive_failures, self.failure_threshold)
        self.probe_in_flight = False
        if reason:
            self.last_failure = reason

    def close_from_peer(self) -> None:
        """Close because a call to the provider succeeded in another worker."""
        self._close()

    def _close(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self.probe_in_flight = False
        self.clear_misconfigured()

    def release_probe(self) -> None:
        """Give the probe back unused (the call ended with neither success nor failure)."""
        self.probe_in_flight = False

    def mark_misconfigured(self, reason: str) -> None:
        """Note that the upstream refused the provider's credentials (REASON says how)."""
        if self.misconfigured is None:
            self.misconfigured_since = time.time()
        self.misconfigured = reason

    def clear_misconfigured(self) -> None:
        """Forget the misconfigured mark (a call succeeded, or the configuration changed)."""
        self.misconfigured = None
        self.misconfigured_since = None

    def reset(self) -> None:
        """Close the breaker and forget its failures and marks."""
        self.record_success()
        self.last_failure = None

    def retry_in(self) -> float:
        """Return the seconds until the breaker lets a probe through (0 when it would now)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_seconds - (self.clock() - self.opened_at))

    def configure(self, *, failure_threshold: int, cooldown_seconds: float) -> None:
        """Apply new thresholds, keeping the current state."""
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds

    def as_dict(self) -> dict[str, Any]:
        """Return the breaker's state for status pages."""
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "failure_threshold": self.failure_threshold,
            "cooldown_seconds": self.cooldown_seconds,
            "retry_in_seconds": round(self.retry_in(), 3),
            "last_failure": self.last_failure,
            "misconfigured": self.misconfigured is not None,
            "misconfigured_reason": self.misconfigured,
            "misconfigured_since": self.misconfigured_since,
        }
