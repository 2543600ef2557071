"""The one Server-Sent Events writer: turn a chunk stream into ``text/event-stream`` bytes.

Events (each ``event: <type>`` plus ``data: <json>`` with the same ``type``):
``chunk`` ``{"type", "content", "provider", "model"}`` for each piece of text;
``done`` ``{"type", "finish_reason", "usage", "provider", "model"}`` last;
``error`` ``{"type", "error": {...}}`` when the provider fails mid-stream,
after which the stream ends (the text already sent stands).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from plugins_api.edge.error_responses import provider_error_body
from providers.errors import ProviderError
from providers.types import StreamingChunk

logger = logging.getLogger(__name__)


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    """Return one SSE event."""
    payload = json.dumps({"type": event, **data}, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


async def chat_event_stream(
    first: StreamingChunk | None, chunks: AsyncIterator[StreamingChunk]
) -> AsyncIterator[bytes]:
    """Yield SSE events for FIRST (already read) and then the rest of CHUNKS."""
    try:
        chunk = first
        while chunk is not None:
            meta = chunk.metadata
            if chunk.content or chunk.tool_calls:
                data: dict[str, Any] = {
                    "content": chunk.content,
                    "provider": meta.get("provider"),
                    "model": meta.get("model"),
                }
                if chunk.tool_calls:
                    data["tool_calls"] = [
                        {"id": c.id, "name": c.name, "arguments": c.arguments}
                        for c in chunk.tool_calls
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
                return
            chunk = await anext(chunks, None)
        yield sse_event(
            "error",
            {
                "error": {
                    "type": "protocol_error",
                    "message": "The provider ended the stream early.",
                }
            },
        )
    except ProviderError as exc:
        _, body, _ = provider_error_body(exc)
        logger.warning("stream failed after it started: %s", exc.kind)
        yield sse_event("error", body)
    finally:
        await chunks.aclose()
