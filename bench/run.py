"""`make bench`: start the fake upstream, Echo, the floor and LiteLLM; measure them interleaved; report.

    .venv/bin/python -m bench.run [--quick] [--skip-litellm] [--no-pin] [--out bench/results]

Systems: the upstream called directly; Echo as ``make run`` serves it
(``/v1/chat/completions`` and ``/chat``); Echo under the other ASGI servers;
the bare aiohttp forwarder (the floor); LiteLLM's proxy. Sections: (1) added
latency at c=1, (2) wrk throughput at p99 ≤ 50 ms with CPU per request,
(3) concurrent streams without a stall, (4) websockets against SSE and 1,000
sockets at once, (5) RSS; then a py-spy profile of Echo under load. Writes
``latest.md`` and ``latest.json`` (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import key_flood, litellm_peer, processes, worker_pauses, wrk_load, ws_probe
from bench.http_probe import HttpConnection, post_request
from bench.report import P99_LIMIT_MS, write_report
from bench.timings import added, gaps, ratio, round_orders, stalls, summary

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
UPSTREAM_KEY = "sk-bench-0000000000"
MODEL = "gpt-4o-mini"
MB = 1024 * 1024

WHOLE_PROMPT = "bench chunks=8"
STREAM_PROMPT = "bench chunks=8 interval_ms=2"
# Streams of 2 s whose starts are spread over the first second: for the last
# second all of them stream at once (a burst of simultaneous requests is section 2's job).
STALL_CHUNKS, STALL_INTERVAL_MS, STALL_RAMP_SECONDS = 40, 50, 1.0
STALL_PROMPT = f"bench chunks={STALL_CHUNKS} interval_ms={STALL_INTERVAL_MS}"
CROWD_CHUNKS = 10
CROWD_PROMPT = f"bench chunks={CROWD_CHUNKS} interval_ms=50"


@dataclass(frozen=True)
class Plan:
    """How long each section runs."""

    warmup: int
    whole_rounds: int
    stream_rounds: int
    wrk_steps: tuple[int, ...]
    wrk_seconds: float
    stream_steps: tuple[int, ...]
    ws_rounds: int
    crowd_sockets: int
    crowd_all_servers: bool
    profile_seconds: int
    breakdown_calls: int
    count_instructions: bool
    flood_connections: int
    flood_seconds: float


QUICK = Plan(20, 100, 30, (1, 4, 16, 64), 1, (32, 256), 20, 1000, False, 2, 300, False, 200, 1.0)
FULL = Plan(
    100,
    1000,
    300,
    (1, 4, 8, 16, 32, 64, 128),
    4,
    (16, 64, 128, 256),
    200,
    1000,
    True,
    5,
    2000,
    True,
    1000,
    4.0,
)


@dataclass
class System:
    """Something a client can call: KIND ``openai`` (``/v1/chat/completions``) or ``chat`` (``/chat``)."""

    key: str
    label: str
    service: processes.Service
    kind: str = "openai"
    model: str = MODEL
    token: str = UPSTREAM_KEY
    gateway: bool = True

    @property
    def port(self) -> int:
        return self.service.port

    def payload(self, prompt: str, stream: bool) -> dict:
        if self.kind == "chat":
            return {"prompt": prompt, "provider": "openai", "stream": stream}
        body: dict = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
        }
        return body

    @property
    def path(self) -> str:
        return "/chat" if self.kind == "chat" else "/v1/chat/completions"

    def request(self, prompt: str, stream: bool) -> bytes:
        headers = {"authorization": f"Bearer {self.token}"}
        return post_request(
            "127.0.0.1", self.port, self.path, self.payload(prompt, stream), headers
        )


@dataclass
class Bench:
    """One run's state: services, systems, results."""

    plan: Plan
    workdir: Path
    pin: bool
    services: list[processes.Service] = field(default_factory=list)
    systems: dict[str, System] = field(default_factory=dict)
    echo_servers: dict[str, processes.Service] = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    echo_key: str = ""
    echo_admin_key: str = ""  # reads Echo's /metrics (the worker's collector pauses)
    echo_env: dict[str, str] = field(default_factory=dict)
    upstream_url: str = ""

    @property
    def gateway_cpus(self) -> str | None:
        return "1" if self.pin else None

    @property
    def client_cpus(self) -> str | None:
        return "0" if self.pin else None

    def note(self, text: str) -> None:
        self.results.setdefault("notes", []).append(text)
        print(f"  note: {text}", flush=True)


# --- start-up ---------------------------------------------------------------


def echo_environment(workdir: Path, upstream_port: int) -> dict[str, str]:
    """Return the environment of Echo's production settings on SQLite, pointed at the upstream."""
    config_dir = workdir / "config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "production.yaml").write_text(
        "ai_providers:\n"
        "  openai:\n"
        f"    api_key: {UPSTREAM_KEY}\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n"
        f"    default_model: {MODEL}\n"
        "routing:\n  default: openai\n"
    )
    env = {
        **os.environ,
        "ECHO_ENV": "production",
        "SECRET_KEY": "bench-" + "x" * 40,
        "ECHO_ENCRYPTION_KEYS": "ZWNoby1iZW5jaC1lbmNyeXB0aW9uLWtleS0zMmJ5dGU=",
        "ECHO_HEALTH_INTERVAL_SECONDS": "0",
        "ECHO_VAR_DIR": str(workdir),
        "ECHO_CONFIG_DIR": str(config_dir),
        "DATABASE_URL": f"sqlite:///{workdir / 'echo.sqlite3'}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ECHO_UPSTREAM_ALLOW": "127.0.0.1",
        # Plain HTTP on loopback, as behind a TLS proxy: no redirect to https.
        "SECURE_SSL_REDIRECT": "false",
        # The c=1 websocket rounds send hundreds of frames a minute on one socket.
        "ECHO_WS_MESSAGES_PER_MINUTE": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    return env


def prepare_echo(env: dict[str, str]) -> str:
    """Migrate Echo's database, import the provider and return a new client key with chat scope."""
    manage = [sys.executable, "manage.py"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "sync_providers"], cwd=ROOT, env=env, check=True, **quiet)
    return issue_key(env, "bench", "chat")


def issue_key(env: dict[str, str], name: str, scope: str) -> str:
    """Return a new client key NAME with SCOPE (``chat``; ``admin`` reads Echo's ``/metrics``)."""
    return subprocess.run(
        [sys.executable, "manage.py", "issue_api_key", name, "--scope", scope],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def start_all(bench: Bench, skip_litellm: bool) -> None:
    """Start every service and define the systems; a peer that fails is recorded, not fatal."""
    logs = bench.workdir
    systems_state: dict[str, dict] = {}
    bench.results["systems"] = systems_state
    python_env = {**os.environ, "PYTHONPATH": str(ROOT)}

    up_port = processes.free_port()
    upstream = processes.start(
        "upstream",
        [sys.executable, "-m", "bench.fast_upstream", "--port", str(up_port)],
        port=up_port,
        env=python_env,
        cwd=ROOT,
        log_dir=logs,
        cpus=bench.client_cpus,
    )
    bench.services.append(upstream)
    processes.wait_until_answering(upstream, "/v1/models", 30)
    bench.systems["direct"] = System(
        "direct", "fake upstream, called directly", upstream, gateway=False
    )
    systems_state["direct"] = {"label": "fake upstream, called directly", "state": "ok"}

    env = echo_environment(bench.workdir, up_port)
    bench.upstream_url = f"http://127.0.0.1:{up_port}"
    bench.echo_key = prepare_echo(env)
    bench.echo_admin_key = issue_key(env, "bench-metrics", "admin")
    bench.echo_env = env
    makefile = (ROOT / "Makefile").read_text()
    main_port = processes.free_port()
    main_command = processes.make_run_command(
        makefile, bin_dir=str(BIN), host="127.0.0.1", port=main_port
    )
    main_server = Path(main_command[0]).name
    bench.results["make_run_server"] = main_server
    bench.results["make_run_command"] = " ".join(main_command[1:])
    echo = processes.start(
        "echo",
        main_command,
        port=main_port,
        env=env,
        cwd=ROOT,
        log_dir=logs,
        cpus=bench.gateway_cpus,
    )
    bench.services.append(echo)
    bench.echo_servers[main_server] = echo
    for server in ("uvicorn", "daphne", "granian"):
        if server == main_server:
            continue
        port = processes.free_port()
        command = processes.server_commands(str(BIN), port)[server]
        bench.echo_servers[server] = processes.start(
            f"echo-{server}",
            command,
            port=port,
            env=env,
            cwd=ROOT,
            log_dir=logs,
            cpus=bench.gateway_cpus,
        )
        bench.services.append(bench.echo_servers[server])

    floor_port = processes.free_port()
    floor = processes.start(
        "floor",
        [
            str(BIN / "uvicorn"),
            "bench.floor_forwarder:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(floor_port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--lifespan",
            "on",
            "--no-access-log",
            "--log-level",
            "warning",
        ],  # fmt: skip
        port=floor_port,
        env={**python_env, "BENCH_UPSTREAM": f"http://127.0.0.1:{up_port}"},
        cwd=ROOT,
        log_dir=logs,
        cpus=bench.gateway_cpus,
    )
    bench.services.append(floor)

    echo_label = f"Echo `/v1/chat/completions` (make run: {main_server}, 1 worker)"
    chat_label = f"Echo `/chat` (make run: {main_server}, 1 worker)"
    servers_map = {}
    for server, service in bench.echo_servers.items():
        try:
            processes.wait_until_answering(service, "/health", 60)
        except RuntimeError as exc:
            key = "echo_v1" if server == main_server else f"echo_{server}_v1"
            systems_state[key] = {"label": f"Echo under {server}", "state": f"failed: {exc}"}
            if server == main_server:
                raise
            continue
        if server == main_server:
            bench.systems["echo_v1"] = System(
                "echo_v1", echo_label, service, token=bench.echo_key, model=f"openai/{MODEL}"
            )
            bench.systems["echo_chat"] = System(
                "echo_chat", chat_label, service, kind="chat", token=bench.echo_key
            )
            systems_state["echo_v1"] = {"label": echo_label, "state": "ok"}
            systems_state["echo_chat"] = {"label": chat_label, "state": "ok"}
            servers_map[server] = "echo_v1"
        else:
            key = f"echo_{server}_v1"
            label = f"Echo `/v1/chat/completions` under {server} (1 worker)"
            bench.systems[key] = System(
                key, label, service, token=bench.echo_key, model=f"openai/{MODEL}"
            )
            systems_state[key] = {"label": label, "state": "ok"}
            servers_map[server] = key
    bench.results["servers"] = {
        s: servers_map[s] for s in ("daphne", "uvicorn", "granian") if s in servers_map
    }

    processes.wait_until_answering(floor, "/v1/models", 30)
    floor_label = "floor: raw ASGI + aiohttp client (uvicorn, uvloop, httptools)"
    bench.systems["floor"] = System("floor", floor_label, floor)
    systems_state["floor"] = {"label": floor_label, "state": "ok"}

    litellm_label = "LiteLLM proxy (1 worker, no retries, callbacks or database)"
    if skip_litellm:
        systems_state["litellm"] = {"label": litellm_label, "state": "skipped (--skip-litellm)"}
        return
    venv = ROOT / "var" / "bench" / "litellm-venv"
    print("LiteLLM: checking its virtual environment (first install takes minutes)", flush=True)
    program, how = litellm_peer.ensure_installed(venv)
    if program is None:
        systems_state["litellm"] = {"label": litellm_label, "state": f"not installed: {how}"}
        return
    bench.results.setdefault("versions", {})["LiteLLM"] = litellm_peer.version(venv)
    config = litellm_peer.write_config(
        bench.workdir / "litellm.yaml", f"http://127.0.0.1:{up_port}/v1"
    )
    port = processes.free_port()
    service = processes.start(
        "litellm",
        litellm_peer.command(program, config, port),
        port=port,
        env=litellm_peer.environment(dict(os.environ)),
        cwd=bench.workdir,
        log_dir=logs,
        cpus=bench.gateway_cpus,
    )
    bench.services.append(service)
    try:
        processes.wait_until_answering(service, "/health/liveliness", 180)
    except RuntimeError as exc:
        systems_state["litellm"] = {"label": litellm_label, "state": f"did not start: {exc}"}
        service.stop()
        return
    bench.systems["litellm"] = System("litellm", litellm_label, service)
    systems_state["litellm"] = {"label": litellm_label, "state": f"ok ({how})"}


# --- (1) latency at c=1 -----------------------------------------------------


async def warm_up(bench: Bench) -> None:
    for system in bench.systems.values():
        connection = HttpConnection("127.0.0.1", system.port)
        for stream in (False, True):
            request = system.request(STREAM_PROMPT if stream else WHOLE_PROMPT, stream)
            for _ in range(bench.plan.warmup):
                answer = await connection.exchange(request, keep_body=True)
                if answer.status != 200:
                    raise RuntimeError(
                        f"{system.key} answered {answer.status}: {answer.body[:300]!r}\n"
                        f"{system.service.log_tail()}"
                    )
        await connection.close()


async def measure_latency(bench: Bench) -> None:
    """Interleave every system round by round at c=1, non-streamed then streamed; summarize."""
    systems = list(bench.systems.values())
    connections = {s.key: HttpConnection("127.0.0.1", s.port) for s in systems}
    whole: dict[str, list[float]] = {s.key: [] for s in systems}
    ttft: dict[str, list[float]] = {s.key: [] for s in systems}
    chunk_gaps: dict[str, list[float]] = {s.key: [] for s in systems}
    stream_total: dict[str, list[float]] = {s.key: [] for s in systems}
    failures: Counter[str] = Counter()
    for stream, rounds, prompt in (
        (False, bench.plan.whole_rounds, WHOLE_PROMPT),
        (True, bench.plan.stream_rounds, STREAM_PROMPT),
    ):
        requests = {s.key: s.request(prompt, stream) for s in systems}
        for order in round_orders(systems, rounds):
            for system in order:
                answer = await connections[system.key].exchange(requests[system.key])
                if answer.status != 200 or (stream and not answer.chunk_ms):
                    failures[system.key] += 1
                    continue
                if stream:
                    ttft[system.key].append(answer.chunk_ms[0])
                    chunk_gaps[system.key].extend(gaps(answer.chunk_ms))
                    stream_total[system.key].append(answer.total_ms)
                else:
                    whole[system.key].append(answer.total_ms)
    for connection in connections.values():
        await connection.close()
    latency: dict[str, dict] = {}
    direct = {
        "nonstream": summary(whole["direct"]),
        "ttft": summary(ttft["direct"]),
        "gap": summary(chunk_gaps["direct"]),
    }
    for system in systems:
        row: dict = {}
        if whole[system.key]:
            row["nonstream"] = summary(whole[system.key])
            row["nonstream_added"] = added(row["nonstream"], direct["nonstream"])
        if ttft[system.key]:
            row["ttft"] = summary(ttft[system.key])
            row["ttft_added"] = added(row["ttft"], direct["ttft"])
            row["stream_total"] = summary(stream_total[system.key])
        if chunk_gaps[system.key]:
            row["gap"] = summary(chunk_gaps[system.key])
            row["gap_added"] = added(row["gap"], direct["gap"])
        if failures[system.key]:
            row["failures"] = failures[system.key]
            bench.note(f"{system.key}: {failures[system.key]} failed requests in the c=1 rounds")
        latency[system.key] = row
    bench.results["latency"] = latency


# --- (2) throughput ----------------------------------------------------------


async def run_wrk(bench: Bench, system: System, connections: int, seconds: float) -> dict:
    """Run wrk against SYSTEM with CONNECTIONS; add its CPU per request and RSS under load."""
    script = wrk_load.write_script(
        bench.workdir / f"wrk-{system.key}.lua",
        system.payload(WHOLE_PROMPT, False),
        {"Authorization": f"Bearer {system.token}"},
    )
    url = f"http://127.0.0.1:{system.port}{system.path}"
    pids = system.service.pids
    cpu_before = processes.cpu_seconds(pids)
    process = await asyncio.create_subprocess_exec(
        *wrk_load.command(url, script, connections=connections, seconds=seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    rss_max = 0
    reading = asyncio.ensure_future(process.communicate())
    while not reading.done():
        rss_max = max(rss_max, processes.rss_bytes(pids))
        await asyncio.wait([reading], timeout=0.2)
    output = reading.result()[0].decode(errors="replace")
    cpu = processes.cpu_seconds(pids) - cpu_before
    result = wrk_load.parse_output(output)
    result["connections"] = connections
    requests = result["requests"]
    result["cpu_ms_per_request"] = round(cpu * 1000 / requests, 4) if requests else None
    result["rss_max_mb"] = round(rss_max / MB, 1)
    return result


def better_step(best: dict | None, step: dict) -> dict:
    """Return whichever of BEST and STEP (both within the p99 limit) answered more req/s.

    A system's throughput is the most it served at p99 ≤ 50 ms: with one
    worker busy, a higher concurrency can serve a little less than a lower
    one (the steps are 4 s each), and that lower step is what it can do.
    """
    return step if best is None or step["rps"] > best["rps"] else best


async def measure_throughput(bench: Bench) -> None:
    """Step up wrk's connections, all systems per step; stop a system past p99 > 50 ms or errors.

    Each system's figure is its step with the most req/s within the limit (``better_step``).
    """
    active = list(bench.systems.values())
    table: dict[str, dict] = {s.key: {"steps": [], "best": None} for s in active}
    for connections in bench.plan.wrk_steps:
        for system in list(active):
            try:
                step = await run_wrk(bench, system, connections, bench.plan.wrk_seconds)
            except ValueError as exc:
                bench.note(f"wrk failed on {system.key} at c={connections}: {exc}")
                active.remove(system)
                continue
            table[system.key]["steps"].append(step)
            print(
                f"  wrk {system.key} c={connections}: {step['rps']:,.0f} req/s, "
                f"p99 {step['latency_ms']['p99']} ms, errors {step['errors']}",
                flush=True,
            )
            if step["latency_ms"]["p99"] <= P99_LIMIT_MS and step["errors"] == 0:
                table[system.key]["best"] = better_step(table[system.key]["best"], step)
            else:
                active.remove(system)
    bench.results["throughput"] = table


# --- (3) concurrent streams ----------------------------------------------------


async def stream_step(system: System, streams: int) -> dict:
    """Run STREAMS streams at once through SYSTEM; count the stalled ones and the errors."""
    connections = [HttpConnection("127.0.0.1", system.port) for _ in range(streams)]
    gate = asyncio.Semaphore(64)

    async def open_one(connection: HttpConnection) -> None:
        async with gate:
            await connection.open()

    await asyncio.gather(*(open_one(c) for c in connections), return_exceptions=True)
    request = system.request(STALL_PROMPT, True)

    async def one(index: int, connection: HttpConnection):
        await asyncio.sleep(STALL_RAMP_SECONDS * index / streams)
        try:
            async with asyncio.timeout(120):
                return await connection.exchange(request)
        except Exception as exc:
            return exc

    answers = await asyncio.gather(*(one(i, c) for i, c in enumerate(connections)))
    for connection in connections:
        await connection.close()
    errors, stalled, worst, firsts = 0, 0, 0.0, []
    samples = []
    for answer in answers:
        if isinstance(answer, BaseException) or answer.status != 200 or not answer.chunk_ms:
            errors += 1
            if len(samples) < 3:
                samples.append(repr(answer)[:200])
            continue
        firsts.append(answer.chunk_ms[0])
        found = stalls(answer.chunk_ms, STALL_INTERVAL_MS)
        stalled += bool(found)
        worst = max([worst, *gaps(answer.chunk_ms)])
    return {
        "streams": streams,
        "stalled_streams": stalled,
        "max_gap_ms": round(worst, 2),
        "errors": errors,
        "error_samples": samples,
        "ttft_p99_ms": summary(firsts)["p99"] if firsts else None,
    }


async def measure_streams(bench: Bench) -> None:
    """Step up concurrent streams, all systems per step; a system stops at its first stall or error."""
    keys = ["direct", "echo_v1", "echo_chat", "floor", "litellm"]
    active = [bench.systems[k] for k in keys if k in bench.systems]
    table: dict[str, dict] = {s.key: {"steps": [], "max_without_stall": 0} for s in active}
    bench.results["stream_shape"] = (
        f"{STALL_CHUNKS} chunks {STALL_INTERVAL_MS} ms apart, the streams' starts spread over "
        f"{STALL_RAMP_SECONDS:.0f} s (then all stream at once); a stall is a gap over "
        f"{2 * STALL_INTERVAL_MS} ms"
    )
    for streams in bench.plan.stream_steps:
        for system in list(active):
            echo = system.key.startswith("echo") and bench.echo_admin_key
            before = await worker_pauses.read(system.port, bench.echo_admin_key) if echo else None
            step = await stream_step(system, streams)
            after = await worker_pauses.read(system.port, bench.echo_admin_key) if echo else None
            if before is not None and after is not None:
                step["worker_pauses"] = after.since(before)
            table[system.key]["steps"].append(step)
            print(
                f"  streams {system.key} x{streams}: stalled {step['stalled_streams']}, "
                f"max gap {step['max_gap_ms']} ms, errors {step['errors']}"
                + (f", worker {step['worker_pauses']}" if "worker_pauses" in step else ""),
                flush=True,
            )
            if step["stalled_streams"] == 0 and step["errors"] == 0:
                table[system.key]["max_without_stall"] = streams
            else:
                active.remove(system)
    bench.results["streams"] = table


# --- (4) websockets ------------------------------------------------------------


async def websocket_rounds(bench: Bench, server: str, service: processes.Service) -> dict:
    """Ask the same answer over a websocket and over SSE ``/chat``, interleaved at c=1."""
    chat = System("sse", "", service, kind="chat", token=bench.echo_key)
    request = chat.request(STREAM_PROMPT, True)
    connection = HttpConnection("127.0.0.1", service.port)
    socket = await ws_probe.open_socket(service.port, bench.echo_key)
    ws_total, ws_first, sse_total, sse_first, errors = [], [], [], [], []
    try:
        for _ in range(max(5, bench.plan.warmup // 4)):
            await ws_probe.ask(socket, STREAM_PROMPT, "openai")
            await connection.exchange(request)
        for _ in range(bench.plan.ws_rounds):
            answer = await ws_probe.ask(socket, STREAM_PROMPT, "openai")
            if answer.ok and answer.chunk_ms:
                ws_total.append(answer.total_ms)
                ws_first.append(answer.chunk_ms[0])
            else:
                errors.append(answer.error)
            sse = await connection.exchange(request)
            if sse.status == 200 and sse.chunk_ms:
                sse_total.append(sse.total_ms)
                sse_first.append(sse.chunk_ms[0])
    finally:
        await socket.close()
        await connection.close()
    row: dict = {"errors": len(errors), "error_samples": errors[:3]}
    if ws_total and sse_total:
        row.update(
            ws_total=summary(ws_total),
            ws_ttft=summary(ws_first),
            sse_total=summary(sse_total),
            sse_ttft=summary(sse_first),
        )
        row["ratio_total"] = ratio(row["ws_total"]["p50"], row["sse_total"]["p50"])
        row["ratio_ttft"] = ratio(row["ws_ttft"]["p50"], row["sse_ttft"]["p50"])
    return row


async def websocket_crowd(bench: Bench, service: processes.Service, count: int) -> dict:
    """Open COUNT sockets on one worker, then stream an answer on all at once; count every error."""
    pids = service.pids
    rss_before = processes.rss_bytes(pids)
    gate = asyncio.Semaphore(100)

    async def open_one():
        async with gate:
            try:
                return await ws_probe.open_socket(service.port, bench.echo_key)
            except Exception as exc:
                return exc

    started = time.perf_counter()
    opened = await asyncio.gather(*(open_one() for _ in range(count)))
    sockets = [s for s in opened if not isinstance(s, BaseException)]
    open_errors = [repr(s)[:200] for s in opened if isinstance(s, BaseException)]
    open_seconds = time.perf_counter() - started
    await asyncio.sleep(0.5)
    rss_open = processes.rss_bytes(pids)
    rss_max = rss_open
    asking = asyncio.ensure_future(
        asyncio.gather(*(ws_probe.ask(s, CROWD_PROMPT, "openai", timeout=120) for s in sockets))
    )
    started = time.perf_counter()
    while not asking.done():
        rss_max = max(rss_max, processes.rss_bytes(pids))
        await asyncio.wait([asking], timeout=0.2)
    answers = asking.result()
    seconds = time.perf_counter() - started
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
    failed = [a.error for a in answers if not a.ok]
    short = sum(1 for a in answers if a.ok and len(a.chunk_ms) != CROWD_CHUNKS)
    return {
        "sockets": count,
        "opened": len(sockets),
        "open_seconds": round(open_seconds, 2),
        "errors": len(open_errors) + len(failed),
        "short_answers": short,
        "error_samples": (open_errors + failed)[:5],
        "seconds": round(seconds, 2),
        "rss_before_mb": round(rss_before / MB, 1),
        "rss_open_mb": round(rss_open / MB, 1),
        "rss_streaming_max_mb": round(rss_max / MB, 1),
        "rss_per_socket_kb": round((rss_open - rss_before) / max(1, len(sockets)) / 1024, 1),
    }


async def measure_websockets(bench: Bench) -> None:
    table: dict[str, dict] = {}
    main_server = bench.results["make_run_server"]
    for server, service in bench.echo_servers.items():
        if not service.alive():
            continue
        try:
            table[server] = await websocket_rounds(bench, server, service)
        except Exception as exc:
            table[server] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            bench.note(f"websocket rounds on {server} failed: {exc}")
            continue
        if server == main_server or bench.plan.crowd_all_servers:
            print(f"  websockets: {bench.plan.crowd_sockets} sockets on {server}", flush=True)
            table[server]["thousand"] = await websocket_crowd(
                bench, service, bench.plan.crowd_sockets
            )
            print(f"    {table[server]['thousand']}", flush=True)
    bench.results["websocket"] = table


# --- (5) memory, and the profile ---------------------------------------------


def measure_idle_rss(bench: Bench) -> dict[str, dict]:
    rss = {}
    for key, system in bench.systems.items():
        if system.gateway and key != "echo_chat":
            rss[key] = {"idle_mb": round(processes.rss_bytes(system.service.pids) / MB, 1)}
    return rss


def fill_load_rss(bench: Bench) -> None:
    for key, row in bench.results["rss"].items():
        steps = bench.results.get("throughput", {}).get(key, {}).get("steps", [])
        if steps:
            row["load_mb"] = max(s["rss_max_mb"] for s in steps)


# Leaves where a thread waits rather than works (py-spy samples idle pool threads too).
WAITING_LEAVES = ("_worker (concurrent/futures/thread.py)", "Condition.wait (threading.py)")
WAITING_LEAF_PREFIXES = (
    "Thread._wait_for_tstate_lock",
    "Event.wait",
    "Queue.get",
    "SimpleQueue.get",
)
# Frames that every sample of a thread passes through: left out of the inclusive list.
WRAPPER_FILES = (
    "threading.py", "click/", "uvicorn/main.py", "uvicorn/server.py", "uvicorn/_compat.py",
    "asyncio/runners.py", "concurrent/futures/thread.py", "(uvicorn)", "(granian",
)  # fmt: skip


def summarize_profile(raw: str, top: int = 15) -> dict:
    """Return the functions with the largest inclusive and self shares of py-spy's raw stacks.

    Samples of threads that wait (idle pool threads) are left out; so are the
    wrapper frames every sample passes through (thread start, the server's main).
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if frames[-1] in WAITING_LEAVES or frames[-1].startswith(WAITING_LEAF_PREFIXES):
            waiting += count
            continue
        total += count
        for name in set(frames):
            if not any(marker in name for marker in WRAPPER_FILES):
                inclusive[name] += count
        own[frames[-1]] += count
    if not total:
        return {"samples": 0, "waiting_samples": waiting, "inclusive": [], "self": []}

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "waiting_samples": waiting,
        "inclusive": shares(inclusive),
        "self": shares(own),
    }


def _frame_name(frame: str) -> str:
    """Return ``function (a/b/file.py)`` for py-spy's ``function (path:line)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


async def profile_echo(bench: Bench) -> None:
    """Record Echo's stacks with py-spy while wrk loads ``/v1/chat/completions``."""
    spy = BIN / "py-spy"
    system = bench.systems["echo_v1"]
    if not spy.exists():
        bench.results["profile"] = {"error": "py-spy is not installed (pip install '.[bench]')"}
        return
    out = bench.workdir / "echo-profile.txt"
    seconds = bench.plan.profile_seconds
    record = await asyncio.create_subprocess_exec(
        str(spy), "record", "--pid", str(system.service.process.pid), "--duration", str(seconds),
        "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    try:
        await run_wrk(bench, system, 8, seconds + 1)
    except ValueError:
        pass
    output = (await record.communicate())[0].decode(errors="replace")
    if not out.exists():
        bench.results["profile"] = {"error": f"py-spy failed: {output[-300:]}"}
        return
    profile = summarize_profile(out.read_text())
    profile["what"] = f"{system.label} under wrk with 8 connections for {seconds} s"
    bench.results["profile"] = profile


async def profile_in_process(bench: Bench) -> None:
    """Cut a ``/v1/chat/completions`` call's CPU into Echo's parts (``bench.inprocess_profile``)."""
    command = [
        sys.executable, "-m", "bench.inprocess_profile", "--key", bench.echo_key,
        "--model", f"openai/{MODEL}", "--requests", str(bench.plan.breakdown_calls),
    ]  # fmt: skip
    if bench.gateway_cpus is not None:
        command = ["taskset", "-c", bench.gateway_cpus, *command]
    bench.results["breakdown"] = await _json_printed(bench, command)


async def count_instructions(bench: Bench) -> None:
    """Count Echo's and the floor's instructions per call under callgrind (``bench.instruction_count``)."""
    if shutil.which("valgrind") is None:
        bench.results["instructions"] = {"error": "valgrind is not installed"}
        return
    command = [
        sys.executable, "-m", "bench.instruction_count", "--key", bench.echo_key,
        "--model", f"openai/{MODEL}", "--floor-upstream", bench.upstream_url,
    ]  # fmt: skip
    bench.results["instructions"] = await _json_printed(bench, command)


async def _json_printed(bench: Bench, command: list[str]) -> dict:
    """Run COMMAND with Echo's benchmark environment; return the JSON it prints, or its error."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env={**bench.echo_env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        return {"error": err.decode(errors="replace")[-600:]}
    return json.loads(out)


# --- (6) made-up keys -----------------------------------------------------------


async def measure_key_flood(bench: Bench) -> None:
    """A valid key's latency on Echo alone and during a flood of made-up keys (``bench.key_flood``)."""
    system = bench.systems.get("echo_v1")
    if system is None:
        return
    try:
        bench.results["key_flood"] = await key_flood.measure(
            f"http://127.0.0.1:{system.port}",
            system.token,
            model=system.model,
            connections=bench.plan.flood_connections,
            seconds=bench.plan.flood_seconds,
        )
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        bench.results["key_flood"] = {"error": f"{type(exc).__name__}: {exc}"}


# --- the run -------------------------------------------------------------------


def describe_machine() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "CPU": model,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "load average at the start (1, 5, 15 min)": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def describe_versions() -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    versions = {"Echo commit": f"{commit}{' (with uncommitted changes)' if dirty else ''}"}
    for package in (
        "Django",
        "channels",
        "uvicorn",
        "granian",
        "daphne",
        "httpx",
        "aiohttp",
        "websockets",
        "uvloop",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    wrk = shutil.which("wrk")
    if wrk:
        first = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        versions["wrk"] = (first.stdout or first.stderr).split("[")[0].strip()
    return versions


async def measure(bench: Bench) -> None:
    print("warming up", flush=True)
    await warm_up(bench)
    bench.results["rss"] = measure_idle_rss(bench)
    print("(1) latency at c=1", flush=True)
    await measure_latency(bench)
    print("(2) throughput (wrk)", flush=True)
    await measure_throughput(bench)
    fill_load_rss(bench)
    print("(3) concurrent streams", flush=True)
    await measure_streams(bench)
    print("(4) websockets", flush=True)
    await measure_websockets(bench)
    main = bench.results["make_run_server"]
    crowd = bench.results["websocket"].get(main, {}).get("thousand")
    if crowd and "echo_v1" in bench.results["rss"]:
        bench.results["rss"]["echo_v1"]["per_open_websocket_kb"] = crowd["rss_per_socket_kb"]
    print("(6) made-up keys", flush=True)
    await measure_key_flood(bench)
    print("profile (py-spy)", flush=True)
    await profile_echo(bench)
    print("profile (in-process breakdown)", flush=True)
    await profile_in_process(bench)
    if bench.plan.count_instructions:
        print("instructions per call (callgrind)", flush=True)
        await count_instructions(bench)


def run_loop(coroutine) -> None:
    """Run COROUTINE on uvloop when it is installed (a lighter client), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per section")
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk (as root), then run again", file=sys.stderr)
        return 2
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=ROOT / "var" / "bench"))
    bench = Bench(plan=QUICK if args.quick else FULL, workdir=workdir, pin=pin)
    bench.results.update(
        generated_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        mode="quick" if args.quick else "full",
        machine=describe_machine(),
        versions=describe_versions(),
    )
    if pin:
        os.sched_setaffinity(0, {0})
        bench.results["placement"] = (
            "gateways (every Echo server, the floor, LiteLLM) pinned to core 1; the fake upstream, "
            "wrk and the harness's clients to core 0 (taskset). The direct calls therefore share "
            "core 0 with the client."
        )
    else:
        bench.results["placement"] = "not pinned: every process shares every core"
    started = time.monotonic()
    failed = False
    try:
        print(f"starting services (logs in {workdir})", flush=True)
        start_all(bench, args.skip_litellm)
        bench.note(
            "Echo runs with ECHO_ENV=production on SQLite, one worker, no Redis, "
            "ECHO_WS_MESSAGES_PER_MINUTE raised for the c=1 websocket rounds; make run's "
            f"server command: `{bench.results['make_run_command']}`"
            + (
                " (uvicorn's access log on, as make run has it)."
                if bench.results["make_run_server"] == "uvicorn"
                and "--no-access-log" not in bench.results["make_run_command"]
                else "."
            )
        )
        run_loop(measure(bench))
    except Exception as exc:  # the report says where the run broke, with what it measured so far
        failed = True
        bench.note(f"THE RUN FAILED: {type(exc).__name__}: {str(exc)[:1500]}")
    finally:
        for service in reversed(bench.services):
            service.stop()
    bench.results["run_seconds"] = round(time.monotonic() - started, 1)
    # Other work on the machine moves every figure: the report shows how busy it was.
    bench.results["machine"]["load average at the end (1, 5, 15 min)"] = ", ".join(
        f"{v:.2f}" for v in os.getloadavg()
    )
    markdown, data = write_report(bench.results, args.out)
    print(markdown.read_text())
    print(f"wrote {markdown} and {data}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
