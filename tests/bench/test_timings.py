"""Percentiles, added latency and stall detection, on made-up timings."""

from __future__ import annotations

import pytest

from bench.timings import added, gaps, percentile, ratio, round_orders, stalls, summary


def test_percentiles_interpolate_between_ranks():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # order does not matter


def test_percentile_refuses_nothing_and_bad_q():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_and_added():
    direct = summary([1.0] * 99 + [5.0])
    through = summary([3.0] * 99 + [12.0])
    assert direct["n"] == 100 and direct["max"] == 5.0
    assert added(through, direct) == {
        "p50": 2.0,
        "p99": pytest.approx(through["p99"] - direct["p99"]),
    }


def test_a_stall_is_a_gap_over_twice_the_interval():
    arrivals = [0, 50, 100, 150, 260, 310, 410.5]
    assert gaps(arrivals) == [50, 50, 50, 110, 50, 100.5]
    assert stalls(arrivals, 50) == [110, 100.5]
    assert stalls([0, 50, 100, 200], 50) == []  # exactly twice is not a stall
    assert stalls([0.0], 50) == []
    with pytest.raises(ValueError):
        stalls([0, 1], 0)


def test_ratio_is_none_without_a_positive_denominator():
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(1.0, -2.0) is None


def test_round_orders_let_no_system_always_follow_another() -> None:
    systems = ["direct", "echo_v1", "echo_chat", "daphne", "granian", "floor", "litellm"]
    orders = round_orders(systems, 300)
    assert all(sorted(order) == sorted(systems) for order in orders)
    follows = sum(1 for order in orders if order.index("echo_chat") == order.index("echo_v1") + 1)
    # A rotation put echo_chat right after echo_v1 in 6 rounds of 7; shuffled, about 1 in 7.
    assert follows < 0.3 * len(orders)
    firsts = {order[0] for order in orders}
    assert firsts == set(systems)
    assert round_orders(systems, 5) == round_orders(systems, 5), "seeded: runs compare"
