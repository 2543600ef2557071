"""The audit trail of client keys: who created, changed, rotated, revoked or deleted which key.

The changes in ``key_changes`` call ``record_key_change`` inside their own
transaction, so a change that rolls back leaves no entry. An entry holds a
field-by-field diff of what a key is allowed (scope, limits, model access,
expiry, budget, owner) and its state; neither a key nor its hash is ever
part of it. A rotation records only the grace period of the former secret.
The actor comes from ``providers.audit.history`` (``actor_for_request``, or a
command's ``Actor``), like provider changes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from plugins_api.models import ClientAPIKey, ClientKeyChange
from providers.audit.history import Actor

#: The audited fields, in the order a diff lists them.
AUDITED_FIELDS = (
    "scope",
    "owner",
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "allowed_models",
    "default_model",
    "expires_at",
    "budget_usd",
    "budget_period",
    "revoked_at",
)


def _plain(value: Any) -> Any:
    """Return VALUE as JSON keeps it (moments as ISO text, amounts as decimal text)."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return value


def key_snapshot(row: ClientAPIKey) -> dict[str, Any]:
    """Return the audited state of ROW (never its secret or hash)."""
    state = {name: _plain(getattr(row, name)) for name in AUDITED_FIELDS if name != "owner"}
    state["owner"] = row.owner.get_username() if row.owner_id else None
    state["allowed_models"] = list(row.allowed_models or [])
    return state


def key_diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Return the field-by-field changes from BEFORE to AFTER (either may be None)."""
    old, new = before or {}, after or {}
    return [
        {"field": name, "before": old.get(name), "after": new.get(name)}
        for name in AUDITED_FIELDS
        if old.get(name) != new.get(name)
    ]


def record_key_change(
    *,
    name: str,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    actor: Actor,
    extra: list[dict[str, Any]] | None = None,
) -> ClientKeyChange | None:
    """Write the audit entry of ACTION on key NAME; None for an update that changed nothing."""
    changes = key_diff(before, after) + list(extra or [])
    if action == "updated" and not changes:
        return None
    return ClientKeyChange.objects.create(
        key_name=name,
        action=action,
        actor=actor.name[:150],
        source=actor.source,
        remote_addr=actor.remote_addr,
        changes=changes,
    )
