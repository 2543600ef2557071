"""UpstreamSession: a provider's requests over aiohttp, its failures typed, its answers read as they come.

Each test talks over loopback to either the fake OpenAI upstream or a raw
asyncio server whose every byte and chunk boundary the test scripts, so that
a stall, a hang-up, a line end split across two reads or the exact request
head can be seen. What is checked: the request head (the provider's headers,
then the call's, then what aiohttp adds), no cookie carried and no redirect
followed, each failure as its typed error, an answer read line by line as it
arrives whatever its line ends and chunk boundaries, which connections go
back to the pool, the pool's size and TCP_NODELAY, shutting a provider down
closing its connections, and TLS, while connecting to the checked address,
verifying and sending the host's name.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohappyeyeballs
import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from providers import http_provider
from providers.errors import (
    ProtocolError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from providers.plugins.openai_provider import OpenAIProvider
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatMessage, ChatRequest
from providers.upstream import connections as upstream_connections
from providers.upstream.session import (
    BrokenConnection,
    IllegalHeader,
    RefusedByPolicy,
    TransportTimeout,
    Unreachable,
    UpstreamSession,
    failure_for,
)

KEY = "sk-session-00000000000000"
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
#: Between two scripted writes: long enough for the client to read the first by itself.
CHUNK_GAP = 0.05


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


@asynccontextmanager
async def session_to(base_url: str, **settings: Any) -> AsyncIterator[UpstreamSession]:
    """Yield an UpstreamSession to BASE_URL (SETTINGS override its defaults); close it after."""
    options: dict[str, Any] = {
        "headers": {"Accept": "application/json"},
        "read_timeout": 5.0,
        "connect_timeout": 5.0,
        "max_connections": 10,
        "ssl_context": http_provider.shared_ssl_context(),
        **settings,
    }
    session = UpstreamSession(base_url, **options)
    try:
        yield session
    finally:
        await session.aclose()


def provider_for(base_url: str, **settings: Any) -> OpenAIProvider:
    return OpenAIProvider({"api_key": KEY, "base_url": base_url, **settings}, name="raw")


async def answer_failure(script: Script, **settings: Any) -> ProviderError:
    """Return the error a whole answer fails with from an upstream that plays SCRIPT."""
    async with raw_upstream(script) as base_url:
        provider = provider_for(base_url, **settings)
        try:
            with pytest.raises(ProviderError) as failed:
                await provider.chat_completion(REQUEST)
        finally:
            await provider.shutdown()
    return failed.value


async def stream_failure(script: Script, **settings: Any) -> tuple[list[str], ProviderError]:
    """Return the text of each chunk a stream got from an upstream that plays SCRIPT, and its error."""
    chunks: list[str] = []
    async with raw_upstream(script) as base_url:
        provider = provider_for(base_url, **settings)
        try:
            with pytest.raises(ProviderError) as failed:
                async for chunk in provider.chat_completion_stream(STREAM_REQUEST):
                    chunks.append(chunk.content)
        finally:
            await provider.shutdown()
    return chunks, failed.value


def head_lines(head: bytes) -> list[bytes]:
    """Return the request line and header lines of HEAD."""
    return head.rstrip(b"\r\n").split(b"\r\n")


def header_names(head: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0] for line in head_lines(head)[1:]]


async def answer_json(reader, writer, head) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(ANSWER), ANSWER)
    )
    await writer.drain()


def body_in(chunks: list[bytes], *, length: int | None = None) -> Script:
    """Return a script answering with CHUNKS as the body, each written alone, CHUNK_GAP apart.

    The body's Content-Length is LENGTH, else the chunks' total: a larger
    LENGTH makes a body cut short, the connection closed after the chunks.
    """
    total = sum(map(len, chunks)) if length is None else length

    async def script(reader, writer, head) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
            % total
        )
        await writer.drain()
        for chunk in chunks:
            await asyncio.sleep(CHUNK_GAP)
            writer.write(chunk)
            await writer.drain()
        if length is not None:
            await asyncio.sleep(CHUNK_GAP)
            writer.close()

    return script


@pytest.fixture
def reads(monkeypatch) -> list[bytes]:
    """Record each piece of body aiohttp hands the reader: the chunk boundaries ``lines`` met."""
    seen: list[bytes] = []
    real_readany = aiohttp.StreamReader.readany

    async def readany(self: aiohttp.StreamReader) -> bytes:
        data = await real_readany(self)
        if data:
            seen.append(data)
        return data

    monkeypatch.setattr(aiohttp.StreamReader, "readany", readany)
    return seen


# --- the request as it leaves ---------------------------------------------------------


async def test_the_request_head_is_the_provider_s_headers_then_the_call_s_in_order_and_case() -> (
    None
):
    heads: list[bytes] = []

    async def record(reader, writer, head) -> None:
        heads.append(head)
        await answer_json(reader, writer, head)

    async with raw_upstream(record) as base_url:
        provider = provider_for(base_url)
        try:
            answer = await provider.post_json(
                "/chat/completions", {"a": 1}, headers={"X-Call-Header": "call"}
            )
        finally:
            await provider.shutdown()
    assert answer["id"] == "c1"

    request_line, *lines = head_lines(heads[0])
    assert request_line == b"POST /v1/chat/completions HTTP/1.1"
    port = URL(base_url).port
    assert lines == [
        b"Host: 127.0.0.1:%d" % port,
        b"Accept: application/json",
        b"Authorization: Bearer " + KEY.encode(),
        b"X-Call-Header: call",
        b"Content-Type: application/json",
        b"Accept-Encoding: gzip, deflate",
        b"User-Agent: " + aiohttp.http.SERVER_SOFTWARE.encode(),
        b"Content-Length: 7",  # b'{"a":1}'
    ]


async def test_a_request_without_a_body_sends_no_content_type() -> None:
    heads: list[bytes] = []

    async def record(reader, writer, head) -> None:
        heads.append(head)
        await answer_json(reader, writer, head)

    async with raw_upstream(record) as base_url, session_to(base_url) as session:
        async with session.request("GET", "models") as answer:
            assert answer.status == 200 and await answer.read() == ANSWER
    assert head_lines(heads[0])[0] == b"GET /v1/models HTTP/1.1"
    assert b"Content-Type" not in header_names(heads[0])


async def test_an_upstream_s_cookie_is_never_sent_back() -> None:
    heads: list[bytes] = []

    async def set_cookie(reader, writer, head) -> None:
        heads.append(head)
        writer.write(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc123; Path=/\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(ANSWER), ANSWER)
        )
        await writer.drain()

    async with raw_upstream(set_cookie) as base_url:
        provider = provider_for(base_url)
        try:
            await provider.chat_completion(REQUEST)
            await provider.chat_completion(REQUEST)
        finally:
            await provider.shutdown()
    assert len(heads) == 2
    assert all(b"cookie" not in head.lower() for head in heads)


async def test_a_redirect_is_not_followed_and_names_only_scheme_and_host() -> None:
    heads: list[bytes] = []

    async def redirect(reader, writer, head) -> None:
        heads.append(head)
        port = writer.get_extra_info("sockname")[1]
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\n"
            b"Location: http://127.0.0.1:%d/moved/here?token=s3cret\r\nContent-Length: 0\r\n\r\n"
            % port
        )
        await writer.drain()

    async with raw_upstream(redirect) as base_url:
        provider = provider_for(base_url)
        try:
            with pytest.raises(ProtocolError) as redirected:
                await provider.chat_completion(REQUEST)
        finally:
            await provider.shutdown()
    message = redirected.value.message
    port = URL(base_url).port
    assert f"OpenAI answered 307, a redirect to http://127.0.0.1:{port};" in message
    assert "moved" not in message and "token" not in message and "s3cret" not in message
    assert redirected.value.status_code == 307
    assert len(heads) == 1  # the Location was never asked for


# --- failures, typed ------------------------------------------------------------------


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
    assert refused.value.message.startswith("Cannot reach OpenAI: connect error: ")
    assert refused.value.retryable


async def test_an_upstream_that_hangs_up_before_answering_is_a_protocol_error() -> None:
    async def hang_up(reader, writer, head) -> None:
        writer.close()

    broken = await answer_failure(hang_up)
    assert isinstance(broken, ProtocolError)
    assert broken.message.startswith("OpenAI broke the connection: server disconnected")
    assert broken.retryable


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async def babble(reader, writer, head) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    broken = await answer_failure(babble)
    assert isinstance(broken, ProtocolError)
    assert broken.message.startswith("OpenAI broke the connection: answer is not HTTP")


async def test_a_stream_that_stalls_times_out_after_its_first_chunk() -> None:
    async def stall(reader, writer, head) -> None:
        writer.write(STREAM_HEAD + event("first"))
        await writer.drain()
        await asyncio.sleep(5)

    chunks, timed_out = await stream_failure(stall, timeout=0.3)
    assert chunks == ["first"]
    assert isinstance(timed_out, ProviderTimeoutError)
    assert timed_out.message.startswith("OpenAI timed out (read timeout")


async def test_a_stream_cut_short_is_a_protocol_error_after_what_came() -> None:
    async def cut(reader, writer, head) -> None:
        writer.write(STREAM_HEAD + event("first"))
        await writer.drain()
        await asyncio.sleep(CHUNK_GAP)
        writer.close()  # no last chunk: the answer never ended

    chunks, broken = await stream_failure(cut)
    assert chunks == ["first"]
    assert isinstance(broken, ProtocolError)
    assert broken.message.startswith("OpenAI broke the connection: answer cut short")


async def test_a_slow_lookup_is_a_connect_timeout(monkeypatch) -> None:
    async def slow_lookup(host: str, port: int) -> list[str]:
        await asyncio.sleep(5)
        return ["127.0.0.1"]

    monkeypatch.setattr(upstream_connections, "resolve_host", slow_lookup)
    provider = provider_for("http://slow-dns.test:9/v1", connect_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(ProviderTimeoutError) as timed_out:
            await provider.chat_completion(REQUEST)
    finally:
        await provider.shutdown()
    assert loop.time() - started < 2
    assert timed_out.value.message.startswith("OpenAI timed out (connect timeout")


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


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Call": "s3cret\nX-Injected: 1"},
        {"X-Call": "s3cret\0"},
        {"X-Call\r\nX-Injected": "s3cret"},
    ],
)
async def test_an_illegal_call_header_is_refused_before_any_connection(headers) -> None:
    with FakeOpenAI() as fake:
        async with session_to(fake.base_url) as session:
            with pytest.raises(IllegalHeader) as refused:
                async with session.request(
                    "POST", "/chat/completions", body=b"{}", headers=headers
                ):
                    pass
            # The session's own headers are good: the next call goes through on it.
            async with session.request("GET", "/models") as answer:
                assert answer.status == 401  # no key sent: the fake's answer, not ours
        assert len(fake.requests) == 1
    assert "X-Injected" not in str(refused.value) and "s3cret" not in str(refused.value)


def _request_info() -> aiohttp.RequestInfo:
    url = URL("http://upstream.test/v1")
    return aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)


_CONNECTION = SimpleNamespace(host="upstream.test", port=443, ssl=True)


@pytest.mark.parametrize(
    "exc, kind, message",
    [
        (upstream_connections.BlockedUpstreamError("no"), RefusedByPolicy, "no"),
        (aiohttp.ConnectionTimeoutError("pool"), TransportTimeout, "connect timeout: pool"),
        (aiohttp.SocketTimeoutError("sock"), TransportTimeout, "read timeout: sock"),
        (aiohttp.ServerTimeoutError("server"), TransportTimeout, "read timeout: server"),
        (
            aiohttp.ClientConnectorError(_CONNECTION, ConnectionRefusedError(111, "refused")),
            Unreachable,
            "connect error: Cannot connect to host upstream.test:443",
        ),
        (
            aiohttp.ServerDisconnectedError(),
            BrokenConnection,
            "server disconnected: Server disconnected",
        ),
        (aiohttp.ClientPayloadError("cut"), BrokenConnection, "answer cut short: cut"),
        (
            aiohttp.ClientResponseError(_request_info(), (), status=400, message="Bad status"),
            BrokenConnection,
            "answer is not HTTP: 400, message='Bad status'",
        ),
        (aiohttp.InvalidURL("nowhere"), Unreachable, "invalid URL: nowhere"),
        (aiohttp.NonHttpUrlClientError("ftp://x"), Unreachable, "not an HTTP URL: ftp://x"),
        (aiohttp.ClientOSError(104, "reset"), Unreachable, "connection error: [Errno 104] reset"),
        (aiohttp.ClientConnectionError(), Unreachable, "connection error"),
        (aiohttp.ClientError("other"), Unreachable, "client error: other"),
        (TimeoutError(), TransportTimeout, "read timeout"),
    ],
)
def test_failure_for_maps_each_aiohttp_failure_to_its_kind(exc, kind, message) -> None:
    failure = failure_for(exc)
    assert type(failure) is kind
    assert str(failure).startswith(message), str(failure)


def test_failure_for_leaves_a_foreign_exception_alone() -> None:
    assert failure_for(ValueError("not ours")) is None
    assert failure_for(KeyError("model")) is None


# --- reading the answer: line by line, as it arrives -----------------------------------


async def lines_of(body: Script) -> list[str]:
    """Return the lines ``lines`` yields for the answer BODY sends."""
    async with raw_upstream(body) as base_url, session_to(base_url) as session:
        async with session.request("GET", "/events") as answer:
            return [line async for line in answer.lines()]


@pytest.mark.parametrize(
    "chunks, lines",
    [
        ([b"data: 1\n\ndata: 2\n\n"], ["data: 1", "", "data: 2", ""]),
        ([b"data: 1\r\n\r\ndata: 2\r\n\r\n"], ["data: 1", "", "data: 2", ""]),
        ([b"data: 1\r\rdata: 2\r\r", b"x\n"], ["data: 1", "", "data: 2", "", "x"]),
        ([b"a\r\nb\rc\nd\n"], ["a", "b", "c", "d"]),
    ],
    ids=["LF", "CRLF", "CR", "mixed"],
)
async def test_lines_split_on_every_line_end(reads, chunks, lines) -> None:
    assert await lines_of(body_in(chunks)) == lines
    assert reads == chunks


async def test_a_crlf_split_across_two_chunks_is_one_line_end(reads) -> None:
    chunks = [b"data: 1\r", b"\n\r", b"\ndata: 2\r\n"]
    assert await lines_of(body_in(chunks)) == ["data: 1", "", "data: 2"]
    assert reads == chunks


async def test_a_cr_that_ends_a_chunk_and_no_lf_after_it_is_a_line_end(reads) -> None:
    chunks = [b"a\r", b"b\r", b"\r", b"c\n"]
    assert await lines_of(body_in(chunks)) == ["a", "b", "", "c"]
    assert reads == chunks


async def test_a_character_split_across_chunks_is_decoded_whole(reads) -> None:
    text = "café € 🙂\n".encode()
    # Split inside é (2 bytes), € (3 bytes) and 🙂 (4 bytes).
    chunks = [text[:4], text[4:8], text[8:12], text[12:]]
    assert await lines_of(body_in(chunks)) == ["café € 🙂"]
    assert reads == chunks


async def test_line_batches_hold_the_lines_each_read_completed(reads) -> None:
    """One list per read from the network (what an SSE reader steps through once per event)."""
    chunks = [b"data: 1\n\n", b"data: 2\n", b"\ndata: 3", b"\n\nlast"]
    async with raw_upstream(body_in(chunks)) as base_url, session_to(base_url) as session:
        async with session.request("GET", "/events") as answer:
            batches = [batch async for batch in answer.line_batches()]
    assert reads == chunks
    assert batches == [["data: 1", ""], ["data: 2"], [""], ["data: 3", ""], ["last"]]
    assert [line for batch in batches for line in batch] == await lines_of(body_in(chunks))


async def test_bytes_that_are_not_utf8_are_replaced_not_fatal() -> None:
    assert await lines_of(body_in([b"ok\xff\n", b"next\n"])) == ["ok\ufffd", "next"]


async def test_the_last_line_is_yielded_without_a_line_end(reads) -> None:
    chunks = [b"a\n", b"b"]
    assert await lines_of(body_in(chunks)) == ["a", "b"]
    assert reads == chunks


async def test_a_body_cut_short_is_a_broken_connection_after_the_lines_that_came() -> None:
    lines: list[str] = []
    async with raw_upstream(body_in([b"a\nb\n"], length=100)) as base_url:
        async with session_to(base_url) as session:
            with pytest.raises(BrokenConnection, match="answer cut short"):
                async with session.request("GET", "/events") as answer:
                    async for line in answer.lines():
                        lines.append(line)
    assert lines == ["a", "b"]


async def test_a_body_cut_short_read_whole_is_a_broken_connection() -> None:
    async with raw_upstream(body_in([b'{"partial": '], length=100)) as base_url:
        async with session_to(base_url) as session:
            with pytest.raises(BrokenConnection, match="answer cut short"):
                async with session.request("GET", "/models") as answer:
                    await answer.read()


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


# --- which connections are pooled ------------------------------------------------------


def by_path(peers: list[Any], closed: asyncio.Event) -> Script:
    """Return a script that notes each request's connection (PEERS) and answers by path.

    ``/v1/stream`` gets a chunked answer's first line only, and the script
    then waits for the client to close the connection (setting CLOSED);
    ``/v1/events`` gets a whole chunked answer of two lines; any other path JSON.
    """

    async def script(reader, writer, head) -> None:
        peers.append(writer.get_extra_info("peername"))
        path = head_lines(head)[0].split(b" ")[1]
        if path == b"/v1/stream":
            writer.write(STREAM_HEAD + b"6\r\nfirst\n\r\n")
            await writer.drain()
            if await reader.read(1) == b"":  # the client closed its end
                closed.set()
        elif path == b"/v1/events":
            writer.write(STREAM_HEAD + b"6\r\nfirst\n\r\n7\r\nsecond\n\r\n0\r\n\r\n")
            await writer.drain()
        else:
            await answer_json(reader, writer, head)

    return script


async def test_leaving_the_request_before_the_body_s_end_closes_the_connection() -> None:
    peers: list[Any] = []
    closed = asyncio.Event()
    async with raw_upstream(by_path(peers, closed)) as base_url, session_to(base_url) as session:
        async with session.request("GET", "/stream") as answer:
            lines = answer.lines()
            assert await anext(lines) == "first"
        await lines.aclose()
        await asyncio.wait_for(closed.wait(), 2)
        async with session.request("GET", "/models") as answer:
            assert await answer.read() == ANSWER
    assert len(peers) == 2 and peers[0] != peers[1]  # the second request opened a new one


async def test_an_answer_read_to_its_end_gives_the_connection_back_to_the_pool() -> None:
    peers: list[Any] = []
    async with raw_upstream(by_path(peers, asyncio.Event())) as base_url:
        async with session_to(base_url) as session:
            async with session.request("GET", "/models") as answer:
                assert await answer.read() == ANSWER
            async with session.request("GET", "/events") as answer:
                assert [line async for line in answer.lines()] == ["first", "second"]
            async with session.request("GET", "/models") as answer:
                assert await answer.read() == ANSWER
    assert len(peers) == 3 and len(set(peers)) == 1  # one connection for the three


async def test_a_request_that_says_connection_close_is_never_pooled() -> None:
    peers: list[Any] = []
    async with raw_upstream(by_path(peers, asyncio.Event())) as base_url:
        async with session_to(base_url, headers={"Connection": "close"}) as session:
            for _ in range(2):
                async with session.request("GET", "/models") as answer:
                    assert await answer.read() == ANSWER
    # The upstream kept each connection open; the client did not reuse it all the same.
    assert len(peers) == 2 and peers[0] != peers[1]


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
        upstream = provider._session
        session = upstream.session
        assert session is not None and not session.closed
        await provider.shutdown()
        assert session.closed and upstream.session is None and provider._session is None
        await asyncio.wait_for(closed.wait(), 2)


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
    async with tls_server(tls_context) as (port, server_names):
        provider = provider_for(f"https://other.test:{port}/v1")
        try:
            with pytest.raises(ProviderUnavailableError) as refused:
                await provider.chat_completion(REQUEST)
        finally:
            await provider.shutdown()
    assert refused.value.message.startswith("Cannot reach OpenAI: connect error: ")
    assert "certificate" in refused.value.message.lower()
    assert server_names == ["other.test"]


async def test_a_stream_line_without_end_is_bounded(monkeypatch) -> None:
    """An upstream that streams on without a line end breaks the answer; it cannot fill memory."""
    from providers.upstream import session as upstream_session

    monkeypatch.setattr(upstream_session, "MAX_LINE_CHARS", 64 * 1024)

    async def endless(reader, writer, head) -> None:
        writer.write(STREAM_HEAD + event("first"))
        piece = b"data: " + b"x" * 16 * 1024
        for _ in range(16):  # 256 KiB, no line end
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.005)
        await asyncio.sleep(5)

    chunks, broken = await stream_failure(endless)
    assert chunks == ["first"]
    assert isinstance(broken, ProtocolError)
    assert broken.message.startswith("OpenAI broke the connection: a line longer than 65,536")


async def test_an_exchange_left_by_an_error_lets_the_next_one_through_and_is_entered_once() -> None:
    async with raw_upstream(answer_json) as base_url, session_to(base_url) as session:
        exchange = session.request("GET", "models")
        with pytest.raises(ValueError):
            async with exchange as answer:
                assert answer.status == 200
                raise ValueError("the caller failed before reading")
        async with exchange as answer:  # entered again: a second request, read whole
            assert await answer.read() == ANSWER
            with pytest.raises(RuntimeError, match="entered once"):
                async with exchange:
                    pass
