"""``plugins_api/edge/sse.py``: the frames, the first chunk read before answering, and the one stream loop.

Every streaming API (``/chat``, OpenAI's and Anthropic's ``/v1``) runs its
stream through ``encode_stream``; these pin how a stream ends (complete,
failed, cut short by the provider or by the client) and that the provider's
chunks are closed every time. The wire of each format is pinned by its
API's own tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from plugins_api.edge.sse import (
    ENDED_EARLY,
    ChatEvents,
    encode_stream,
    event_stream_response,
    first_chunk,
    sse_event,
    sse_frame,
)
from providers.errors import ProtocolError, ProviderError, ProviderUnavailableError
from providers.types import StreamingChunk


class Chunks:
    """A provider's chunk stream: hands out CHUNKS, then raises ERROR or ends; records reads and closing."""

    def __init__(self, *chunks: StreamingChunk, error: ProviderError | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.reads = 0
        self.closed = False

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> StreamingChunk:
        self.reads += 1
        if self.chunks:
            return self.chunks.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


class Lettered:
    """A stream format that writes each chunk's text as a bare frame, to see what the loop did."""

    def opening(self, first: StreamingChunk) -> Iterator[bytes]:
        yield b"open"

    def chunk(self, chunk: StreamingChunk) -> Iterator[bytes]:
        yield chunk.content.encode()
        if chunk.is_final:
            yield b"end"

    def failure(self, exc: ProviderError) -> bytes:
        return f"failed {exc.kind}: {exc.message}".encode()


def text(content: str, *, final: bool = False) -> StreamingChunk:
    return StreamingChunk(content=content, is_final=final)


async def run(first: StreamingChunk, chunks: Chunks) -> list[bytes]:
    return [event async for event in encode_stream(first, chunks, Lettered())]


def test_frames_are_compact_json_with_an_optional_event_line() -> None:
    assert sse_frame({"a": 1, "b": [1, 2]}) == b'data: {"a":1,"b":[1,2]}\n\n'
    assert sse_frame("[DONE]") == b"data: [DONE]\n\n"
    assert sse_frame({"a": 1}, event="x") == b'event: x\ndata: {"a":1}\n\n'
    assert sse_event("done", {"n": 1}) == b'event: done\ndata: {"type":"done","n":1}\n\n'


def test_the_response_is_an_unbuffered_event_stream() -> None:
    async def events():
        yield b"data: 1\n\n"

    response = event_stream_response(events())
    assert response["Content-Type"] == "text/event-stream"
    assert (response["Cache-Control"], response["X-Accel-Buffering"]) == ("no-cache", "no")


async def test_a_complete_stream_ends_at_its_final_chunk_and_is_closed() -> None:
    chunks = Chunks(text(" b"), text(" c", final=True), text("never read"))

    assert await run(text("a"), chunks) == [b"open", b"a", b" b", b" c", b"end"]
    assert chunks.reads == 2  # nothing is read after the final chunk
    assert chunks.closed


async def test_a_first_chunk_that_is_final_is_the_whole_stream() -> None:
    chunks = Chunks(text("never read"))

    assert await run(text("all", final=True), chunks) == [b"open", b"all", b"end"]
    assert (chunks.reads, chunks.closed) == (0, True)


async def test_a_stream_that_stops_before_its_final_chunk_ends_with_a_protocol_error() -> None:
    chunks = Chunks(text(" b"))

    events = await run(text("a"), chunks)

    assert events == [b"open", b"a", b" b", f"failed protocol_error: {ENDED_EARLY}".encode()]
    assert chunks.closed


async def test_a_failure_after_the_start_is_the_last_event_and_the_text_sent_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chunks = Chunks(text(" b"), error=ProviderUnavailableError("connection reset"))

    with caplog.at_level(logging.WARNING, logger="plugins_api.edge.sse"):
        events = await run(text("a"), chunks)

    assert events == [b"open", b"a", b" b", b"failed unavailable: connection reset"]
    assert chunks.closed
    assert [r.getMessage() for r in caplog.records] == [
        "stream failed after it started: unavailable"
    ]


async def test_a_client_that_goes_away_mid_stream_closes_the_providers_chunks() -> None:
    chunks = Chunks(text(" b"), text(" c", final=True))
    events = encode_stream(text("a"), chunks, Lettered())

    assert [await anext(events), await anext(events)] == [b"open", b"a"]
    await events.aclose()

    assert chunks.closed
    assert chunks.reads == 0


async def test_the_first_chunk_is_read_and_the_rest_left_open() -> None:
    chunks = Chunks(text("a"), text("b", final=True))

    assert (await first_chunk(chunks)).content == "a"
    assert (chunks.reads, chunks.closed) == (1, False)


async def test_a_stream_with_no_chunk_at_all_is_a_protocol_error_and_is_closed() -> None:
    chunks = Chunks()

    with pytest.raises(ProtocolError, match="before the first chunk"):
        await first_chunk(chunks)
    assert chunks.closed


async def test_a_failure_before_the_first_chunk_is_raised_and_the_stream_closed() -> None:
    chunks = Chunks(error=ProviderUnavailableError("refused"))

    with pytest.raises(ProviderUnavailableError):
        await first_chunk(chunks)
    assert chunks.closed


@pytest.mark.parametrize(
    "text", ["Hi", ' "quoted" \\ and \n lines', "café 🙂", "lone \ud800 surrogate"]
)
def test_a_text_event_is_the_same_bytes_as_the_general_way_writes_it(text: str) -> None:
    """``/chat``'s text events take a short way (the provider and model encoded once): the same bytes."""
    events = ChatEvents()
    for provider, model in [("openai", "gpt-4o-mini"), ("openai", "gpt-4o-mini"), ("ollama", None)]:
        chunk = StreamingChunk(content=text, metadata={"provider": provider, "model": model})
        assert list(events.chunk(chunk)) == list(ChatEvents()._events(chunk))
        assert list(events.chunk(chunk)) == [
            sse_event("chunk", {"content": text, "provider": provider, "model": model})
        ]
