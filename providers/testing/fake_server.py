"""FakeUpstream: the base of the fake provider servers, over real HTTP on loopback.

A fake upstream speaks one provider's wire protocol (subclasses) from the
provider's published API reference, records every request, and injects
faults on demand: an error status with the provider's error body and
``Retry-After``, a delay, a stream cut short, malformed JSON, or a dropped
connection, for the next requests (``inject``) or for a random share of them
(``fail_at_random``). Faults are set from Python or, for another process,
queued over HTTP (``POST /_fake/faults``, ``POST /_fake/reset``,
``GET /_fake/requests``).
"""

from __future__ import annotations

import json
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit


@dataclass
class Fault:
    """A misbehaviour applied to the next TIMES matching requests."""

    status: int | None = None
    message: str = "Injected fault."
    retry_after: float | None = None
    delay: float = 0.0
    truncate_after: int | None = None
    malformed: bool = False
    drop: bool = False
    times: int = 1
    path: str | None = None

    def matches(self, path: str) -> bool:
        return self.path is None or path == self.path


@dataclass
class RecordedRequest:
    """A request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""


@dataclass
class Usage:
    """Token accounting of the fake: what a real bill would show."""

    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def count_tokens(text: str) -> int:
    """Count tokens the fakes' way: one per whitespace-separated word."""
    return len(text.split())


class FakeHandler(BaseHTTPRequestHandler):
    """Dispatch a request to the owning FakeUpstream, applying faults first."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body are written separately; without NODELAY, Nagle plus
        # delayed ACKs add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if parts.path.startswith("/_fake/"):
            fake.control(self, method, parts.path, body)
            return
        fake.record(RecordedRequest(method, parts.path, dict(self.headers), body, parts.query))
        fault = fake.take_fault(parts.path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.status is not None:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                self.send_json(fault.status, fake.error_body(fault.status, fault.message), headers)
                return
        handler = fake.route(method, parts.path)
        if handler is None:
            self.send_json(404, fake.error_body(404, f"Unknown route {method} {parts.path}."))
            return
        try:
            handler(self, body, fault)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout under test, say): nothing to answer.
            self.close_connection = True

    # --- writing answers ---------------------------------------------------

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Send PAYLOAD as a JSON answer."""
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_raw(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        """Send DATA as it is (for malformed answers)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self, content_type: str) -> None:
        """Start a chunked streaming answer."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> bool:
        """Send one chunk of a streaming answer; return False when the client has gone."""
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return False

    def end_stream(self) -> None:
        """Finish a chunked answer properly."""
        self.write_chunk(b"")

    def cut_stream(self) -> None:
        """Stop a streaming answer mid-way, as a dying upstream does."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stream_pieces(
        self,
        pieces: Iterable[bytes],
        *,
        content_type: str,
        fault: Fault | None,
        interval: float = 0.0,
        bad_piece: bytes = b"data: {not json\n\n",
    ) -> bool:
        """Stream PIECES, applying FAULT's truncation or malformation; return whether completed."""
        self.start_stream(content_type)
        for index, piece in enumerate(pieces):
            if (
                fault is not None
                and fault.truncate_after is not None
                and index >= fault.truncate_after
            ):
                self.cut_stream()
                return False
            if fault is not None and fault.malformed and index == 1:
                piece = bad_piece
            if interval and index:
                time.sleep(interval)
            if not self.write_chunk(piece):
                return False
        self.end_stream()
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 refuses connections when dozens of
    # clients connect at once (a load test), which no real upstream does.
    request_queue_size = 128
    fake: FakeUpstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up first (a timeout test gave up on a delayed
        # answer) is expected, not a failure of the fake worth a traceback.
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return
        super().handle_error(request, client_address)


class FakeUpstream:
    """A fake provider API on 127.0.0.1; subclasses map routes to handlers.

    ``routes`` maps (method, path) to the name of a method taking
    (handler, body, fault). Path patterns ending in ``*`` match by prefix.
    """

    routes: ClassVar[dict[tuple[str, str], str]] = {}
    name = "fake"

    def __init__(self, port: int = 0, *, stream_interval: float = 0.0) -> None:
        self.port = port
        self.stream_interval = stream_interval
        self.requests: list[RecordedRequest] = []
        self.usage = Usage()
        self._faults: list[Fault] = []
        self._random_faults: tuple[float, random.Random, dict[str, Any]] | None = None
        #: How many requests ``fail_at_random`` has failed since the last reset.
        self.random_faults_served = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- running -------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Serve in a background thread; return self (``url`` is then set)."""
        self._server = _Server(("127.0.0.1", self.port), FakeHandler)
        self._server.fake = self
        self.port = self._server.server_address[1]
        # stop() wakes serve_forever with a connection rather than waiting out
        # its poll (0.5 s by default: every fake's teardown paid it); the short
        # poll stays as the backstop when no connection gets through.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            server, self._server = self._server, None
            stopping = threading.Thread(target=server.shutdown, name=f"fake-{self.name}-stop")
            stopping.start()
            while stopping.is_alive():
                # An empty connection wakes the serving loop to see the request to stop.
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                except OSError:
                    pass
                stopping.join(0.05)
            server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Return the ``base_url`` a provider is configured with to reach this fake."""
        return self.url

    # --- faults and records --------------------------------------------

    def inject(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        """Queue FAULT (or one built from KWARGS) for the next matching requests."""
        fault = fault or Fault(**kwargs)
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_at_random(self, rate: float, *, seed: int, **fault: Any) -> None:
        """Fail a RATE share of the matching requests from now on, drawn from ``Random(SEED)``.

        A failing request gets a ``Fault`` built from FAULT (a 503 when it
        names no status; ``path`` limits which requests may fail). Queued
        faults come first; ``reset`` stops it. The draws are made in the
        order requests arrive, so a seed gives the same outcomes in that order.
        """
        fault = {"status": 503, **fault}
        Fault(**fault)  # a bad keyword fails here, not in the server thread
        with self._lock:
            self._random_faults = (rate, random.Random(seed), fault)

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
            if self._random_faults is not None:
                rate, rng, kwargs = self._random_faults
                fault = Fault(**kwargs)
                if fault.matches(path) and rng.random() < rate:
                    self.random_faults_served += 1
                    return fault
        return None

    def reset(self) -> None:
        """Forget faults, requests and usage."""
        with self._lock:
            self._faults.clear()
            self._random_faults = None
            self.random_faults_served = 0
            self.requests.clear()
            self.usage = Usage()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Return the recorded requests to PATH."""
        return [r for r in self.requests if r.path == path]

    def spend(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Count a completion on the fake's bill."""
        with self._lock:
            self.usage.completions += 1
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += completion_tokens

    # --- protocol hooks --------------------------------------------------

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """Return the provider's error body for STATUS (subclasses give the real shape)."""
        return {"error": {"message": message}}

    def route(self, method: str, path: str):
        for (route_method, pattern), handler_name in self.routes.items():
            if route_method != method:
                continue
            if pattern == path or (pattern.endswith("*") and path.startswith(pattern[:-1])):
                return getattr(self, handler_name)
        return None

    # --- control endpoint, for other processes ----------------------------

    def control(self, handler: FakeHandler, method: str, path: str, body: Any) -> None:
        if method == "POST" and path == "/_fake/faults":
            items = body if isinstance(body, list) else [body or {}]
            try:
                for item in items:
                    self.inject(Fault(**item))
            except TypeError as exc:
                handler.send_json(400, {"error": str(exc)})
                return
            handler.send_json(200, {"queued": len(items)})
        elif method == "POST" and path == "/_fake/reset":
            self.reset()
            handler.send_json(200, {"reset": True})
        elif method == "GET" and path == "/_fake/requests":
            handler.send_json(200, [asdict(r) for r in self.requests])
        elif method == "GET" and path == "/_fake/usage":
            handler.send_json(200, asdict(self.usage))
        else:
            handler.send_json(404, {"error": "unknown control route"})


@dataclass
class ScriptedReply:
    """What a fake answers to the next chat request, instead of its default echo."""

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def serve_until_stopped(fakes: Sequence[FakeUpstream], announcement: str) -> None:
    """Print ANNOUNCEMENT, serve the started FAKES until SIGINT or SIGTERM, then stop them.

    Both signals are handled here, not left to Python's defaults: a process
    started in the background by a shell, or by a parent that ignores
    SIGINT, inherits SIGINT ignored and would never see its Ctrl-C. The
    handlers are set before the announcement, since whoever reads it may
    stop the fakes at once.
    """
    stopping = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stopping.set())
    print(announcement, flush=True)
    try:
        stopping.wait()
    finally:
        for fake in fakes:
            fake.stop()
