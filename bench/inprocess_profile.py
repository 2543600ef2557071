"""Where one chat call's CPU goes inside Echo: its ASGI app called in-process, profiled, cut into parts.

py-spy samples a served worker from outside, but uvloop runs each task's
step from C, so a sample's stack starts wherever the resumed coroutine chain
starts: the shares it reports for Echo's layers are fragments. Here the
application (``echo_site.asgi.application``, started through its ASGI
lifespan) answers REQUESTS non-streamed ``POST /v1/chat/completions`` calls
one after the other, each a whole ASGI exchange in memory, against the
benchmark's fake upstream over loopback, first timed (CPU per call) and then
under cProfile. The profile's cumulative times of a few boundary functions
cut each call into the parts below; cProfile's own cost per function call
inflates code made of many small calls, so the shares are approximate, the
order right. cProfile sees the event loop's thread alone: the CPU the
process's other threads spent meanwhile (the usage writer's, which makes
and inserts each call's row in the ORM's thread) is a part of its own,
from the unprofiled run's process and thread CPU times.

Run by ``bench.run`` with Echo's benchmark environment (its database, its
key, the upstream it points at):

    python -m bench.inprocess_profile --key KEY [--requests 2000]

It prints one JSON object: ``cpu_ms_per_call`` (unprofiled, every thread),
``loop_ms_per_call`` (the event loop's thread), ``parts`` (name, share of the
call in percent, what it holds) and ``calls``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from typing import Any

#: (file suffix, function name) of each boundary: a part is one boundary's
#: cumulative time less the boundaries inside it.
BOUNDARIES = {
    "whole": ("echo_site/asgi.py", "application"),
    "serve": ("plugins_api/compat/dispatch.py", "serve_chat"),
    "admit": ("plugins_api/compat/dispatch.py", "admit"),
    "limit": ("plugins_api/compat/dispatch.py", "limit"),
    "manager": ("providers/runtime/manager.py", "chat_completion"),
    "plugin": ("providers/plugins/openai_provider.py", "chat_completion"),
    "upstream": ("providers/http_provider.py", "request_json"),
    # The upstream exchange: the request sent, the answer read, the connection given back.
    "session": ("providers/upstream/session.py", "_send"),
    "session_read": ("providers/upstream/session.py", "read"),
    "session_finish": ("providers/upstream/session.py", "finish"),
    "usage": ("plugins_api/edge/request_usage.py", "answered"),
    # The usage recorded once the answer is written (``plugins_api.edge.after_answer``).
    "deferred": ("plugins_api/edge/after_answer.py", "run_deferred"),
    # The access-log lines, written in batches after the answers (``echo_site.access_log``),
    # outside the calls' own time: through ``logging`` a line at a time, or a batch straight
    # to the console handler (``echo_site.access_log_console``); one of the two, never both.
    "log": ("echo_site/access_log.py", "_write"),
    "log_console": ("echo_site/access_log.py", "_write_to_console"),
}
#: The parts, in the order a call meets them, and what each holds.
PARTS = (
    (
        "edge",
        "ASGI entry, body limit and key check, hot path, Django's request, middleware and "
        "response writing",
    ),
    ("admit", "authentication, the body's JSON and fields, the key's limits and budget"),
    ("manager", "routing, breaker, retries and deadline, the request's options"),
    ("plugin", "the OpenAI wire format: the upstream body, the answer parsed"),
    ("upstream json", "the upstream body encoded and its answer decoded (orjson)"),
    ("upstream http", "aiohttp under UpstreamSession: send, read, pool"),
    (
        "usage",
        "the usage row queued, metrics, the key's tokens and budget charged (after the answer "
        "is written)",
    ),
    ("answer", "the answer's body and headers"),
    (
        "access log",
        "the request's access-log line (made, redacted, formatted, written), in a batch after the "
        "answer",
    ),
)
#: The part cProfile cannot see: it profiles the event loop's thread only.
THREAD_PART = (
    "usage rows",
    "the usage rows made and written to the database in the ORM's thread (the CPU of the "
    "process's other threads)",
)


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Return the cumulative seconds of the function NAME in a file ending in SUFFIX (0: not seen)."""
    total = 0.0
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        if function == name and filename.endswith(suffix):
            total += row[3]
    return total


def split(stats: pstats.Stats) -> dict[str, float]:
    """Return each part's seconds (see ``PARTS``) from STATS."""
    t = {key: cumulative(stats, *where) for key, where in BOUNDARIES.items()}
    upstream_http = t["session"] + t["session_read"] + t["session_finish"]
    return {
        "edge": t["whole"] - t["serve"] - t["deferred"],
        "admit": t["admit"] + t["limit"],
        "manager": t["manager"] - t["plugin"],
        "plugin": t["plugin"] - t["upstream"],
        "upstream json": t["upstream"] - upstream_http,
        "upstream http": upstream_http,
        "usage": t["usage"] + t["deferred"],
        "answer": t["serve"] - t["admit"] - t["limit"] - t["manager"] - t["usage"],
        "access log": t["log"] + t["log_console"],
    }


def shares(seconds: dict[str, float], cpu_ms: float, loop_ms: float) -> dict[str, float]:
    """Return each part's share of a call's CPU, in percent: SECONDS (``split``) cut LOOP_MS of CPU_MS.

    cProfile times the event loop's thread alone; what the process's other
    threads spent (CPU_MS less LOOP_MS, the usage writer's) is a part of its own.
    """
    whole = sum(seconds.values()) or 1.0
    loop_share = min(1.0, loop_ms / cpu_ms) if cpu_ms > 0 else 1.0
    result = {name: 100 * loop_share * value / whole for name, value in seconds.items()}
    result[THREAD_PART[0]] = 100 * (1 - loop_share)
    return result


def _scope(key: str, body: bytes) -> dict[str, Any]:
    path = "/v1/chat/completions"
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def _call(application: Any, scope: dict[str, Any], body: bytes) -> int:
    """Make one whole ASGI exchange; return its status."""
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    never = asyncio.get_running_loop().create_future()
    status = 0

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        return await never  # the client stays: no http.disconnect

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await application(dict(scope), receive, send)
    never.cancel()
    return status


async def start_lifespan(app: Any, timeout: float = 600) -> tuple[asyncio.Task, asyncio.Queue]:
    """Start APP's ASGI lifespan; return its task and its queue once the start-up completed.

    A start-up that raises or fails is raised here, not waited for.
    """
    queue: asyncio.Queue = asyncio.Queue()
    replies: list[dict[str, Any]] = []
    replied = asyncio.Event()

    async def reply(message: dict[str, Any]) -> None:
        replies.append(message)
        replied.set()

    await queue.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan"}, queue.get, reply))
    waiting = asyncio.create_task(replied.wait())
    await asyncio.wait({waiting, lifespan}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if lifespan.done():
        lifespan.result()  # its start-up raised: say why
    if not replies or replies[0]["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the application did not start: {replies[:1]}")
    return lifespan, queue


async def measure(key: str, requests: int, model: str) -> dict[str, Any]:
    from echo_site.asgi import application

    lifespan, queue = await start_lifespan(application, timeout=60)
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "bench chunks=8"}]}
    ).encode()
    scope = _scope(key, body)
    for _ in range(300):
        status = await _call(application, scope, body)
        if status != 200:
            raise RuntimeError(f"Echo answered {status}")
    await _write_usage_rows()  # the warm-up's
    started, loop_started = time.process_time(), time.thread_time()
    for _ in range(requests):
        await _call(application, scope, body)
    await _write_usage_rows()  # their CPU is the call's
    cpu_ms = (time.process_time() - started) * 1000 / requests
    loop_ms = (time.thread_time() - loop_started) * 1000 / requests
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        await _call(application, scope, body)
    profiler.disable()
    await queue.put({"type": "lifespan.shutdown"})
    await lifespan
    share = shares(split(pstats.Stats(profiler)), cpu_ms, loop_ms)
    return {
        "calls": requests,
        "cpu_ms_per_call": round(cpu_ms, 3),
        "loop_ms_per_call": round(loop_ms, 3),
        "parts": [
            {"part": name, "share": round(share[name], 1), "holds": holds}
            for name, holds in (*PARTS, THREAD_PART)
        ],
    }


async def _write_usage_rows() -> None:
    """Write the usage rows still queued (their writer waits for a batch or its interval)."""
    from providers.runtime import process as runtime

    await runtime.usage_recorder.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(measure(args.key, args.requests, args.model))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
