"""Client key expiry: an expired key is refused like a revoked one, and told it expired.

On the HTTP endpoints (``/chat``, ``/v1/*``, the REST API), at the websocket's
handshake and at its next frame once the key expires mid-connection, and
through the key cache: entries hold the expiry and each use checks it
against ``client_keys.clock``, which the tests move forward.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import AsyncClient
from django.utils import timezone

from plugins_api.access import client_keys
from plugins_api.access.client_keys import averify_key, forget_cached_keys, verify_key
from plugins_api.access.key_changes import client_key_issue
from plugins_api.models import ClientAPIKey
from providers.runtime import process as runtime
from tests.plugins_api.chat_bodies import MINIMAL_CALLS


class MovableClock:
    """A wall clock the test moves forward."""

    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> MovableClock:
    moving = MovableClock()
    monkeypatch.setattr(client_keys, "clock", moving)
    return moving


@pytest.fixture
def expiring(db: Any, echo_config: Any, clock: MovableClock) -> str:
    """A chat key that expires in an hour (by CLOCK); echo live."""
    error = runtime.run_in_serving_loop(
        runtime.apply_config_state, echo_config.name, echo_config.to_spec(), ""
    )
    assert error is None, error
    forget_cached_keys()
    _, raw = client_key_issue(
        name="expiring", scope="chat", expires_at=clock.now + timedelta(hours=1)
    )
    return raw


CALLS = MINIMAL_CALLS


async def _post(path: str, key: str) -> Any:
    return await AsyncClient().post(
        path, json.dumps(CALLS[path]), content_type="application/json", headers={"x-api-key": key}
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", list(CALLS))
async def test_a_key_works_until_it_expires_then_is_told_so(
    path: str, expiring: str, clock: MovableClock
) -> None:
    assert (await _post(path, expiring)).status_code == 200  # now cached
    clock.now += timedelta(hours=2)
    refused = await _post(path, expiring)
    assert refused.status_code == 401
    message = refused.json()["error"]["message"]
    assert "expired" in message and "Unknown" not in message
    if path == "/chat":
        assert refused.json()["error"]["type"] == "key_expired"
    elif path == "/v1/chat/completions":
        assert refused.json()["error"]["code"] == "key_expired"
    else:
        assert refused.json()["error"]["type"] == "authentication_error"


@pytest.mark.django_db(transaction=True)
async def test_models_list_and_rest_api_refuse_an_expired_key(
    expiring: str, clock: MovableClock
) -> None:
    client = AsyncClient()
    headers = {"authorization": f"Bearer {expiring}"}
    assert (await client.get("/v1/models", headers=headers)).status_code == 200
    assert (await client.get("/api/conversations/", headers=headers)).status_code == 200
    clock.now += timedelta(hours=1, seconds=1)
    models = await client.get("/v1/models", headers=headers)
    assert models.status_code == 401 and models.json()["error"]["code"] == "key_expired"
    rest = await client.get("/api/conversations/", headers=headers)
    assert rest.status_code == 401
    assert "expired" in json.dumps(rest.json())


@pytest.mark.django_db(transaction=True)
async def test_the_cache_does_not_outlive_the_expiry(expiring: str, clock: MovableClock) -> None:
    assert await averify_key(expiring) is not None
    assert any(entry[1] is not None for entry in runtime.current().key_cache.values())
    clock.now += timedelta(minutes=59)
    assert await averify_key(expiring) is not None
    clock.now += timedelta(minutes=1)  # exactly the expiry: refused, the cache entry still fresh
    assert await averify_key(expiring) is None
    looked_up = await client_keys.alookup_key(expiring)
    assert looked_up is not None and looked_up.expired()


def test_an_expired_key_is_refused_from_the_database_too(db: Any) -> None:
    forget_cached_keys()
    row, raw = client_key_issue(
        name="old", scope="chat", expires_at=timezone.now() + timedelta(days=1)
    )
    ClientAPIKey.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(days=1))
    assert verify_key(raw) is None  # not cached yet: read with the past expiry


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_is_refused_expired_and_closed_at_its_next_frame(
    expiring: str, clock: MovableClock
) -> None:
    from echo_site.asgi import application

    headers = [(b"authorization", f"Bearer {expiring}".encode())]
    socket = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await socket.connect(timeout=10)
    assert connected
    assert (await socket.receive_json_from(timeout=10))["type"] == "providers"
    await socket.send_json_to({"type": "chat", "message": "hi"})
    while (await socket.receive_json_from(timeout=5))["type"] != "done":
        pass
    clock.now += timedelta(hours=2)  # expires mid-connection
    await socket.send_json_to({"type": "providers"})
    frame = await socket.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["error"]["type"] == "key_expired"
    assert "expired" in frame["error"]["message"]
    closed = await socket.receive_output(timeout=5)
    assert closed["type"] == "websocket.close" and closed["code"] == 4401
    await socket.wait()

    again = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, code = await again.connect(timeout=10)
    assert not connected and code == 4401


def test_issue_api_key_takes_expires_and_names_a_bad_date(db: Any) -> None:
    call_command("issue_api_key", "dated", "--expires", "2999-01-31")
    row = ClientAPIKey.objects.get(name="dated")
    assert row.expires_at is not None and row.expires_at.year == 2999
    assert timezone.localtime(row.expires_at).hour == 0
    call_command("issue_api_key", "timed", "--expires", "2999-01-31T12:30:00+00:00")
    assert ClientAPIKey.objects.get(name="timed").expires_at.hour == 12
    for bad in ("2027-13-01", "tomorrow", "2020-01-01", "9" * 10_000, "2027-01-31\x00"):
        with pytest.raises(CommandError, match="--expires"):
            call_command("issue_api_key", "bad", "--expires", bad)
    assert not ClientAPIKey.objects.filter(name="bad").exists()
