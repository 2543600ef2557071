"""The one key authentication: which headers carry a key, per endpoint family, and the same refusals."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from plugins_api.access.key_changes import client_key_revoke
from plugins_api.access.key_credentials import (
    Denial,
    aauthenticate_key,
    authenticate_key,
    credential_headers,
    key_credential,
    presents_key,
    scope_credential_headers,
)
from tests.plugins_api.test_consumers import ORIGIN, providers, router  # noqa: F401 - fixture

MALFORMED = "Use 'Authorization: Bearer <key>'."
UNKNOWN = "Unknown or revoked API key."


@pytest.mark.parametrize(
    ("headers", "x_api_key", "expected"),
    [
        ({"authorization": "Bearer echo-abc"}, False, "echo-abc"),
        ({"authorization": "bearer  echo-abc "}, False, "echo-abc"),
        ({"x-api-key": "echo-abc"}, True, "echo-abc"),
        ({"x-api-key": " echo-abc "}, True, "echo-abc"),
        # Where x-api-key is not taken, it is no credential at all.
        ({"x-api-key": "echo-abc"}, False, None),
        ({"authorization": "Bearer echo-a", "x-api-key": "echo-b"}, True, "echo-a"),
        ({"authorization": "", "x-api-key": "echo-b"}, True, "echo-b"),
        ({"authorization": ""}, False, None),
        ({}, True, None),
        (
            {"authorization": "Basic dXNlcjpwdw=="},
            True,
            Denial(401, "authentication_required", MALFORMED),
        ),
        ({"authorization": "Bearer  "}, False, Denial(401, "authentication_required", MALFORMED)),
        # Authorization wins even when it is the malformed one.
        (
            {"authorization": "Basic x", "x-api-key": "echo-b"},
            True,
            Denial(401, "authentication_required", MALFORMED),
        ),
        (
            {"x-api-key": "  "},
            True,
            Denial(401, "authentication_required", "The x-api-key header is empty."),
        ),
    ],
)
def test_the_credential_read_from_the_headers(
    headers: dict[str, str], x_api_key: bool, expected: Any
) -> None:
    assert key_credential(headers, x_api_key=x_api_key) == expected


@pytest.mark.parametrize(
    ("headers", "offers"),
    [
        ({"authorization": "Bearer echo-abc"}, True),
        ({"authorization": "Bearer "}, True),  # malformed, but a key client's: the view refuses it
        ({"x-api-key": ""}, True),
        ({"authorization": "Basic x"}, False),
        ({"authorization": "Bearer"}, False),
        ({}, False),
    ],
)
def test_whether_headers_offer_a_key(headers: dict[str, str], offers: bool) -> None:
    assert presents_key(headers) is offers


def test_credential_headers_are_read_from_an_asgi_scope_as_django_reads_them() -> None:
    raw = [
        (b"Authorization", b"Bearer one"),
        (b"cookie", b"sessionid=x"),
        (b"x-api-key", b"k"),
        (b"authorization", b"Bearer two"),
    ]
    assert credential_headers(raw) == {"authorization": "Bearer one,Bearer two", "x-api-key": "k"}


def test_a_scopes_key_headers_are_read_once_and_kept_in_it() -> None:
    scope = {"type": "http", "headers": [(b"X-Api-Key", b"k"), (b"host", b"h")]}
    first = scope_credential_headers(scope)
    assert first == {"x-api-key": "k"}
    scope["headers"] = []  # not read again: what the request came with holds for it
    assert scope_credential_headers(scope) is first
    assert scope_credential_headers({"headers": []}) == {}


@pytest.mark.django_db
def test_authentication_returns_the_identity_none_or_the_401(chat_key) -> None:
    row, raw_key = chat_key
    bearer = {"authorization": f"Bearer {raw_key}"}

    identity = authenticate_key(bearer)
    assert identity is not None and not isinstance(identity, Denial)
    assert (identity.key_id, identity.scope) == (row.pk, "chat")
    assert async_to_sync(aauthenticate_key)({"x-api-key": raw_key}, x_api_key=True) == identity
    assert authenticate_key({}) is None
    assert authenticate_key({"authorization": "Bearer echo-unknown"}) == Denial(
        401, "authentication_required", UNKNOWN
    )
    client_key_revoke(name=row.name)
    assert authenticate_key(bearer) == Denial(401, "authentication_required", UNKNOWN)


@pytest.mark.django_db
def test_the_rest_api_takes_the_key_as_bearer_only(admin_key) -> None:
    """A deliberate choice: x-api-key exists for Anthropic's SDK, which calls /v1/messages only."""
    client = Client()
    assert (
        client.get("/api/providers/", HTTP_AUTHORIZATION=f"Bearer {admin_key[1]}").status_code
        == 200
    )
    refused = client.get("/api/providers/", HTTP_X_API_KEY=admin_key[1])
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_required"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/chat", "/metrics", "/api/providers/"])
@pytest.mark.parametrize(
    ("header", "message"),
    [("Basic dXNlcjpwdw==", MALFORMED), ("Bearer echo-unknown", UNKNOWN)],
)
def test_every_echo_shaped_endpoint_refuses_a_bad_key_alike(
    path: str, header: str, message: str
) -> None:
    client = Client()
    response = (
        client.post(path, {}, content_type="application/json", HTTP_AUTHORIZATION=header)
        if path == "/chat"
        else client.get(path, HTTP_AUTHORIZATION=header)
    )
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="echo"'
    assert response.json()["error"] == {"type": "authentication_required", "message": message}


@pytest.mark.usefixtures("providers")
async def test_the_websocket_takes_the_key_as_bearer_only(chat_key) -> None:
    """The browser's socket sends its cookie; other clients send Bearer, as to the REST API."""
    headers = [ORIGIN, (b"x-api-key", chat_key[1].encode())]
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=headers)
    assert await communicator.connect(timeout=10) == (False, 4401)


@pytest.mark.django_db
def test_a_key_verified_earlier_in_the_request_is_taken_from_its_scope(
    chat_key, monkeypatch
) -> None:
    from plugins_api.access import key_credentials

    _, raw_key = chat_key
    identity = authenticate_key({"authorization": f"Bearer {raw_key}"})
    assert identity is not None and not isinstance(identity, Denial)
    scope: dict[str, object] = {}
    key_credentials.remember_verified(scope, raw_key, identity)
    assert raw_key not in repr(scope), "the scope keeps the key's digest, never the key"

    lookups: list[str] = []
    real_lookup = key_credentials.alookup_key

    async def counted(token: str) -> Any:
        lookups.append(token)
        return await real_lookup(token)

    monkeypatch.setattr(key_credentials, "alookup_key", counted)
    found = async_to_sync(aauthenticate_key)({"x-api-key": raw_key}, x_api_key=True, scope=scope)
    assert found == identity and lookups == []

    # Another key than the one verified is verified itself: an unknown one is refused.
    other = async_to_sync(aauthenticate_key)({"authorization": "Bearer echo-unknown"}, scope=scope)
    assert other == Denial(401, "authentication_required", UNKNOWN)
    assert lookups == ["echo-unknown"]
