"""What a flood of made-up keys costs the other clients: a valid key's latency alone and during one.

A hostile client opens CONNECTIONS connections and sends, on each, chat
calls with a new made-up key every time, as fast as the answers come. A
valid key (KEY) meanwhile calls one call after the other, for SECONDS, on a
connection of its own. The report: the valid key's p50 and p99 alone (before
the flood) and during it, and how many made-up calls were answered, with
which statuses.

    python -m bench.key_flood --url http://127.0.0.1:8000 --key KEY \
        [--model echo-1] [--connections 1000] [--seconds 4]

``make bench`` runs it on Echo's ``/v1/chat/completions`` (section 6 of its
report); by hand, against ``make run``, it prints one JSON object
(docs/BENCHMARKS.md, "Made-up keys"). The client and the server share the
machine: the ratio of the two latencies is the figure, not either time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import aiohttp

from bench.timings import percentile

PATH = "/v1/chat/completions"


async def _call(
    session: aiohttp.ClientSession, url: str, key: str, body: bytes
) -> tuple[int, float]:
    """Send one chat call with KEY; return its status and its time in ms."""
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with session.post(url + PATH, data=body, headers=headers) as answer:
        await answer.read()
        return answer.status, (time.perf_counter() - started) * 1000


async def _valid_calls(
    session: aiohttp.ClientSession, url: str, key: str, body: bytes, seconds: float
) -> list[float]:
    """Call with the valid KEY one call after another for SECONDS; return each call's ms (all must be 200)."""
    times: list[float] = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        status, ms = await _call(session, url, key, body)
        if status != 200:
            raise RuntimeError(f"the valid key was answered {status}")
        times.append(ms)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "calls": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
    }


async def measure(
    url: str, key: str, *, model: str, connections: int, seconds: float
) -> dict[str, Any]:
    """Return the valid key's latency alone and during a flood of made-up keys, and the flood's answers."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    valid = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    hostile = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))
    statuses: Counter[int] = Counter()
    flooding = True

    async def flood(connection: int) -> None:
        sent = 0
        while flooding:
            made_up = f"echo-made-up-{connection}-{sent}-{'x' * 24}"
            status, _ = await _call(hostile, url, made_up, body)
            statuses[status] += 1
            sent += 1

    try:
        alone = await _valid_calls(valid, url, key, body, seconds)
        floods = [asyncio.create_task(flood(n)) for n in range(connections)]
        await asyncio.sleep(min(1.0, seconds / 4))  # every connection under way
        during = await _valid_calls(valid, url, key, body, seconds)
        flooding = False
        await asyncio.gather(*floods)
    finally:
        await valid.close()
        await hostile.close()
    return {
        "connections": connections,
        "seconds": seconds,
        "valid_alone": _summary(alone),
        "valid_during_flood": _summary(during),
        "made_up_answered": sum(statuses.values()),
        "made_up_statuses": {str(status): count for status, count in sorted(statuses.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", default="echo-1")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    result = asyncio.run(
        measure(
            args.url.rstrip("/"),
            args.key,
            model=args.model,
            connections=args.connections,
            seconds=args.seconds,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
