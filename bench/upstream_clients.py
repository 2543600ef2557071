"""What each upstream HTTP client costs per call: httpx, httpx over aiohttp, aiohttp, Echo's own.

One run starts a minimal upstream in its own process (raw asyncio, TCP_NODELAY,
pre-encoded answers: an OpenAI chat completion, or its Server-Sent Events
stream of ``--chunks`` events) and calls it from this process with each client,
interleaved round by round so that machine noise hits every client alike. For
each client it reports the latency of a call (p50/p99) at concurrency 1 and
``--concurrency``, non-streamed and streamed (time to the first event and to
the end of the stream), and the client process's CPU time per call.

Clients:
  httpx          httpx.AsyncClient, its default transport (httpcore)
  httpx-aiohttp  httpx.AsyncClient over httpx_aiohttp.AiohttpTransport (when installed)
  aiohttp        aiohttp.ClientSession, no httpx: the floor
  echo           UpstreamSession: aiohttp under Echo's policy-checked connector, no httpx.
                 Called through an OpenAIProvider's post_json and stream_sse, so a call is
                 what Echo's HTTPProvider does: encode the JSON body, send it, read the
                 answer, parse its JSON or its Server-Sent Events (the policy check runs
                 per new connection only, so a pooled call costs the same)

    .venv/bin/python bench/upstream_clients.py [--rounds 20] [--calls 50] [--concurrency 16]
        [--chunks 20] [--loop uvloop|asyncio] [--out bench/results/upstream_clients.md]

Not run by the test suite; it takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
STREAM_REQUEST = {**REQUEST, "stream": True}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "You said: hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }
).encode()


# --- the upstream (runs in a child process) ---------------------------------------


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_events(chunks: int) -> list[bytes]:
    """Return the SSE events of a streamed answer, each one HTTP chunk."""
    events = []
    for index in range(chunks):
        delta = {"content": f"w{index} "}
        event = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        events.append(_chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
    events.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return events


async def serve(port: int, chunks: int, interval: float) -> None:
    """Answer every POST on PORT: a JSON completion, or an SSE stream when the body asks."""
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(ANSWER),
        ANSWER,
    )
    stream_head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    events = stream_events(chunks)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if b'"stream": true' in body or b'"stream":true' in body:
                    writer.write(stream_head)
                    for event in events:
                        writer.write(event)
                        if interval:
                            await writer.drain()
                            await asyncio.sleep(interval)
                else:
                    writer.write(plain)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- the clients ---------------------------------------------------------------------

Call = Callable[[bool], Awaitable[tuple[float, float]]]


def _now() -> float:
    return time.perf_counter()


def httpx_caller(client) -> Call:
    """Return a call through an httpx.AsyncClient: (time to first event, time to the end)."""

    async def call(stream: bool) -> tuple[float, float]:
        started = _now()
        if not stream:
            response = await client.post("/v1/chat/completions", json=REQUEST)
            response.json()
            done = _now() - started
            return done, done
        first = None
        async with client.stream("POST", "/v1/chat/completions", json=STREAM_REQUEST) as response:
            async for line in response.aiter_lines():
                if first is None and line.startswith("data:"):
                    first = _now() - started
        return first or 0.0, _now() - started

    return call


def aiohttp_caller(session, base: str) -> Call:
    """Return a call through an aiohttp.ClientSession."""
    url = f"{base}/v1/chat/completions"

    async def call(stream: bool) -> tuple[float, float]:
        started = _now()
        if not stream:
            async with session.post(url, json=REQUEST) as response:
                await response.json()
            done = _now() - started
            return done, done
        first = None
        async with session.post(url, json=STREAM_REQUEST) as response:
            async for line in response.content:
                if first is None and line.startswith(b"data:"):
                    first = _now() - started
        return first or 0.0, _now() - started

    return call


def provider_caller(provider) -> Call:
    """Return a call through an HTTPProvider's ``post_json`` and ``stream_sse``: Echo's own path."""

    async def call(stream: bool) -> tuple[float, float]:
        started = _now()
        if not stream:
            await provider.post_json("/chat/completions", REQUEST)
            done = _now() - started
            return done, done
        first = None
        async for _event in provider.stream_sse("/chat/completions", STREAM_REQUEST):
            if first is None:
                first = _now() - started
        return first or 0.0, _now() - started

    return call


async def build_clients(base: str, names: list[str]) -> tuple[dict[str, Call], list]:
    """Return a caller per client NAME that can be built here, and what to close after."""
    import aiohttp
    import httpx

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    callers: dict[str, Call] = {}
    closers: list = []
    for name in names:
        if name == "httpx":
            client = httpx.AsyncClient(base_url=base, limits=limits, trust_env=False)
            callers[name], _ = httpx_caller(client), closers.append(client.aclose)
        elif name == "httpx-aiohttp":
            try:
                from httpx_aiohttp import AiohttpTransport
            except ImportError:
                print(
                    "httpx-aiohttp: not installed (make bench installs it: the bench extra); skipped"
                )
                continue

            client = httpx.AsyncClient(
                base_url=base, trust_env=False, transport=AiohttpTransport(limits=limits)
            )
            callers[name], _ = httpx_caller(client), closers.append(client.aclose)
        elif name == "aiohttp":
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
            callers[name], _ = aiohttp_caller(session, base), closers.append(session.close)
        elif name == "echo":
            from providers.plugins.openai_provider import OpenAIProvider

            provider = OpenAIProvider({"api_key": "sk-bench", "base_url": f"{base}/v1"}, name="b")
            await provider.initialize()
            callers[name], _ = provider_caller(provider), closers.append(provider.shutdown)
        else:
            raise SystemExit(f"unknown client {name!r}")
    return callers, closers


# --- measuring -----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def batch(
    call: Call, stream: bool, concurrency: int, calls: int
) -> list[tuple[float, float]]:
    """Make CALLS calls, CONCURRENCY at a time; return each call's (first event, end) times."""
    results: list[tuple[float, float]] = []
    per_worker = max(1, calls // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            results.append(await call(stream))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def measure(args: argparse.Namespace, base: str) -> list[dict]:
    callers, closers = await build_clients(base, args.clients)
    rows = []
    try:
        scenarios = [(c, s) for c in (1, args.concurrency) for s in (False, True)]
        for concurrency, stream in scenarios:
            for call in callers.values():  # warm up: connections, imports, caches
                await batch(call, stream, concurrency, max(concurrency, 20))
            samples: dict[str, list[tuple[float, float]]] = {n: [] for n in callers}
            cpu: dict[str, float] = dict.fromkeys(callers, 0.0)
            for _ in range(args.rounds):
                order = list(callers)
                random.shuffle(order)
                for name in order:
                    cpu_start = time.process_time()
                    samples[name] += await batch(
                        callers[name], stream, concurrency, args.calls * concurrency // 4 or 1
                    )
                    cpu[name] += time.process_time() - cpu_start
            for name, values in samples.items():
                ends = [end * 1000 for _, end in values]
                firsts = [first * 1000 for first, _ in values]
                rows.append(
                    {
                        "client": name,
                        "concurrency": concurrency,
                        "stream": stream,
                        "calls": len(values),
                        "p50_ms": percentile(ends, 0.5),
                        "p99_ms": percentile(ends, 0.99),
                        "first_p50_ms": percentile(firsts, 0.5) if stream else None,
                        "first_p99_ms": percentile(firsts, 0.99) if stream else None,
                        "cpu_us_per_call": cpu[name] / len(values) * 1e6,
                    }
                )
    finally:
        for close in closers:
            await close()
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Upstream clients: latency per call against a raw asyncio upstream",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"loop {args.loop}; {args.rounds} interleaved rounds; streamed answers have "
        f"{args.chunks} events. Client CPU is this process's CPU time per call "
        "(the upstream runs in its own process).",
        "",
        "| client | c | stream | calls | p50 ms | p99 ms | first event p50 / p99 ms | CPU µs/call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        first = f"{row['first_p50_ms']:.3f} / {row['first_p99_ms']:.3f}" if row["stream"] else "-"
        lines.append(
            f"| {row['client']} | {row['concurrency']} | {'yes' if row['stream'] else 'no'} "
            f"| {row['calls']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {first} "
            f"| {row['cpu_us_per_call']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50, help="calls per client per round at c=1")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=0.0, help="gap between events")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--clients",
        nargs="+",
        default=["httpx", "httpx-aiohttp", "aiohttp", "echo"],
    )
    parser.add_argument(
        "--httpx-log",
        action="store_true",
        help="keep httpx's INFO line per request (Echo's settings log it unless told otherwise)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the child: serve on PORT
    args = parser.parse_args()
    run = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    if args.serve:
        run(serve(args.serve, args.chunks, args.interval_ms / 1000))
        return

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echo_site.settings")
    import django

    django.setup()  # the echo client reads the upstream policy from settings
    if not args.httpx_log:
        # httpx logs every request at INFO; that is a logging cost, not a client's.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            "--chunks",
            str(args.chunks),
            "--interval-ms",
            str(args.interval_ms),
            "--loop",
            args.loop,
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        rows = run(measure(args, f"http://127.0.0.1:{port}"))
    finally:
        server.terminate()
        server.wait(5)
    report = render(rows, args)
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
