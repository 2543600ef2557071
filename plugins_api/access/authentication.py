"""DRF's authentication and permissions for the REST API: a Bearer client key or a staff session.

``BearerKeyAuthentication`` adapts the one key authentication
(``key_credentials.authenticate_key``) to DRF. The REST API takes the key as
``Authorization: Bearer`` only, not as ``x-api-key``: see ``key_credentials``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions

from plugins_api.access.client_keys import ClientIdentity
from plugins_api.access.key_credentials import Denial, authenticate_key
from plugins_api.models import ClientAPIKey


class ClientKeyUser(AnonymousUser):
    """The request user when a client authenticates with a key rather than a login."""

    def __init__(self, identity: ClientIdentity) -> None:
        super().__init__()
        self.identity = identity
        self.username = f"key:{identity.name}"

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True

    @property
    def is_anonymous(self) -> bool:  # type: ignore[override]
        return False

    def __str__(self) -> str:
        return self.username


class BearerKeyAuthentication(authentication.BaseAuthentication):
    """Authenticate ``Authorization: Bearer <client key>``."""

    def authenticate(self, request: Any) -> tuple[ClientKeyUser, ClientIdentity] | None:
        found = authenticate_key(request.headers)
        if isinstance(found, Denial):
            raise exceptions.AuthenticationFailed(found.message)
        if found is None:
            return None
        return ClientKeyUser(found), found

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="echo"'


class SessionAuthentication(authentication.SessionAuthentication):
    """Django's session login (CSRF enforced), for the browsable docs and the admin's user."""


def _is_staff_session(request: Any) -> bool:
    user = getattr(request, "user", None)
    return bool(
        user
        and user.is_authenticated
        and getattr(user, "is_staff", False)
        and not isinstance(user, ClientKeyUser)
    )


class IsAdminClient(permissions.BasePermission):
    """Allow an admin-scoped key or a staff session."""

    message = "This endpoint needs an admin-scoped API key or a staff login."

    def has_permission(self, request: Any, view: Any) -> bool:
        identity = request.auth if isinstance(request.auth, ClientIdentity) else None
        if identity is not None:
            return identity.allows(ClientAPIKey.SCOPE_ADMIN)
        return _is_staff_session(request)


class IsChatClient(permissions.BasePermission):
    """Allow a chat- or admin-scoped key, or a logged-in user."""

    message = "This endpoint needs a chat or admin API key."

    def has_permission(self, request: Any, view: Any) -> bool:
        identity = request.auth if isinstance(request.auth, ClientIdentity) else None
        if identity is not None:
            return identity.allows(ClientAPIKey.SCOPE_CHAT)
        user = getattr(request, "user", None)
        return bool(user and user.is_authenticated)
