"""What Echo adds to a request: Echo in front of the fake OpenAI upstream vs the upstream alone.

One run starts the fake OpenAI upstream and one Echo worker (uvicorn, as
`make run` serves it), then sends the same chat request alternately to the
upstream directly and through Echo's ``/chat`` (and ``/chat`` streamed),
one at a time on kept-alive connections, and reports the latency of each
and the ratio. Rounds are interleaved so that machine noise hits both sides.

    .venv/bin/python bench/overhead.py [--requests 500] [--out bench/results/overhead.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Tell me something short about benchmarks"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 30.0, **kwargs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1, **kwargs)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SERVERS = {
    "daphne": lambda port: [
        str(Path(sys.executable).with_name("daphne")),
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "echo_site.asgi:application",
    ],
    "uvicorn": lambda port: [
        str(Path(sys.executable).with_name("uvicorn")),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--lifespan",
        "on",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "echo_site.asgi:application",
    ],
}


def start_services(workdir: Path, server: str) -> tuple[list[subprocess.Popen], str, str, str]:
    """Start the fake upstream and Echo; return (processes, fake base_url, echo url, chat key)."""
    python = sys.executable
    fake_port, echo_port = free_port(), free_port()
    fake = subprocess.Popen(
        [python, "-m", "providers.testing.fake_openai", "--port", str(fake_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fake_base = f"http://127.0.0.1:{fake_port}/v1"
    config_dir = workdir / "config"
    config_dir.mkdir()
    (config_dir / "production.yaml").write_text(
        "ai_providers:\n"
        "  openai:\n"
        "    api_key: sk-bench-0000000000\n"
        f"    base_url: {fake_base}\n"
        "    default_model: gpt-4o-mini\n"
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
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
        "ALLOWED_HOSTS": "127.0.0.1",
        # Plain HTTP on loopback, as behind a TLS proxy: no redirect to https.
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    manage = [python, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [*manage, "sync_providers"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    key = subprocess.run(
        [*manage, "issue_api_key", "bench", "--scope", "chat"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    echo = subprocess.Popen(
        SERVERS[server](echo_port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "echo.log", "w"),
    )
    echo_url = f"http://127.0.0.1:{echo_port}"
    wait_for(f"{fake_base}/models", headers={"Authorization": "Bearer x"})
    wait_for(f"{echo_url}/health")
    return [fake, echo], fake_base, echo_url, key


def run(requests: int, server: str) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        processes, fake_base, echo_url, key = start_services(Path(tmp), server)
        try:
            direct = httpx.Client(base_url=fake_base, headers={"Authorization": "Bearer sk-bench"})
            echo = httpx.Client(base_url=echo_url, headers={"Authorization": f"Bearer {key}"})
            direct_body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": PROMPT}],
            }
            echo_body = {"prompt": PROMPT, "provider": "openai"}
            openai_body = {**direct_body, "model": "openai/gpt-4o-mini"}
            timings: dict[str, list[float]] = {
                "direct": [],
                "echo": [],
                "echo_v1": [],
                "echo_stream": [],
            }

            def timed(name: str, send) -> None:
                started = time.perf_counter()
                response = send()
                elapsed = (time.perf_counter() - started) * 1000
                assert response.status_code == 200, (
                    response.text,
                    (Path(tmp) / "echo.log").read_text()[-3000:],
                )
                timings[name].append(elapsed)

            def stream_echo():
                with echo.stream("POST", "/chat", json={**echo_body, "stream": True}) as response:
                    for _ in response.iter_bytes():
                        pass
                    return response

            for _ in range(50):  # warm up connections, caches and the JIT-less interpreter
                direct.post("/chat/completions", json=direct_body)
                echo.post("/chat", json=echo_body)
            for _ in range(requests):
                timed("direct", lambda: direct.post("/chat/completions", json=direct_body))
                timed("echo", lambda: echo.post("/chat", json=echo_body))
                timed("echo_v1", lambda: echo.post("/v1/chat/completions", json=openai_body))
                timed("echo_stream", stream_echo)
            return timings
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=10)


def report(timings: dict[str, list[float]], requests: int, server: str) -> str:
    direct_p50 = statistics.median(timings["direct"])
    lines = [
        f"# Echo overhead ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()})",
        "",
        f"{requests} interleaved rounds, concurrency 1, kept-alive connections; "
        f"Echo = one {server} worker, SQLite, `/chat` to the `openai` provider on the fake upstream.",
        "",
        "| path | p50 ms | p90 ms | p99 ms | p50 added by Echo | p50 ratio to direct |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("direct", "fake upstream directly"),
        ("echo", "through Echo /chat"),
        ("echo_v1", "through Echo /v1/chat/completions"),
        ("echo_stream", "through Echo /chat, streamed"),
    ):
        values = timings[name]
        p50 = statistics.median(values)
        added = "" if name == "direct" else f"{p50 - direct_p50:.2f}"
        ratio = f"{p50 / direct_p50:.2f}x"
        lines.append(
            f"| {label} | {p50:.2f} | {percentile(values, 0.9):.2f} | "
            f"{percentile(values, 0.99):.2f} | {added} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--server", choices=sorted(SERVERS), default="uvicorn")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    table = report(run(args.requests, args.server), args.requests, args.server)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)


if __name__ == "__main__":
    main()
