"""drf-spectacular extensions: Echo's authentication classes and name-keyed maps in the OpenAPI schema.

Imported by ``plugins_api.rest_urls``, so that they are registered before
any schema is generated.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object


class BearerKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer <client key>`` (admin-scoped for the management API)."""

    target_class = "plugins_api.authentication.BearerKeyAuthentication"
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

    target_class = "plugins_api.authentication.SessionAuthentication"
    name = "staffSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}


class NameMapScheme(OpenApiSerializerExtension):
    """Document a ``NameMapSerializer`` as an object of its child component, keyed by name."""

    target_class = "plugins_api.serializers.NameMapSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        child = auto_schema.resolve_serializer(self.target.child_class, direction)
        return {
            "type": "object",
            "description": "Keyed by provider name.",
            "additionalProperties": child.ref,
        }
