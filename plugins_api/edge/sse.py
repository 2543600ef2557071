"""The one Server-Sent Events writer: frame events, and turn a chunk stream into ``text/event-stream``.

Every streaming API (``POST /chat``, OpenAI's and Anthropic's ``/v1``) reads
its first chunk with ``first_chunk`` before it answers, frames its events with
``sse_frame``/``sse_event``, and runs its stream through ``encode_stream``;
only its ``StreamFormat`` (which events a chunk becomes) is its own.

``/chat``'s format (each ``event: <type>`` plus ``data: <json>`` with the same
``type``): ``chunk`` ``{"type", "content", "provider", "model"}`` for each
piece of text; ``done`` ``{"type", "finish_reason", "usage", "provider",
"model"}`` last; ``error`` ``{"type", "error": {...}}`` when the provider
fails mid-stream, after which the stream ends (the text already sent stands).

A worker that is shutting down lets its streams run until the drain's
deadline (``ECHO_DRAIN_SECONDS``, see ``providers.runtime.lifecycle``); a
stream still waiting for a chunk then ends with the API's failure event for
``ShuttingDown`` (error type ``shutting_down``), and a request still waiting
for its first chunk is answered 503 with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Protocol

import orjson
from django.http import StreamingHttpResponse

from plugins_api.edge.error_responses import provider_error_body
from providers.errors import ProtocolError, ProviderError
from providers.runtime import process as runtime
from providers.runtime.lifecycle import StreamLimit
from providers.types import StreamingChunk

logger = logging.getLogger(__name__)

#: The failure a stream reports when it stops before its final chunk.
ENDED_EARLY = "The provider ended the stream early."


class ShuttingDown(ProviderError):
    """This worker is shutting down and the drain's time ran out: ask again (another worker)."""

    kind = "shutting_down"
    retryable = True
    http_status = 503


def shutting_down() -> ShuttingDown:
    return ShuttingDown("This server is shutting down; the stream was ended. Ask again.")


async def _next_chunk(
    chunks: AsyncIterator[StreamingChunk], limit: StreamLimit
) -> StreamingChunk | None:
    """Return the next of CHUNKS (None at their end); raise ShuttingDown if the drain ends first.

    LIMIT is the stream's (``lifecycle.stream_limit()``, made once per stream).
    """
    try:
        return await limit.next(chunks)
    except TimeoutError:
        if limit.expired:
            raise shutting_down() from None
        raise


def sse_frame(data: dict[str, Any] | str, *, event: str | None = None) -> bytes:
    """Return one SSE event: an ``event:`` line when EVENT is given, and DATA on one ``data:`` line.

    DATA is sent as compact UTF-8 JSON (orjson: one is written per chunk
    streamed), or as is when it is text (OpenAI's ``[DONE]``).
    """
    head = f"event: {event}\n".encode() if event else b""
    if isinstance(data, str):
        return head + b"data: " + data.encode() + b"\n\n"
    try:
        body = orjson.dumps(data)
    except TypeError:  # a key that is not a string, an integer beyond 64 bits
        body = json.dumps(data, separators=(",", ":")).encode()
    return head + b"data: " + body + b"\n\n"


def json_text(text: str) -> bytes | None:
    """Return TEXT as a JSON string, as ``sse_frame`` would write it; None when orjson cannot.

    For the streams' short ways to their text events: a text orjson refuses
    (a lone surrogate) goes the general way, where ``sse_frame`` writes it with ``json``.
    """
    try:
        return orjson.dumps(text)
    except TypeError:
        return None


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    """Return one typed SSE event: ``event: EVENT``, and DATA whose ``type`` repeats EVENT."""
    return sse_frame({"type": event, **data}, event=event)


class EventStream(StreamingHttpResponse):
    """A ``text/event-stream`` response of EVENTS, each already bytes, that proxies do not buffer.

    Django sends a streaming response's parts through two async generators of
    its own (one maps each part to bytes, one lets a sync iterator be read
    asynchronously) and a third that cuts each into pieces: three hops per
    event, about a fifth of what an event costs Echo. ``events`` is the
    stream as ``encode_stream`` yields it, for a server loop that sends each
    event as it is (``echo_site.hot_path.send_events``); Django's own
    ``send_response`` still reads it the usual way.
    """

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, content_type="text/event-stream")
        self.events = events
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"


def event_stream_response(events: AsyncIterator[bytes]) -> EventStream:
    """Return EVENTS as a ``text/event-stream`` response that proxies do not buffer."""
    return EventStream(events)


async def first_chunk(chunks: AsyncIterator[StreamingChunk]) -> StreamingChunk:
    """Return the first of CHUNKS, read before answering.

    Read first, a failure before any text (after the manager's retries and
    failover) gets an honest status instead of a 200 stream. On a failure,
    or (``ProtocolError``) a stream with no chunk at all, CHUNKS are closed
    and the error raised.
    """
    try:
        first = await _next_chunk(chunks, runtime.lifecycle.stream_limit())
    except BaseException:
        await chunks.aclose()
        raise
    if first is None:  # the manager already refuses an empty stream; kept for safety
        await chunks.aclose()
        raise ProtocolError("The provider ended its stream before the first chunk.")
    return first


class StreamFormat(Protocol):
    """Which events one API writes for a chunk stream (one instance a stream: it may keep state)."""

    def opening(self, first: StreamingChunk) -> Iterable[bytes]:
        """Return the events that come before the first chunk's."""

    def chunk(self, chunk: StreamingChunk) -> Iterable[bytes]:
        """Return the events for CHUNK; for the final chunk, the stream's closing events too."""

    def failure(self, exc: ProviderError) -> bytes:
        """Return the event that ends a stream that failed after it started."""


class StreamRecorder(Protocol):
    """Who records how a stream ended (``request_usage.RequestUsage``)."""

    def stream_ended(
        self,
        *,
        first: StreamingChunk | None,
        final: StreamingChunk | None,
        error: ProviderError | None = None,
        cancelled: bool = False,
    ) -> None:
        """Record a stream that ended: complete (FINAL), failed (ERROR) or CANCELLED."""


async def encode_stream(
    first: StreamingChunk,
    chunks: AsyncIterator[StreamingChunk],
    form: StreamFormat,
    recorder: StreamRecorder | None = None,
) -> AsyncIterator[bytes]:
    """Yield FORM's events for FIRST (already read) and then the rest of CHUNKS.

    The stream ends after the final chunk's events, or with FORM's failure
    event when the provider fails, stops before its final chunk, or the
    worker's drain ends it (``ShuttingDown``); the text already sent stands.
    CHUNKS are closed however it ends, and RECORDER told how it did, after
    the last event: complete (a final chunk went by), failed (CHUNKS raised
    a ProviderError), or cancelled (anything else: the client went away, the
    drain, a stream cut short). Recorded here rather than by a generator
    around CHUNKS: one step less for every chunk of every stream.
    """
    final = first if first.is_final else None
    error: ProviderError | None = None
    try:
        for event in form.opening(first):
            yield event
        limit = runtime.lifecycle.stream_limit()
        chunk: StreamingChunk | None = first
        while chunk is not None:
            for event in form.chunk(chunk):
                yield event
            if chunk.is_final:
                return
            try:  # _next_chunk's steps, one coroutine fewer a chunk
                chunk = await limit.next(chunks)
            except TimeoutError:
                if limit.expired:
                    raise shutting_down() from None
                raise
            except ProviderError as exc:  # the provider's, not the drain's
                error = exc
                raise
            if chunk is not None and chunk.is_final:
                final = chunk
        yield form.failure(ProtocolError(ENDED_EARLY))
    except ProviderError as exc:
        logger.warning("stream failed after it started: %s", exc.kind)
        yield form.failure(exc)
    finally:
        if recorder is not None:
            recorder.stream_ended(
                first=first, final=final, error=error, cancelled=final is None and error is None
            )
        await chunks.aclose()


_CHAT_CHUNK = b'event: chunk\ndata: {"type":"chunk","content":'


class ChatEvents:
    """``/chat``'s events (see the module docstring)."""

    def __init__(self) -> None:
        #: The provider and model of the last text event, and the end of its data after the text.
        self._named: tuple[Any, Any] | None = None
        self._tail = b""

    def opening(self, first: StreamingChunk) -> Iterable[bytes]:
        return ()

    def chunk(self, chunk: StreamingChunk) -> Iterable[bytes]:
        meta = chunk.metadata
        if chunk.content and not chunk.tool_calls and not chunk.is_final:
            # Most events of a stream: its text. The bytes ``sse_event`` gives,
            # the provider and model (the same all along) encoded once.
            named = (meta.get("provider"), meta.get("model"))
            if named != self._named:
                try:
                    self._tail = b"," + orjson.dumps({"provider": named[0], "model": named[1]})[1:]
                except TypeError:  # names orjson cannot write: as ``sse_frame`` writes them
                    return self._events(chunk)
                self._named = named
            text = json_text(chunk.content)
            if text is None:
                return self._events(chunk)
            return (_CHAT_CHUNK + text + self._tail + b"\n\n",)
        return self._events(chunk)

    def _events(self, chunk: StreamingChunk) -> Iterator[bytes]:
        meta = chunk.metadata
        if chunk.content or chunk.tool_calls:
            data: dict[str, Any] = {
                "content": chunk.content,
                "provider": meta.get("provider"),
                "model": meta.get("model"),
            }
            if chunk.tool_calls:
                data["tool_calls"] = [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in chunk.tool_calls
                ]
            yield sse_event("chunk", data)
        if chunk.is_final:
            done = {
                "finish_reason": chunk.finish_reason or "stop",
                "usage": chunk.usage.as_dict() if chunk.usage else None,
                "provider": meta.get("provider"),
                "model": meta.get("model"),
            }
            if meta.get("fallback_path"):
                done["fallback_path"] = meta["fallback_path"]
            yield sse_event("done", done)

    def failure(self, exc: ProviderError) -> bytes:
        _, body, _ = provider_error_body(exc)
        return sse_event("error", body)


def chat_event_stream(
    first: StreamingChunk,
    chunks: AsyncIterator[StreamingChunk],
    recorder: StreamRecorder | None = None,
) -> AsyncIterator[bytes]:
    """Return ``/chat``'s events for FIRST (already read) and then the rest of CHUNKS."""
    return encode_stream(first, chunks, ChatEvents(), recorder)
