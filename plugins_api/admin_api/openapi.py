"""drf-spectacular extensions: Echo's authentication classes and name-keyed maps in the OpenAPI schema.

Imported by ``plugins_api.admin_api.rest_urls``, so that they are registered before
any schema is generated.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object

from plugins_api.admin_api.openapi_compat import document_compat_endpoints


class BearerKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer <client key>`` (admin-scoped for the management API)."""

    target_class = "plugins_api.access.authentication.BearerKeyAuthentication"
    name = "bearerKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        definition = build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix="Bearer"
        )
        definition["description"] = (
            "An Echo client key; the management API needs an admin-scoped one."
        )
        return definition


class StaffSessionScheme(OpenApiAuthenticationExtension):
    """Django's session cookie of a staff user (CSRF token required on writes)."""

    target_class = "plugins_api.access.authentication.SessionAuthentication"
    name = "staffSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}


class NameMapScheme(OpenApiSerializerExtension):
    """Document a ``NameMapSerializer`` as an object of its child component, keyed by name."""

    target_class = "plugins_api.admin_api.serializers.NameMapSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        child = auto_schema.resolve_serializer(self.target.child_class, direction)
        return {
            "type": "object",
            "description": "Keyed by provider name.",
            "additionalProperties": child.ref,
        }


_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object", "required": ["type"]}},
            ],
            "description": "Text, or OpenAI-style parts (text, image_url).",
        },
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": {"type": "string"},
        "name": {"type": "string"},
    },
}
_CHAT_REQUEST = {
    "type": "object",
    "description": "Send `prompt` (optionally with `system`) or `messages`.",
    "properties": {
        "prompt": {"type": "string"},
        "system": {"type": "string"},
        "messages": {"type": "array", "items": {"$ref": "#/components/schemas/ChatMessage"}},
        "provider": {"type": "string", "description": "A provider name; else routing decides."},
        "model": {"type": "string", "description": "A model, or 'provider/model'."},
        "stream": {"type": "boolean", "default": False},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    },
    "example": {"prompt": "Hello", "provider": "echo", "stream": False},
}
_USAGE = {
    "type": "object",
    "properties": {
        k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
_CHAT_RESPONSE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "content": {"type": "string"},
        "model": {"type": "string"},
        "provider": {"type": "string", "description": "The provider that answered."},
        "usage": {"$ref": "#/components/schemas/ChatUsage"},
        "finish_reason": {"type": "string"},
        "tool_calls": {"type": "array", "nullable": True, "items": {"type": "object"}},
        "created": {"type": "integer"},
        "metadata": {
            "type": "object",
            "description": "`fallback_path` lists the routes that failed before this answer.",
        },
    },
}
# One Server-Sent Event as SSE clients read it (OpenAPI 3.2's convention for
# text/event-stream): its name, and its data, a JSON text whose "type" repeats it.
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["chunk", "done", "error"]},
        "data": {"type": "string", "description": "JSON; its `type` is the event's name."},
    },
}
_SSE = (
    "With `stream: true`: `text/event-stream`, events `chunk` "
    '(`{"type":"chunk","content","provider","model"}`) as they arrive, then `done` '
    '(`{"type":"done","finish_reason","usage","provider","model"}`), or `error` '
    '(`{"type":"error","error":{...}}`) if the provider fails after the first chunk.'
)


def document_chat_endpoint(result: dict[str, Any], generator: Any, request: Any, public: bool):
    """Add ``POST /chat`` (an async Django view, which DRF does not see) to the schema.

    Then the compatible APIs and ``/metrics`` (``openapi_compat``), async views too.
    """
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(
        {
            "ChatMessage": _MESSAGE,
            "ChatRequest": _CHAT_REQUEST,
            "ChatUsage": _USAGE,
            "ChatResponse": _CHAT_RESPONSE,
        }
    )
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    if "Error" not in schemas:
        error = {"application/json": {"schema": {"type": "object"}}}
    statuses = {
        "400": "Bad input; `error.field` names it.",
        "401": "No key, or an unknown or revoked one.",
        "403": "The key may not chat.",
        "404": "No such provider.",
        "422": "The provider rejected the request.",
        "429": "Rate limited upstream; see `Retry-After`.",
        "502": "The upstream failed.",
        "503": "The upstream is unavailable.",
        "504": "The upstream timed out.",
    }
    result.setdefault("paths", {})["/chat"] = {
        "post": {
            "operationId": "chat",
            "summary": "Chat with a provider, as JSON or streamed (SSE)",
            "description": _SSE,
            "tags": ["chat"],
            "security": [{"bearerKey": []}, {"staffSession": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}
                },
            },
            "responses": {
                "200": {
                    "description": "The answer (JSON), or the event stream when `stream` is true.",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ChatResponse"}
                        },
                        "text/event-stream": {"schema": _SSE_EVENT},
                    },
                },
                **{
                    code: {"description": text, "content": error} for code, text in statuses.items()
                },
            },
        }
    }
    return document_compat_endpoints(result)
