"""Echo in processes of its own, for the tests about several workers or a real server.

Ports, ``manage.py`` runs, uvicorn and daphne workers, written once for every test
that starts them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAPHNE = Path(sys.executable).with_name("daphne")
UVICORN = Path(sys.executable).with_name("uvicorn")


def free_port() -> int:
    """Return a loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict[str, str], *args: str) -> str:
    """Run ``manage.py ARGS`` with ENV; return its output."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def django_shell(env: dict[str, str], code: str) -> str:
    """Run CODE in ``manage.py shell`` with ENV; return its output."""
    return manage(env, "shell", "-c", code)


def start_daphne(env: dict[str, str]) -> tuple[int, subprocess.Popen[bytes]]:
    """Start a daphne worker of Echo with ENV on a free port; return (port, process)."""
    port = free_port()
    process = subprocess.Popen(
        [str(DAPHNE), "-b", "127.0.0.1", "-p", str(port), "echo_site.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return port, process


def start_uvicorn(
    env: dict[str, str], *, stderr: int = subprocess.PIPE
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start a uvicorn worker of Echo with ENV (lifespan on) on a free port; return (port, process)."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(UVICORN),
            "echo_site.asgi:application",
            "--host=127.0.0.1",
            f"--port={port}",
            "--lifespan=on",
            "--log-level=warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    return port, process


def stop_all(processes: list[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    """Stop PROCESSES as a supervisor would: SIGTERM to all at once, then SIGKILL to the stragglers."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
