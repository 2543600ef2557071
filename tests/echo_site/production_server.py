"""Echo served in a subprocess exactly as ``make run`` serves it, and a raw HTTP/1.1 client.

The server command is read from the Makefile's ``run`` target, so these tests
exercise the production command line, not a copy of it. A subprocess keeps
the server's memory apart from the test's, so its RSS can be measured.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.migrated_databases import install_migrated_sqlite
from tests.server_processes import ROOT, free_port, manage


def make_run_command(port: int) -> list[str]:
    """Return the server command of the Makefile's ``run`` target, for PORT on loopback."""
    recipe = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(
        line.strip() for line in recipe.splitlines() if line.strip().startswith("$(BIN)/uvicorn ")
    )
    line = (
        line.replace("$(BIN)", str(Path(sys.executable).parent))
        .replace("$(HOST)", "127.0.0.1")
        .replace("$(PORT)", str(port))
    )
    return shlex.split(line)


def rss_bytes(pid: int) -> int:
    """Return the resident memory of process PID."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@dataclass
class ProductionEcho:
    """An Echo server process with its own SQLite database, one echo provider and a chat key."""

    var_dir: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    key: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.var_dir / "server.log"

    def env(self) -> dict[str, str]:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if k
            not in {"DATABASE_URL", "REDIS_URL", "ECHO_ENCRYPTION_KEYS", "DJANGO_SETTINGS_MODULE"}
        }
        return {
            **inherited,
            "ECHO_ENV": "test",
            "ECHO_VAR_DIR": str(self.var_dir),
            "SECRET_KEY": "production-server-test",
            **self.settings,
        }

    def start(self) -> ProductionEcho:
        env = self.env()
        if not (self.var_dir / "echo.sqlite3").exists():
            install_migrated_sqlite(self.var_dir)
        self.key = (
            manage(
                env,
                "shell",
                "-c",
                "from providers.config.services import provider_config_create as c;"
                "c(name='echo', plugin='echo', settings={'prefix': 'Echo: '}, is_default=True);"
                "from plugins_api.access.key_changes import client_key_issue as k;"
                "print(k(name='server-test', scope='chat')[1])",
            )
            .strip()
            .splitlines()[-1]
        )
        self.port = free_port()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                make_run_command(self.port), cwd=ROOT, env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not come up: {self.log.read_text()}")

    def stop(self) -> int | None:
        """Stop the server as a process manager does (SIGTERM); return its exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise

    def rss(self) -> int:
        assert self.process is not None
        return rss_bytes(self.process.pid)


@dataclass
class RawAnswer:
    """A response (its JSON, or its text), and how many body bytes the client had sent by then."""

    status: int
    headers: dict[str, str]
    body: Any
    sent: int
    seconds: float


def chunks_of(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """Yield TOTAL bytes of JSON-ish filler, SIZE at a time, made as they are asked for."""
    block = b" " * size
    whole, rest = divmod(total, size)
    for _ in range(whole):
        yield block
    if rest:
        yield block[:rest]


def raw_post(
    port: int,
    path: str,
    *,
    body: Iterable[bytes],
    content_length: int | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> RawAnswer:
    """POST BODY to PATH over one raw HTTP/1.1 connection; return the response.

    With CONTENT_LENGTH the body is sent as declared (possibly less of it than
    declared); without, it is sent chunked. A thread sends while this one
    reads, so a response that comes before the body is all sent is seen
    at once, with the number of bytes sent by then.
    """
    chunked = content_length is None
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {content_length}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    started = time.monotonic()
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    sent = 0
    stop = threading.Event()

    def pump() -> None:
        nonlocal sent
        try:
            for chunk in body:
                if stop.is_set():
                    return
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
                sent += len(chunk)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            return  # the server closed the connection: it refused the rest

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    try:
        raw = _read_response(sock)
        sent_then = sent
        seconds = time.monotonic() - started
    finally:
        stop.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        sender.join(timeout=10)
    status, response_headers, content = raw
    try:
        parsed: Any = json.loads(content)
    except ValueError:
        parsed = content.decode("utf-8", "replace")  # a page, not the API
    return RawAnswer(status, response_headers, parsed, sent_then, seconds)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if headers.get("transfer-encoding") == "chunked":
        return status, headers, _read_chunked(sock, content)
    length = int(headers["content-length"])
    while len(content) < length:
        content += _recv(sock)
    return status, headers, content[:length]


def _read_chunked(sock: socket.socket, data: bytes) -> bytes:
    content = b""
    while True:
        while b"\r\n" not in data:
            data += _recv(sock)
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(data) < size + 2:
            data += _recv(sock)
        if size == 0:
            return content
        content, data = content + data[:size], data[size + 2 :]


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection without a complete response")
    return data
