"""The browser chat's websocket protocol: parse what clients send, build what the server sends.

Client frames (JSON text):
``{"type": "chat", "conversation": id|null, "message": "...", "provider"?, "model"?}``,
``{"type": "cancel"}`` and ``{"type": "providers"}`` (send the provider list again).

Server frames: ``providers``; for each answer ``start``, ``chunk`` per piece
of text, then ``done`` or ``error``. Errors have the API's one shape,
``{"type": "error", "error": {"type", "message", "field"?, "provider"?}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from plugins_api.chat_requests import CLIENT_FORBIDDEN_FIELDS
from plugins_api.error_responses import error_body, provider_error_body
from providers.errors import ProviderError

CLIENT_FRAME_TYPES = ("chat", "cancel", "providers")


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
    return value.strip() or None


def parse_frame(text: str) -> ClientFrame:
    """Return the client frame TEXT describes, or raise ``FrameError`` naming the field."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise FrameError(f"The frame is not valid JSON: {exc}.") from None
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
    conversation = data.get("conversation")
    if conversation is not None and (
        isinstance(conversation, bool) or not isinstance(conversation, int) or conversation < 1
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
