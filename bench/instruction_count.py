"""Instructions per chat call, Echo's and the floor's: a measure of CPU that the machine's noise cannot move.

Timed CPU per call moves by ±15% between two runs of the same code on these
shared machines, and their speed changed threefold between this project's
runs: a cut of 2% cannot be seen, nor told from a slower hour. Valgrind's
callgrind counts the instructions a process executes instead, whatever
else the machine does; two runs of the same code agree within about 3%.

Each system (Echo's ASGI application, or the floor's, ``bench.floor_forwarder``)
answers non-streamed ``POST /v1/chat/completions`` calls in-process, one after
the other, against the benchmark's fake upstream (as ``bench.inprocess_profile``
does), under callgrind: once with FEW calls, once with MANY, after the same
warm-up. Start-up, warm-up and shutdown cost both runs the same, so the
difference of their totals over ``MANY - FEW`` is what one call costs,
every thread of the process included (Echo's usage writer too), the kernel's
work (the sockets' system calls) not. Under valgrind a run takes 50 to 100
times as long: about a minute and a half for each here. Echo's access-log
lines are written in full batches meanwhile, as at load
(``batch_lines_by_count``), not in the few lines valgrind's pace would leave
a 0.1 s batch.

    python -m bench.instruction_count --key KEY [--floor-upstream URL]

prints one JSON object (``echo`` and ``floor``: instructions per call, and
their ``ratio``; ``streamed``: the same for one chunk of a streamed answer);
``bench.run`` runs it with Echo's benchmark environment.

A streamed chunk is counted the same way: streamed calls of SHORT_STREAM and
of LONG_STREAM chunks (the upstream sends them at once), each counted as a
call is; the two calls' difference over their chunks' difference is what
one chunk costs, every layer between the upstream's event and the client's
included. Until 2026-11-27 only the non-streamed call was counted, and a
streamed chunk cost Echo nine times what it costs the floor (133,000
instructions against 13,700), twice the call's ratio.
Run with ``--driver`` it is the program valgrind runs: one system, one count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: Calls of the short and the long run, and the warm-up both make first.
FEW, MANY, WARM_UP = 100, 400, 100
#: The streamed calls' runs (each call a stream), and the two stream lengths whose difference is counted.
STREAM_FEW, STREAM_MANY = 40, 160
SHORT_STREAM, LONG_STREAM = 8, 40
SYSTEMS = ("echo", "floor")
_TOTAL = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def per_call(few_total: int, many_total: int, few: int = FEW, many: int = MANY) -> float:
    """Return the instructions one call costs: the two runs' difference over their calls' difference."""
    if many <= few:
        raise ValueError("the long run must make more calls than the short one")
    return (many_total - few_total) / (many - few)


def read_total(callgrind_out: bytes) -> int:
    """Return the instructions a callgrind output file counts in all (its ``summary``/``totals`` line)."""
    found = _TOTAL.search(callgrind_out)
    if found is None:
        raise ValueError("no instruction total in callgrind's output")
    return int(found.group(1))


# --- the driver: what valgrind runs ------------------------------------------

#: How long an access-log batch may wait under the count: longer than any run.
COUNTED_BATCH_SECONDS = 3600.0


def batch_lines_by_count() -> None:
    """Have Echo's access log write its lines in full batches, as a loaded worker does.

    A batch is what ``access_log.BATCH_SECONDS`` (0.1 s) gathers, or
    ``BATCH_LINES`` (32) lines. A worker under ``make bench``'s load fills
    32 in a few milliseconds; under valgrind a call takes fifty to a hundred
    times as long, and a batch would hold one to three lines, each paying a
    batch's own cost (about 35,000 instructions): the line would count four
    times what it costs at load. Until 2026-11-27 13:10 UTC the count ran
    with the time window (docs/BENCHMARKS.md).
    """
    from echo_site import access_log

    access_log.pending.seconds = COUNTED_BATCH_SECONDS


async def drive(system: str, calls: int, key: str, model: str, stream_chunks: int = 0) -> None:
    """Answer WARM_UP and then CALLS chat calls with SYSTEM's application, in-process.

    With STREAM_CHUNKS, each call is streamed, of that many chunks.
    """
    from bench.inprocess_profile import _call, _scope, start_lifespan

    if system == "echo":
        from echo_site.asgi import application as app

        batch_lines_by_count()
    else:
        from bench.floor_forwarder import app
    lifespan, messages = await start_lifespan(app)
    shape = {"model": model, "messages": [{"role": "user", "content": "bench chunks=8"}]}
    if stream_chunks:
        shape["stream"] = True
        shape["messages"][0]["content"] = f"bench chunks={stream_chunks}"
    body = json.dumps(shape).encode()
    scope = _scope(key, body)
    for _ in range(WARM_UP + calls):
        status = await _call(app, scope, body)
        if status != 200:
            raise RuntimeError(f"{system} answered {status}")
    await messages.put({"type": "lifespan.shutdown"})
    await lifespan  # Echo's shutdown writes the usage rows still queued


# --- the harness ---------------------------------------------------------------


def count(
    system: str, calls: int, *, key: str, model: str, env: dict[str, str], stream_chunks: int = 0
) -> int:
    """Return the instructions a process makes answering CALLS calls with SYSTEM, under callgrind.

    With STREAM_CHUNKS, the calls are streams of that many chunks.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        command = [
            valgrind, "--tool=callgrind", f"--callgrind-out-file={out}",
            "--dump-instr=no", "--collect-jumps=no",
            sys.executable, "-m", "bench.instruction_count", "--driver", system,
            "--calls", str(calls), "--key", key, "--model", model,
            "--stream-chunks", str(stream_chunks),
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, timeout=3600)
        if done.returncode != 0 or not out.exists():
            tail = done.stderr.decode(errors="replace")[-600:]
            raise RuntimeError(f"{system} under callgrind failed: {tail}")
        return read_total(out.read_bytes())


def instructions_per_call(system: str, *, key: str, model: str, env: dict[str, str]) -> float:
    """Return SYSTEM's instructions per call: its short and long runs made side by side."""
    with ThreadPoolExecutor(2) as pool:
        few, many = pool.map(
            lambda calls: count(system, calls, key=key, model=model, env=env), (FEW, MANY)
        )
    return per_call(few, many)


def per_chunk(short_call: float, long_call: float) -> float:
    """Return what one streamed chunk costs: a long stream's call less a short one's, over their chunks' difference."""
    return (long_call - short_call) / (LONG_STREAM - SHORT_STREAM)


def instructions_per_chunk(system: str, *, key: str, model: str, env: dict[str, str]) -> float:
    """Return SYSTEM's instructions per streamed chunk.

    Four runs, two at a time: streams of SHORT_STREAM and of LONG_STREAM
    chunks, each STREAM_FEW and STREAM_MANY calls; a stream's call from each
    pair (``per_call``), then a chunk from the two calls (``per_chunk``).
    """

    def stream_call(chunks: int) -> float:
        with ThreadPoolExecutor(2) as pool:
            few, many = pool.map(
                lambda calls: count(
                    system, calls, key=key, model=model, env=env, stream_chunks=chunks
                ),
                (STREAM_FEW, STREAM_MANY),
            )
        return per_call(few, many, STREAM_FEW, STREAM_MANY)

    return per_chunk(stream_call(SHORT_STREAM), stream_call(LONG_STREAM))


def measure(key: str, model: str, floor_upstream: str) -> dict[str, Any]:
    """Return Echo's and the floor's instructions per call and per streamed chunk, and their ratios."""
    env = {**os.environ, "BENCH_UPSTREAM": floor_upstream}
    echo = instructions_per_call("echo", key=key, model=model, env=env)
    floor = instructions_per_call("floor", key=key, model=model, env=env)
    echo_chunk = instructions_per_chunk("echo", key=key, model=model, env=env)
    floor_chunk = instructions_per_chunk("floor", key=key, model=model, env=env)
    return {
        "calls": {"few": FEW, "many": MANY, "warm_up": WARM_UP},
        "echo": round(echo),
        "floor": round(floor),
        "ratio": round(echo / floor, 3) if floor > 0 else None,
        "streamed": {
            "calls": {"few": STREAM_FEW, "many": STREAM_MANY},
            "chunks": {"short": SHORT_STREAM, "long": LONG_STREAM},
            "echo_per_chunk": round(echo_chunk),
            "floor_per_chunk": round(floor_chunk),
            "ratio": round(echo_chunk / floor_chunk, 3) if floor_chunk > 0 else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--floor-upstream", default=os.environ.get("BENCH_UPSTREAM", ""))
    parser.add_argument("--driver", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=FEW, help=argparse.SUPPRESS)
    parser.add_argument("--stream-chunks", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(drive(args.driver, args.calls, args.key, args.model, args.stream_chunks))
        return 0
    if not args.floor_upstream:
        parser.error("--floor-upstream (or BENCH_UPSTREAM) names the fake upstream")
    json.dump(measure(args.key, args.model, args.floor_upstream), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
