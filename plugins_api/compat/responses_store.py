"""Keep the responses of ``POST /v1/responses``: save, find, delete and expire them, per owner.

A stored response (``StoredResponse``) belongs to the client key or the
logged-in user that created it (a ``ResponseOwner``); every read and delete
is filtered by that owner, so another key's id is simply not found (404),
never a 403 that would confirm it exists.

Each row holds the whole conversation up to and including its answer, in
the Responses API's item shape, so a ``previous_response_id`` costs one
indexed read, not a walk along the chain. The price is that a long chain
stores its early turns again in every row; the size of a row is bounded by
``ECHO_RESPONSES_MAX_STORED_BYTES`` (default 2 MiB): a conversation that
would grow past it is refused before the provider is called, and an answer
that pushes it past is returned but not stored (``"store": false``).

Rows live ``ECHO_RESPONSES_RETENTION_DAYS`` (default 30): older ones are
never served, and ``manage.py cleanup_responses`` deletes them (run it daily,
e.g. from cron). The database calls are one read for a follow-up and one
insert per stored answer, on the calls that store or continue a
conversation only, each run on one of the process's ORM threads
(``providers.runtime.orm_threads``), whose connections are kept: not a
thread and a connection made for the request, as Django's async ORM would
on the hot path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from plugins_api.models import StoredResponse
from providers.runtime.orm_threads import orm_threads


def retention_days() -> int:
    """Return how many days a stored response lives (``ECHO_RESPONSES_RETENTION_DAYS``)."""
    return settings.ECHO_RESPONSES_RETENTION_DAYS


def max_stored_bytes() -> int:
    """Return the largest stored conversation, in bytes of JSON (``ECHO_RESPONSES_MAX_STORED_BYTES``)."""
    return settings.ECHO_RESPONSES_MAX_STORED_BYTES


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_size(value: Any) -> int:
    """Return the size of VALUE as compact JSON, in bytes."""
    return len(_compact(value).encode())


def _storable_sized(value: Any) -> tuple[Any, int]:
    """Return VALUE without NUL characters, which PostgreSQL's ``jsonb`` cannot hold, and its ``json_size``.

    Client input with a NUL was refused at the edge; this is for what a
    provider answered. One encoding serves both (a NUL is ``\\u0000`` in any JSON).
    """
    text = _compact(value)
    if "\\u0000" in text:
        value = json.loads(text.replace("\\u0000", "\\ufffd"))
        text = _compact(value)
    return value, len(text.encode())


@dataclass(frozen=True, slots=True)
class ResponseOwner:
    """Who owns stored responses: a client key (KEY_ID) or a logged-in user (USER_ID)."""

    key_id: int | None = None
    user_id: int | None = None

    def lookup(self) -> dict[str, int | None]:
        """Return the filter that finds this owner's rows."""
        if self.key_id is not None:
            return {"client_key_id": self.key_id}
        return {"user_id": self.user_id}


def _live(owner: ResponseOwner, response_id: str) -> Any:
    """Return the queryset of OWNER's unexpired response RESPONSE_ID."""
    oldest = timezone.now() - timedelta(days=retention_days())
    return StoredResponse.objects.filter(pk=response_id, created_at__gte=oldest, **owner.lookup())


async def stored_response_find(*, owner: ResponseOwner, response_id: str) -> StoredResponse | None:
    """Return OWNER's stored response RESPONSE_ID, or None (unknown, another's, or expired)."""
    return await orm_threads.run(lambda: _live(owner, response_id).first())


async def stored_response_save(
    *,
    owner: ResponseOwner,
    response_id: str,
    model: str,
    previous_response_id: str | None,
    items: list[dict[str, Any]],
    response: dict[str, Any],
) -> bool:
    """Store RESPONSE and its conversation ITEMS for OWNER; return False when too large to keep."""
    items, items_size = _storable_sized(items)
    response, response_size = _storable_sized(response)
    size = items_size + response_size
    if size > max_stored_bytes():
        return False
    await orm_threads.run(
        StoredResponse.objects.create,
        id=response_id,
        client_key_id=owner.key_id,
        user_id=owner.user_id,
        model=model[:200],
        previous_response_id=previous_response_id or "",
        items=items,
        response=response,
        size_bytes=size,
    )
    return True


async def stored_response_delete(*, owner: ResponseOwner, response_id: str) -> bool:
    """Delete OWNER's stored response RESPONSE_ID; return whether there was one."""
    deleted, _ = await orm_threads.run(lambda: _live(owner, response_id).delete())
    return bool(deleted)


def stored_responses_expire(*, now: Any = None) -> int:
    """Delete every stored response older than the retention; return how many went."""
    oldest = (now or timezone.now()) - timedelta(days=retention_days())
    deleted, _ = StoredResponse.objects.filter(created_at__lt=oldest).delete()
    return deleted
