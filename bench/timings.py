"""The statistics of a benchmark: percentiles, added latency, and stalls in a stream's chunk times.

Pure functions on lists of numbers (milliseconds, or seconds for arrival
times), so that they can be checked on made-up timings.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float:
    """Return the Q-th percentile (0-100) of VALUES, interpolated between the nearest ranks.

    Raise ``ValueError`` on an empty sequence or a Q outside 0-100.
    """
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Return n, p50, p90, p99 and max of VALUES (rounded to µs when in ms)."""
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 4),
        "p90": round(percentile(values, 90), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
    }


def added(through: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    """Return what a gateway adds: p50 and p99 of THROUGH minus those of DIRECT."""
    return {q: round(through[q] - direct[q], 4) for q in ("p50", "p99")}


def gaps(arrivals: Sequence[float]) -> list[float]:
    """Return the gaps between consecutive arrival times (same unit as ARRIVALS)."""
    return [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]


def stalls(arrivals: Sequence[float], interval: float, factor: float = 2.0) -> list[float]:
    """Return the gaps in ARRIVALS longer than FACTOR times the upstream's INTERVAL: the stalls."""
    if interval <= 0:
        raise ValueError("a stall needs a positive chunk interval")
    limit = factor * interval
    return [gap for gap in gaps(arrivals) if gap > limit]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return NUMERATOR / DENOMINATOR, or None when either is missing or DENOMINATOR is not > 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 3)


def round_orders(items: Sequence[T], rounds: int, seed: int = 16) -> list[list[T]]:
    """Return the order of ITEMS in each of ROUNDS rounds: shuffled anew each round (seeded).

    Not rotated: in a rotation each item always follows the same one, and two
    systems served by one process (``echo_v1`` and ``echo_chat``) would have
    the second always find the process warm from the first. Shuffled, every
    system follows every other alike, and none is always first.
    """
    rng = random.Random(seed)
    orders = []
    for _ in range(rounds):
        order = list(items)
        rng.shuffle(order)
        orders.append(order)
    return orders
