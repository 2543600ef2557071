"""CircuitBreaker: closed, open for a cooldown, one probe half-open, and the misconfigured mark."""

from __future__ import annotations

import pytest

from providers.runtime.circuit_breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown_seconds=10, clock=clock)


def test_it_opens_after_the_threshold_of_consecutive_failures(breaker) -> None:
    for _ in range(2):
        breaker.record_failure("unavailable")
        assert breaker.state == CLOSED and breaker.allow()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure("unavailable")
    assert breaker.state == CLOSED, "a success in between starts the count again"
    breaker.record_failure("timeout")
    assert breaker.state == OPEN and not breaker.allow()
    assert breaker.last_failure == "timeout"


def test_after_the_cooldown_exactly_one_probe_goes_through(breaker, clock) -> None:
    for _ in range(3):
        breaker.record_failure("unavailable")
    clock.now += 9.5
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(0.5)
    clock.now += 0.5
    assert breaker.state == HALF_OPEN
    assert breaker.allow() is True
    assert [breaker.allow() for _ in range(5)] == [False] * 5


def test_a_failed_probe_opens_it_for_another_cooldown(breaker, clock) -> None:
    for _ in range(3):
        breaker.record_failure("unavailable")
    clock.now += 10
    assert breaker.allow()
    breaker.record_failure("unavailable")
    assert breaker.state == OPEN and breaker.retry_in() == pytest.approx(10)


def test_a_good_probe_closes_it(breaker, clock) -> None:
    for _ in range(3):
        breaker.record_failure("unavailable")
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.consecutive_failures == 0
    assert all(breaker.allow() for _ in range(3))


def test_a_released_probe_can_be_taken_again(breaker, clock) -> None:
    for _ in range(3):
        breaker.record_failure("unavailable")
    clock.now += 10
    assert breaker.allow()
    breaker.release_probe()
    assert breaker.state == HALF_OPEN and breaker.allow()


def test_configure_keeps_the_state(breaker, clock) -> None:
    for _ in range(3):
        breaker.record_failure("unavailable")
    breaker.configure(failure_threshold=10, cooldown_seconds=60)
    clock.now += 30
    assert breaker.state == OPEN and breaker.retry_in() == pytest.approx(30)


def test_the_misconfigured_mark_shows_until_a_success_or_reset(breaker) -> None:
    breaker.record_failure("authentication_error")
    breaker.mark_misconfigured("Incorrect API key provided.")
    state = breaker.as_dict()
    assert state["misconfigured"] is True
    assert state["misconfigured_reason"] == "Incorrect API key provided."
    assert state["misconfigured_since"] is not None
    breaker.record_success()
    assert breaker.as_dict()["misconfigured"] is False
    breaker.mark_misconfigured("again")
    for _ in range(3):
        breaker.record_failure("authentication_error")
    breaker.reset()
    assert breaker.as_dict() == {
        "state": CLOSED,
        "consecutive_failures": 0,
        "failure_threshold": 3,
        "cooldown_seconds": 10,
        "retry_in_seconds": 0.0,
        "last_failure": None,
        "misconfigured": False,
        "misconfigured_reason": None,
        "misconfigured_since": None,
    }
