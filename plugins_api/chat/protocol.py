"""The browser chat's websocket protocol: parse what clients send, build what the server sends.

Client frames (JSON text):
``{"type": "chat", "conversation": id|null, "message": "...", "provider"?, "model"?}``,
``{"type": "cancel"}`` and ``{"type": "providers"}`` (send the provider list again).
Frames are parsed with ``bounded_json`` (no deep nesting, NUL or lone
surrogate anywhere), and every value a chat stores is bounded, so nothing a
client sends can fail the database write behind it.

Server frames: ``providers``; for each answer ``start``, ``chunk`` per piece
of text, then ``done`` or ``error``. Errors have the API's one shape,
``{"type": "error", "error": {"type", "message", "field"?, "provider"?}}``.

``done`` says how the answer ended and who wrote it: ``conversation``,
``message_id``, ``status`` (``complete`` or ``cancelled``), ``finish_reason``,
``usage``, ``provider``, ``model``, ``first_chunk_ms``, ``latency_ms`` and
``fallback``: the routes given up on before this provider answered (failover),
in order, each ``{"provider", "model", "error", "attempts"}`` (``error`` is the
failure's type, such as ``unavailable``; ``model`` may be null); empty when the
first choice answered. A ``cancelled`` answer's text is exactly the ``chunk``
frames sent before ``done``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugins_api.edge.bounded_json import JsonInputError, loads_bounded
from plugins_api.edge.chat_requests import CLIENT_FORBIDDEN_FIELDS
from plugins_api.edge.error_responses import error_body, provider_error_body
from providers.errors import ProviderError

CLIENT_FRAME_TYPES = ("chat", "cancel", "providers")
#: Longest provider or model name a client may send (the stored model column's length).
NAME_MAX_CHARS = 200
#: Largest conversation id: the database's bigint; a larger one fails the lookup itself.
CONVERSATION_ID_MAX = 2**63 - 1
#: Most failover steps a ``done`` frame lists (a fallback chain is short; this bounds a bug).
FAILOVER_NOTES_MAX = 20


class FrameError(ValueError):
    """A client frame is wrong; KIND is the error type, FIELD the culprit when there is one."""

    def __init__(self, message: str, *, field: str | None = None, kind: str = "invalid_message"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ChatFrame:
    """A question: in CONVERSATION (None: a new one), for PROVIDER/MODEL (None: routing)."""

    conversation: int | None
    message: str
    provider: str | None
    model: str | None


@dataclass(frozen=True, slots=True)
class CancelFrame:
    """Stop the answer being streamed."""


@dataclass(frozen=True, slots=True)
class ProvidersFrame:
    """Send the provider list again."""


ClientFrame = ChatFrame | CancelFrame | ProvidersFrame


def _optional_name(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FrameError("Must be a string or null.", field=key)
    name = value.strip()
    if len(name) > NAME_MAX_CHARS:
        raise FrameError(f"Must be at most {NAME_MAX_CHARS} characters.", field=key)
    return name or None


def parse_frame(text: str, *, max_message_chars: int) -> ClientFrame:
    """Return the client frame TEXT describes, or raise ``FrameError`` naming the field.

    A chat ``message`` longer than MAX_MESSAGE_CHARS characters is refused.
    """
    try:
        data = loads_bounded(text)
    except JsonInputError as exc:
        raise FrameError(exc.message, field=exc.field) from None
    if not isinstance(data, dict):
        raise FrameError("The frame must be a JSON object with a 'type'.")
    kind = data.get("type")
    if kind not in CLIENT_FRAME_TYPES:
        raise FrameError(f"Must be one of: {', '.join(CLIENT_FRAME_TYPES)}.", field="type")
    if kind == "cancel":
        return CancelFrame()
    if kind == "providers":
        return ProvidersFrame()
    for forbidden in CLIENT_FORBIDDEN_FIELDS:
        if forbidden in data:
            raise FrameError(
                "Clients cannot set upstream settings; an admin configures the provider.",
                field=forbidden,
            )
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise FrameError("Must be a non-empty string.", field="message")
    if len(message) > max_message_chars:
        raise FrameError(f"Must be at most {max_message_chars} characters.", field="message")
    conversation = data.get("conversation")
    if conversation is not None and (
        isinstance(conversation, bool)
        or not isinstance(conversation, int)
        or not 1 <= conversation <= CONVERSATION_ID_MAX
    ):
        raise FrameError(
            "Must be a conversation id (a positive integer) or null.", field="conversation"
        )
    return ChatFrame(
        conversation=conversation,
        message=message,
        provider=_optional_name(data, "provider"),
        model=_optional_name(data, "model"),
    )


def error_frame(
    kind: str, message: str, *, field: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Return an ``error`` frame of KIND; EXTRA (not None) goes beside ``error``."""
    frame: dict[str, Any] = {"type": "error", **error_body(kind, message, field=field)}
    frame.update({k: v for k, v in extra.items() if v is not None})
    return frame


def frame_error_frame(exc: FrameError) -> dict[str, Any]:
    """Return the ``error`` frame for a wrong client frame."""
    return error_frame(exc.kind, exc.message, field=exc.field)


def provider_error_frame(exc: ProviderError, **extra: Any) -> dict[str, Any]:
    """Return the ``error`` frame for a provider failure: the API's body, secrets stripped."""
    _, body, headers = provider_error_body(exc)
    frame: dict[str, Any] = {"type": "error", **body}
    if "Retry-After" in headers:
        frame["retry_after"] = int(headers["Retry-After"])
    frame.update({k: v for k, v in extra.items() if v is not None})
    return frame


def _note_text(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value[:limit]


def failover_notes(metadata: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Return the ``fallback`` list of a ``done`` frame from the final chunk's METADATA.

    The manager's ``fallback_path`` holds ``{"route": "provider/model",
    "error": kind, "attempts": n}`` per route given up on; the page is sent
    the provider and model apart, bounded, and nothing else.
    """
    path = (metadata or {}).get("fallback_path")
    if not isinstance(path, list):
        return []
    notes = []
    for step in path[:FAILOVER_NOTES_MAX]:
        if not isinstance(step, dict) or not isinstance(step.get("route"), str):
            continue
        provider, _, model = step["route"].partition("/")
        attempts = step.get("attempts")
        notes.append(
            {
                "provider": provider[:NAME_MAX_CHARS],
                "model": _note_text(model, NAME_MAX_CHARS),
                "error": _note_text(step.get("error"), NAME_MAX_CHARS) or "error",
                "attempts": attempts if isinstance(attempts, int) else 0,
            }
        )
    return notes
