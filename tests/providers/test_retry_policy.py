"""RetryPolicy: full-jitter backoff, Retry-After obeyed up to the cap, never past the deadline."""

from __future__ import annotations

import random

import pytest

from providers.errors import BadRequestError, ProviderUnavailableError, RateLimitError
from providers.runtime.retry_policy import RetryPolicy


def test_defaults_come_from_the_routing_settings() -> None:
    assert RetryPolicy.from_config({}) == RetryPolicy(max_retries=2, max_wait=20.0)
    policy = RetryPolicy.from_config({"max_retries": 5, "retry_max_wait_seconds": 3})
    assert (policy.max_retries, policy.max_wait) == (5, 3.0)


def test_backoff_is_full_jitter_under_a_doubling_bound_capped() -> None:
    policy = RetryPolicy(max_retries=10, max_wait=1.0)
    rng = random.Random(1)
    for retry, bound in [(0, 0.25), (1, 0.5), (2, 1.0), (3, 1.0), (9, 1.0)]:
        waits = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= w <= bound for w in waits)
        # Spread over the whole range, not clustered at the bound.
        assert min(waits) < bound * 0.1 and max(waits) > bound * 0.9


def test_retry_after_is_the_wait_up_to_the_cap_and_the_deadline() -> None:
    policy = RetryPolicy(max_retries=2, max_wait=20)
    rng = random.Random(1)
    throttled = RateLimitError("slow down", retry_after=7)
    assert policy.wait_before_retry(0, throttled, remaining=60, rng=rng) == 7
    assert policy.wait_before_retry(0, throttled, remaining=7, rng=rng) is None
    too_long = RateLimitError("slow down", retry_after=21)
    assert policy.wait_before_retry(0, too_long, remaining=60, rng=rng) is None


@pytest.mark.parametrize(
    ("retry", "error"),
    [
        (2, ProviderUnavailableError("down")),  # the retries are spent
        (0, BadRequestError("bad")),  # it would fail again
    ],
)
def test_no_retry_when_spent_or_pointless(retry, error) -> None:
    policy = RetryPolicy(max_retries=2, max_wait=20)
    assert policy.wait_before_retry(retry, error, remaining=60, rng=random.Random()) is None


def test_a_backoff_longer_than_what_is_left_is_no_retry() -> None:
    policy = RetryPolicy(max_retries=5, max_wait=20)
    error = ProviderUnavailableError("down")
    rng = random.Random(3)
    assert policy.wait_before_retry(4, error, remaining=0.001, rng=rng) is None
