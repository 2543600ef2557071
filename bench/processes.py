"""The processes a benchmark runs: start, wait for, measure (CPU time, RSS from /proc) and stop.

Also the command lines: Echo exactly as ``make run`` serves it (read from
the Makefile's ``run:`` recipe, so the benchmark follows the Makefile), and
Echo under each ASGI server the report compares.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_run_command(makefile: str, *, bin_dir: str, host: str, port: int) -> list[str]:
    """Return the server command line of MAKEFILE's ``run:`` recipe (its last command).

    ``$(BIN)``, ``$(HOST)`` and ``$(PORT)`` are replaced; continuation lines
    are joined. Raise ``ValueError`` if there is no ``run:`` recipe.
    """
    lines = makefile.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if re.match(r"run\s*:", line))
    except StopIteration:
        raise ValueError("the Makefile has no run: target") from None
    recipe: list[str] = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    commands: list[str] = []
    pending = ""
    for line in recipe:
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    if not commands:
        raise ValueError("the run: target has no commands")
    command = commands[-1]
    for name, value in (("BIN", bin_dir), ("HOST", host), ("PORT", str(port))):
        command = command.replace(f"$({name})", value)
    return shlex.split(command)


def server_commands(bin_dir: str, port: int) -> dict[str, list[str]]:
    """Return Echo under each compared server, one worker each, on loopback PORT."""
    app = "echo_site.asgi:application"
    return {
        "uvicorn": [
            f"{bin_dir}/uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "websockets-sansio",
            "--lifespan",
            "on",
            "--no-access-log",  # as make run: Echo logs each request itself (echo_site.access_log)
        ],  # fmt: skip
        "daphne": [f"{bin_dir}/daphne", "-b", "127.0.0.1", "-p", str(port), app],
        "granian": [
            f"{bin_dir}/granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--log-level",
            "warning",
            app,
        ],  # fmt: skip
    }


def children(pid: int) -> list[int]:
    """Return PID and every process descended from it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(parents.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """Return the user plus system CPU time the processes PIDS have used, in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """Return the resident memory of the processes PIDS, summed, in bytes."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


@dataclass
class Service:
    """A started process: its name, port, command and log file."""

    name: str
    port: int
    process: subprocess.Popen
    log: Path
    command: list[str] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return children(self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for pid in reversed(self.pids):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait(timeout=5)


def start(
    name: str,
    command: list[str],
    *,
    port: int,
    env: dict[str, str],
    cwd: Path,
    log_dir: Path,
    cpus: str | None = None,
) -> Service:
    """Start COMMAND (pinned to CPUS with taskset when given), its output in LOG_DIR/NAME.log."""
    log = log_dir / f"{name}.log"
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Service(name=name, port=port, process=process, log=log, command=command)


def wait_until_answering(
    service: Service, path: str, timeout: float, headers: dict[str, str] | None = None
) -> None:
    """Wait until ``GET PATH`` on SERVICE gets any HTTP answer; raise RuntimeError on timeout or exit."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{service.port}{path}"
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited: {service.log_tail()}")
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2)
            return
        except urllib.error.HTTPError:
            return  # an HTTP answer, whatever its status
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{service.name} did not answer {path} within {timeout:.0f} s")
