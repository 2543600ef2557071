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
