"""The upstream transport (httpx's API over aiohttp's pool) behaves as httpx's own did.

Each test talks over loopback to either the fake OpenAI upstream or a raw
asyncio server whose every byte the test scripts, so that a stall, a hang-up
or the exact request head can be seen. What is checked: the request leaves as
httpx built it, failures become the same typed errors, a stream arrives
chunk by chunk, the pool keeps to its size and sets TCP_NODELAY, shutting a
provider down closes its connections, and TLS, while connecting to the
checked address, verifies and sends the host's name.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohappyeyeballs
import httpx
import pytest

from providers import http_provider
from providers.errors import ProtocolError, ProviderTimeoutError, ProviderUnavailableError
from providers.plugins.openai_provider import OpenAIProvider
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest
from providers.upstream import connections as upstream_connections

KEY = "sk-transport-000000000000"
DEPLOY_CERT = Path(__file__).resolve().parents[2] / "deploy" / "self_signed_cert.py"
REQUEST = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
STREAM_REQUEST = ChatRequest(messages=[ChatMessage(role="user", content="hi")], stream=True)
ANSWER = (
    b'{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"raw"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def event(text: str, finish: str | None = None) -> bytes:
    """Return one chat.completion.chunk event as one HTTP chunk."""
    finish_json = "null" if finish is None else f'"{finish}"'
    data = (
        'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
        f'"choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":{finish_json}}}]}}'
        "\n\n"
    ).encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


END = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@asynccontextmanager
async def raw_upstream(script: Script) -> AsyncIterator[str]:
    """Serve SCRIPT on loopback: it gets each request's head (body read) and answers; yield the base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                await script(reader, writer, head)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


def provider_for(base_url: str, **settings: Any) -> OpenAIProvider:
    return OpenAIProvider({"api_key": KEY, "base_url": base_url, **settings}, name="raw")


async def answer_json(reader, writer, head) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(ANSWER), ANSWER)
    )
    await writer.drain()


# --- the request as httpx built it ------------------------------------------------


async def test_the_request_head_is_httpx_s_exactly_in_order_and_case() -> None:
    heads: list[bytes] = []

    async def record(reader, writer, head) -> None:
        heads.append(head)
        await answer_json(reader, writer, head)

    async with raw_upstream(record) as base_url:
        provider = provider_for(base_url)
        try:
            assert (await provider.chat_completion(REQUEST)).content == "raw"
            client = provider._client_for_loop()
            built = client.build_request("POST", "/chat/completions", json={"a": 1})
        finally:
            await provider.shutdown()

    request_line, *lines = heads[0].rstrip(b"\r\n").split(b"\r\n")
    assert request_line == b"POST /v1/chat/completions HTTP/1.1"
    sent_names = [line.split(b":", 1)[0] for line in lines]
    # The names httpx put on the request, as it spelled them, and nothing aiohttp adds.
    assert sent_names == [name for name, _ in built.headers.raw]
    assert b"Authorization" in sent_names and b"Host" in sent_names


# --- failures, typed as before ------------------------------------------------------


async def test_a_refused_connection_is_unavailable_not_a_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    provider = provider_for(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(ProviderUnavailableError) as refused:
            await provider.chat_completion(REQUEST)
    finally:
        await provider.shutdown()
    assert refused.value.message.startswith("Cannot reach OpenAI: ConnectError")
    assert refused.value.retryable


async def test_an_upstream_that_hangs_up_before_answering_is_a_protocol_error() -> None:
    async def hang_up(reader, writer, head) -> None:
        writer.close()

    async with raw_upstream(hang_up) as base_url:
        provider = provider_for(base_url)
        try:
            with pytest.raises(ProtocolError, match="broke the connection") as broken:
                await provider.chat_completion(REQUEST)
        finally:
            await provider.shutdown()
    assert broken.value.retryable


async def test_a_stream_that_stalls_times_out_after_its_first_chunk() -> None:
    async def stall(reader, writer, head) -> None:
        writer.write(STREAM_HEAD + event("first"))
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_upstream(stall) as base_url:
        provider = provider_for(base_url, timeout=0.3)
        chunks = []
        try:
            with pytest.raises(ProviderTimeoutError, match="ReadTimeout"):
                async for chunk in provider.chat_completion_stream(STREAM_REQUEST):
                    chunks.append(chunk)
        finally:
            await provider.shutdown()
    assert [chunk.content for chunk in chunks] == ["first"]


async def test_a_slow_lookup_is_a_connect_timeout(monkeypatch) -> None:
    async def slow_lookup(host: str, port: int) -> list[str]:
        await asyncio.sleep(5)
        return ["127.0.0.1"]

    monkeypatch.setattr(upstream_connections, "resolve_host", slow_lookup)
    provider = provider_for("http://slow-dns.test:9/v1", connect_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(ProviderTimeoutError, match="ConnectTimeout"):
            await provider.chat_completion(REQUEST)
    finally:
        await provider.shutdown()
    assert loop.time() - started < 2


# --- streaming, pooling, closing --------------------------------------------------


async def test_a_stream_arrives_chunk_by_chunk_never_buffered() -> None:
    first_seen = asyncio.Event()

    async def one_then_the_rest(reader, writer, head) -> None:
        writer.write(STREAM_HEAD + event("one"))
        await writer.drain()
        # The rest is sent only once the caller holds the first chunk: a
        # buffering client would wait here for ever.
        await asyncio.wait_for(first_seen.wait(), 5)
        writer.write(event("two", finish="stop") + END)
        await writer.drain()

    async with raw_upstream(one_then_the_rest) as base_url:
        provider = provider_for(base_url)
        try:
            stream = provider.chat_completion_stream(STREAM_REQUEST)
            first = await asyncio.wait_for(anext(stream), 5)
            first_seen.set()
            rest = [chunk async for chunk in stream]
        finally:
            await provider.shutdown()
    assert first.content == "one"
    assert "".join(chunk.content for chunk in rest) == "two" and rest[-1].is_final


async def test_the_pool_keeps_to_max_connections_and_sets_tcp_nodelay(monkeypatch) -> None:
    sockets: list[socket.socket] = []
    real_start = aiohappyeyeballs.start_connection

    async def keep_socket(*args: Any, **kwargs: Any) -> socket.socket:
        sock = await real_start(*args, **kwargs)
        sockets.append(sock)
        return sock

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", keep_socket)
    with FakeOpenAI() as fake:
        provider = provider_for(fake.base_url, max_connections=2)
        try:
            fake.inject(delay=0.05, times=6)
            answers = await asyncio.gather(*(provider.chat_completion(REQUEST) for _ in range(6)))
            assert all(answer.content for answer in answers)
            assert len(sockets) == 2 and len(fake.peers) == 2
            assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
        finally:
            await provider.shutdown()


async def test_shutdown_closes_the_aiohttp_session_and_its_connections() -> None:
    closed = asyncio.Event()

    async def answer_then_watch(reader, writer, head) -> None:
        await answer_json(reader, writer, head)
        if await reader.read(1) == b"":  # the client closed its end
            closed.set()

    async with raw_upstream(answer_then_watch) as base_url:
        provider = provider_for(base_url)
        await provider.initialize()
        await provider.chat_completion(REQUEST)
        transport = provider._client._transport
        session = transport.session
        assert session is not None and not session.closed
        await provider.shutdown()
        assert session.closed and transport.session is None
        await asyncio.wait_for(closed.wait(), 2)


async def test_an_illegal_header_is_refused_before_any_connection_without_its_value() -> None:
    class Unstripped(OpenAIProvider):
        def auth_headers(self) -> dict[str, str]:
            return {"Authorization": f"Bearer {self.config['api_key']}\r\nX-Injected: 1"}

    with FakeOpenAI() as fake:
        provider = Unstripped({"api_key": KEY, "base_url": fake.base_url}, name="openai")
        try:
            with pytest.raises(ProviderUnavailableError) as refused:
                await provider.chat_completion(REQUEST)
        finally:
            await provider.shutdown()
        assert fake.requests == [] and fake.peers == set()
    assert "line break" in refused.value.message and "'Authorization'" in refused.value.message
    assert KEY not in refused.value.message and "X-Injected" not in refused.value.message


def test_the_transport_error_table_is_httpcore_s() -> None:
    import aiohttp

    from providers.upstream.transport import httpx_error_for

    request = httpx.Request("GET", "http://upstream.test/")
    cases = {
        aiohttp.ConnectionTimeoutError("pool"): httpx.ConnectTimeout,
        aiohttp.SocketTimeoutError("read"): httpx.ReadTimeout,
        aiohttp.ServerDisconnectedError(): httpx.RemoteProtocolError,
        aiohttp.ClientPayloadError("cut"): httpx.RemoteProtocolError,
        aiohttp.ClientOSError(104, "reset"): httpx.ReadError,
        upstream_connections.BlockedUpstreamError("no"): httpx.ConnectError,
        ValueError("not ours"): type(None),
    }
    for failure, expected in cases.items():
        assert type(httpx_error_for(failure, request)) is expected, failure


# --- TLS: connected to a checked address, verified for the name ------------------------


@pytest.fixture
def tls_context(tmp_path, monkeypatch) -> ssl.SSLContext:
    """Return a server context with a self-signed certificate of tls.test, which Echo trusts.

    Every name resolves to 127.0.0.1, as a checked address.
    """
    # deploy/ is no package (its scripts run alone): its certificate writer, loaded by path.
    spec = importlib.util.spec_from_file_location("deploy_cert", DEPLOY_CERT)
    deploy_cert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy_cert)
    assert deploy_cert.write_certificate(tmp_path, "tls.test")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    monkeypatch.setattr(http_provider, "shared_ssl_context", lambda: client)

    async def loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    monkeypatch.setattr(upstream_connections, "resolve_host", loopback)
    return server


@asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[tuple[int, list[str | None]]]:
    """Serve one JSON answer per connection over TLS; yield the port and the SNI names seen."""
    server_names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await answer_json(reader, writer, head)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, IndexError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], server_names
    finally:
        server.close()


async def test_tls_verifies_and_sends_the_name_while_connecting_to_the_checked_address(
    tls_context,
) -> None:
    async with tls_server(tls_context) as (port, server_names):
        provider = provider_for(f"https://tls.test:{port}/v1")
        try:
            assert (await provider.chat_completion(REQUEST)).content == "raw"
        finally:
            await provider.shutdown()
    assert server_names == ["tls.test"]


async def test_tls_refuses_a_certificate_for_another_name(tls_context) -> None:
    async with tls_server(tls_context) as (port, _names):
        provider = provider_for(f"https://other.test:{port}/v1")
        try:
            with pytest.raises(ProviderUnavailableError, match="ConnectError") as refused:
                await provider.chat_completion(REQUEST)
        finally:
            await provider.shutdown()
    assert "certificate" in refused.value.message.lower()
