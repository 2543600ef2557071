"""Echo's one key authentication: read a client key from request headers and verify it.

A key comes as ``Authorization: Bearer <key>``. The endpoints the model SDKs
call (``/chat``, ``/v1/...``, and ``/metrics``) also take ``x-api-key: <key>``,
as Anthropic's SDK sends it, so that either SDK works unchanged; their callers
pass ``x_api_key=True``. The REST API (``/api/``, ``/plugins/``) and the chat
websocket take Bearer only: they are Echo's own, and one form keeps their
documentation and OpenAPI schema true. ``Authorization`` wins over
``x-api-key`` when a request has both; an empty ``Authorization`` is no
credential at all.

``authenticate_key`` (sync: DRF's views run in threads) and
``aauthenticate_key`` (the async views, the websocket, the ASGI body limit)
return the key's identity, None when the headers offer no key (the caller
may look for a session instead), or the 401 ``Denial`` of a malformed header
or of an unknown or revoked key, or of an expired one (kind ``key_expired``,
its message saying so). Verification goes through the cached
client-key store (``client_keys.verify_key``). What a key may do, its scope,
is each caller's rule.

A key is verified once per request: ``RequestBodyLimit`` verifies it before
reading the body and leaves what it found in the ASGI scope
(``remember_verified``); the view's ``aauthenticate_key`` given that scope
takes it from there when the headers offer the same key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plugins_api.access.client_keys import ClientIdentity, alookup_key, hash_key, lookup_key

if TYPE_CHECKING:
    from django.http import HttpRequest

AUTHORIZATION_HEADER = "authorization"
API_KEY_HEADER = "x-api-key"
#: What a caller with neither a key nor a session is told.
SEND_A_KEY = "Send 'Authorization: Bearer <key>' (a chat or admin key)."

Headers = Mapping[str, str | None]
#: The ASGI scope's entry for the key verified earlier in the request: (its digest, its identity).
VERIFIED_KEY = "echo.verified_key"
#: The ASGI scope's entry for its key headers, read once (``scope_credential_headers``).
CREDENTIAL_HEADERS = "echo.credential_headers"


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request is refused: STATUS (401 or 403), Echo's error KIND and a MESSAGE.

    Each API renders it in its own error shape (Echo's, OpenAI's, Anthropic's).
    """

    status: int
    kind: str
    message: str

    @property
    def is_authentication(self) -> bool:
        return self.status == 401


def unauthorized(message: str) -> Denial:
    """Return the 401 Denial saying MESSAGE."""
    return Denial(401, "authentication_required", message)


def _bearer_part(authorization: str) -> str | None:
    """Return what follows the ``Bearer`` scheme in AUTHORIZATION, or None for another scheme."""
    scheme, space, rest = authorization.partition(" ")
    return rest if space and scheme.lower() == "bearer" else None


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, or None."""
    rest = _bearer_part(authorization) if authorization else None
    return (rest or "").strip() or None


def presents_key(headers: Headers) -> bool:
    """Return whether HEADERS offer a key in any form Echo reads, well formed or not.

    HEADERS answer lower-case names: Django's ``request.headers`` or ``credential_headers``.
    """
    authorization = headers.get(AUTHORIZATION_HEADER)
    return (authorization is not None and _bearer_part(authorization) is not None) or (
        headers.get(API_KEY_HEADER) is not None
    )


def credential_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Return the key headers among an ASGI scope's RAW_HEADERS, by lower-case name.

    A header sent twice is joined with a comma, as Django joins it for the views.
    """
    found: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = _KEY_HEADERS.get(raw_name.lower())  # only the key headers are decoded
        if name is not None:
            value = raw_value.decode("latin-1")
            found[name] = f"{found[name]},{value}" if name in found else value
    return found


_KEY_HEADERS = {name.encode("latin-1"): name for name in (AUTHORIZATION_HEADER, API_KEY_HEADER)}


def request_headers(request: HttpRequest) -> Headers:
    """Return the key headers of REQUEST, a Django request: from its ASGI scope when it has one.

    Read straight from the scope's raw headers, they cost a tenth of
    ``request.headers``, which decodes every header a client sent.
    """
    scope = getattr(request, "scope", None)
    if scope is not None and "headers" in scope:
        return scope_credential_headers(scope)
    return request.headers


def scope_credential_headers(scope: dict[str, object]) -> dict[str, str]:
    """Return the key headers of an ASGI SCOPE (``credential_headers``), read once per request.

    The hot path's router, the middleware and the view each ask; the answer
    is kept in SCOPE (which holds those headers already).
    """
    found = scope.get(CREDENTIAL_HEADERS)
    if found is None:
        raw: Iterable[tuple[bytes, bytes]] = scope["headers"]  # type: ignore[assignment]
        found = scope[CREDENTIAL_HEADERS] = credential_headers(raw)
    return found  # type: ignore[return-value]


def key_credential(headers: Headers, *, x_api_key: bool = False) -> str | Denial | None:
    """Return the key HEADERS offer, None when they offer none, or the Denial of a malformed one.

    X_API_KEY: whether this endpoint takes the ``x-api-key`` header too.
    """
    authorization = headers.get(AUTHORIZATION_HEADER)
    if authorization:
        token = bearer_token(authorization)
        return token if token is not None else unauthorized("Use 'Authorization: Bearer <key>'.")
    api_key = headers.get(API_KEY_HEADER) if x_api_key else None
    if api_key is not None:
        return api_key.strip() or unauthorized("The x-api-key header is empty.")
    return None


def _verified(identity: ClientIdentity | None) -> ClientIdentity | Denial:
    if identity is None:
        return unauthorized("Unknown or revoked API key.")
    if identity.expired():
        assert identity.expires_at is not None
        return Denial(
            401,
            "key_expired",
            f"This API key expired at {identity.expires_at.isoformat(timespec='seconds')}; "
            "ask for a new one.",
        )
    return identity


def verify_credential(token: str) -> ClientIdentity | Denial:
    """Return the identity behind TOKEN, or the 401 Denial of an unknown, revoked or expired key (sync)."""
    return _verified(lookup_key(token))


async def averify_credential(token: str) -> ClientIdentity | Denial:
    """Return the identity behind TOKEN, or the 401 Denial of an unknown, revoked or expired key (async)."""
    return _verified(await alookup_key(token))


def authenticate_key(
    headers: Headers, *, x_api_key: bool = False
) -> ClientIdentity | Denial | None:
    """Return the identity of the key HEADERS offer, None for no key, or the 401 Denial (sync)."""
    credential = key_credential(headers, x_api_key=x_api_key)
    return verify_credential(credential) if isinstance(credential, str) else credential


async def aauthenticate_key(
    headers: Headers, *, x_api_key: bool = False, scope: Mapping[str, object] | None = None
) -> ClientIdentity | Denial | None:
    """Return the identity of the key HEADERS offer, None for no key, or the 401 Denial (async).

    SCOPE, the request's ASGI scope, may hold the identity this key was
    verified as earlier in the same request (``remember_verified``).
    """
    credential = key_credential(headers, x_api_key=x_api_key)
    if not isinstance(credential, str):
        return credential
    earlier = scope.get(VERIFIED_KEY) if scope is not None else None
    if isinstance(earlier, tuple) and earlier[0] == hash_key(credential):
        return earlier[1]
    return await averify_credential(credential)


def remember_verified(scope: dict[str, object], token: str, identity: ClientIdentity) -> None:
    """Leave in SCOPE that TOKEN was verified as IDENTITY (its digest only, never the key)."""
    scope[VERIFIED_KEY] = (hash_key(token), identity)
