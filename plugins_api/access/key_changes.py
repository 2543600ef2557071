"""Every change to a client key, validated, audited and seen by every worker: the one place keys change.

The admin, ``/api/keys/`` and the management commands all call these:
``client_key_issue`` (the secret is returned once, only its SHA-256 is
kept), ``client_key_update`` (scope, limits, model access, expiry, budget,
owner), ``client_key_set_limits``, ``client_key_rotate`` (a new secret; the
former one stays valid for a grace period the caller chooses, at most
``MAX_GRACE``), ``client_key_revoke`` and ``client_key_delete``. Each runs in
one transaction with its audit entry (``key_history``): a change that fails
validation raises ``ValidationError`` naming the field and changes nothing.

This process's verification cache is dropped at once and again after the
commit; other workers drop an entry within ``client_keys.CACHE_SECONDS``.
Saving the row also closes the key's open chat sockets in every worker when
it stops being usable (``client_key_push``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from plugins_api.access import client_keys
from plugins_api.access.client_keys import KEY_PREFIX, forget_cached_keys, hash_key
from plugins_api.access.key_digests import key_digests
from plugins_api.access.key_history import key_snapshot, record_key_change
from plugins_api.access.key_limits import UNLIMITED, KeyLimits
from plugins_api.access.key_model_access import (
    OPEN,
    ModelAccess,
    parse_default_model,
    parse_patterns,
)
from plugins_api.models import ClientAPIKey
from providers.audit.history import SOURCE_COMMAND, Actor

#: Who changes keys from a management command.
COMMAND = Actor(name="command", source=SOURCE_COMMAND)
#: The longest a rotated key's former secret may stay valid.
MAX_GRACE = timedelta(days=30)
#: The fields ``client_key_update`` may change.
EDITABLE_FIELDS = (
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
)
_NOT_VALIDATED = ("prefix", "key_hash", "previous_key_hash", "previous_key_expires_at")
#: What a key's name may be: usage and budgets know the key as ``key:<name>``, URLs as ``/api/keys/<name>/``.
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")
KEY_NAME_RULE = "Use letters, digits and '_.@+-', starting with a letter or digit."
#: Names the URL map gives to something else (``/api/keys/history/``).
RESERVED_NAMES = frozenset({"history"})


def new_secret() -> tuple[str, str, str]:
    """Return a new key, its display prefix and its stored hash."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw_key, raw_key[: len(KEY_PREFIX) + 6], hash_key(raw_key)


def validate_key(row: ClientAPIKey) -> None:
    """Raise ``ValidationError`` naming each field of ROW that is not valid (nothing is saved).

    The model's own validators, plus model access: ``allowed_models`` must be
    a list of ``provider/model`` patterns and ``default_model`` one model.
    The admin's form and the API's serializer call it too, so that each says
    the same thing about the same value.
    """
    errors: dict[str, list[ValidationError]] = {}
    try:
        row.full_clean(exclude=_NOT_VALIDATED, validate_unique=row._state.adding)
    except ValidationError as exc:
        errors.update(exc.error_dict)  # with their codes ("unique", "invalid", ...)

    def refuse(field: str, message: str, code: str = "invalid") -> None:
        errors.setdefault(field, []).append(ValidationError(message, code=code))

    if row._state.adding and "name" not in errors:
        if not KEY_NAME.fullmatch(row.name or ""):
            refuse("name", KEY_NAME_RULE)
        elif row.name in RESERVED_NAMES:
            refuse("name", f"{row.name!r} is reserved by the API's URLs.", "reserved")
    if not isinstance(row.allowed_models, list):
        refuse("allowed_models", "Give a list of provider/model patterns.")
    else:
        try:
            row.allowed_models = list(parse_patterns(row.allowed_models))
        except ValueError as exc:
            refuse("allowed_models", str(exc))
    try:
        row.default_model = parse_default_model(row.default_model) or ""
    except (ValueError, AttributeError) as exc:
        refuse("default_model", str(exc))
    if errors:
        raise ValidationError(errors)


def _limit_fields(limits: KeyLimits) -> dict[str, int | None]:
    return {
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "max_concurrent_requests": limits.max_concurrent,
    }


def _after_change() -> None:
    forget_cached_keys()
    # Again after commit: a verification in between still read the former row.
    transaction.on_commit(forget_cached_keys)


def _after_issue() -> None:
    """A key was made: the digests' index (``key_digests``) lacks it; the cached keys stand."""
    index = key_digests()
    index.invalidate()
    # Again after commit: a read of the index in between did not see the new row.
    transaction.on_commit(index.invalidate)


@transaction.atomic
def client_key_issue(
    *,
    name: str,
    scope: str = ClientAPIKey.SCOPE_CHAT,
    limits: KeyLimits = UNLIMITED,
    access: ModelAccess = OPEN,
    expires_at: datetime | None = None,
    budget_usd: Decimal | None = None,
    budget_period: str = ClientAPIKey.PERIOD_MONTH,
    owner: Any = None,
    actor: Actor = COMMAND,
) -> tuple[ClientAPIKey, str]:
    """Create the key NAME and return the row and the key, shown only now.

    Raise ``ValidationError`` naming any field that is not valid (a taken
    NAME included).
    """
    raw_key, prefix, digest = new_secret()
    row = ClientAPIKey(
        name=name,
        scope=scope,
        prefix=prefix,
        key_hash=digest,
        allowed_models=list(access.patterns),
        default_model=access.default_model or "",
        expires_at=expires_at,
        budget_usd=budget_usd,
        budget_period=budget_period,
        owner=owner,
        **_limit_fields(limits),
    )
    validate_key(row)
    row.save()
    record_key_change(
        name=row.name, action="created", before=None, after=key_snapshot(row), actor=actor
    )
    _after_issue()
    return row, raw_key


@transaction.atomic
def client_key_update(
    *, name: str, changes: Mapping[str, Any], actor: Actor = COMMAND
) -> ClientAPIKey:
    """Apply CHANGES (``EDITABLE_FIELDS`` only) to the key NAME, or raise ``ValidationError``.

    Raise ``ClientAPIKey.DoesNotExist`` for no such key.
    """
    unknown = sorted(set(changes) - set(EDITABLE_FIELDS))
    if unknown:
        raise ValidationError({field: ["This field cannot be changed."] for field in unknown})
    row = ClientAPIKey.objects.select_for_update().get(name=name)
    before = key_snapshot(row)
    for field, value in changes.items():
        setattr(row, field, value)
    validate_key(row)
    row.save()
    record_key_change(
        name=row.name, action="updated", before=before, after=key_snapshot(row), actor=actor
    )
    _after_change()
    return row


def client_key_set_limits(*, name: str, limits: KeyLimits, actor: Actor = COMMAND) -> ClientAPIKey:
    """Set the rate limits of the key NAME (see ``client_key_update``)."""
    return client_key_update(name=name, changes=_limit_fields(limits), actor=actor)


@transaction.atomic
def client_key_rotate(
    *, name: str, grace: timedelta, actor: Actor = COMMAND
) -> tuple[ClientAPIKey, str]:
    """Give the key NAME a new secret; return the row and the new key, shown only now.

    The former secret keeps working for GRACE (zero: it stops at once), so
    that clients can move over; a grace given earlier and still running ends
    now. A revoked key cannot be rotated (``ValidationError``).
    """
    if not isinstance(grace, timedelta) or not timedelta(0) <= grace <= MAX_GRACE:
        raise ValidationError(
            {"grace_seconds": [f"Give 0 to {int(MAX_GRACE.total_seconds())} seconds."]}
        )
    row = ClientAPIKey.objects.select_for_update().get(name=name)
    if row.revoked_at is not None:
        raise ValidationError({"name": ["This key is revoked; issue a new one instead."]})
    now = client_keys.clock()  # the clock verification measures the grace period by
    former = row.key_hash
    raw_key, row.prefix, row.key_hash = new_secret()
    row.previous_key_hash = former if grace else None
    row.previous_key_expires_at = now + grace if grace else None
    row.rotated_at = now
    row.save()
    record_key_change(
        name=row.name,
        action="rotated",
        before=None,
        after=None,
        actor=actor,
        extra=[
            {
                "field": "secret",
                "before": "former secret",
                "after": "new secret",
                "grace_seconds": int(grace.total_seconds()),
                "former_valid_until": row.previous_key_expires_at.isoformat() if grace else None,
            }
        ],
    )
    _after_change()
    return row, raw_key


@transaction.atomic
def client_key_revoke(*, name: str, actor: Actor = COMMAND) -> ClientAPIKey:
    """Revoke the key NAME (and any former secret in its grace period); it stops at once here.

    Once committed, the save closes the key's open chat sockets in every worker.
    """
    row = ClientAPIKey.objects.select_for_update().get(name=name)
    if row.revoked_at is None:
        before = key_snapshot(row)
        row.revoked_at = timezone.now()
        row.previous_key_hash = None
        row.previous_key_expires_at = None
        row.save(update_fields=["revoked_at", "previous_key_hash", "previous_key_expires_at"])
        record_key_change(
            name=row.name, action="revoked", before=before, after=key_snapshot(row), actor=actor
        )
    _after_change()
    return row


@transaction.atomic
def client_key_delete(*, name: str, actor: Actor = COMMAND) -> None:
    """Delete the key NAME; its audit history and recorded usage stay."""
    row = ClientAPIKey.objects.select_for_update().get(name=name)
    before = key_snapshot(row)
    row.delete()
    record_key_change(name=name, action="deleted", before=before, after=None, actor=actor)
    _after_change()
