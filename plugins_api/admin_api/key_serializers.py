"""Serializers of ``/api/keys/``: strict input for the key services, and the shapes the API shows.

Input is checked here for type and size only, strictly (a JSON string is not
a number, a boolean is not a limit, a field the API does not take is named
and refused); what a value means (limits of at least one, ``provider/model``
patterns, a free name) is ``key_changes.validate_key``'s to say, so that the
admin, the API and the commands say the same thing about the same value.
Writes never happen here: the views hand the validated data to
``plugins_api.access.key_changes``.

Output never holds a key's hash. The key itself appears in exactly two
responses (``ClientKeySecretSerializer``: creation and rotation), never in a
listing or the history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from plugins_api.access import client_keys
from plugins_api.access.key_changes import KEY_NAME, KEY_NAME_RULE, MAX_GRACE, RESERVED_NAMES
from plugins_api.access.key_model_access import MAX_PATTERN_CHARS, MAX_PATTERNS
from plugins_api.models import ClientAPIKey, ClientKeyChange
from providers.audit.export import iso_utc

#: The largest limit PostgreSQL's integer column holds.
MAX_LIMIT = 2**31 - 1
#: A name the API can address in a URL: no slash, no spaces or control characters.
#: (Surrounding whitespace is trimmed before the check, so ``$`` cannot let a newline through.)
#: Characters of a field name quoted back in an error (the body may be megabytes).
MAX_QUOTED_CHARS = 64
#: Unknown fields named in one error.
MAX_UNKNOWN_NAMED = 10

STATUS_ACTIVE = "active"
STATUS_REVOKED = "revoked"
STATUS_EXPIRED = "expired"
STATUSES = (STATUS_ACTIVE, STATUS_REVOKED, STATUS_EXPIRED)

# The model's own choices (with their labels), so that the schema has one enum of each.
SCOPES = ClientAPIKey.SCOPES
PERIODS = ClientAPIKey.BUDGET_PERIODS


def quoted(text: str) -> str:
    """Return TEXT shortened for an error message."""
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + "..."


def key_status(row: ClientAPIKey) -> str:
    """Return whether ROW is active, revoked or expired (by ``client_keys.clock``, as keys expire)."""
    if row.revoked_at is not None:
        return STATUS_REVOKED
    if row.expires_at is not None and client_keys.clock() >= row.expires_at:
        return STATUS_EXPIRED
    return STATUS_ACTIVE


# --- strict fields: JSON types as documented, nothing coerced ------------------


class StrictCharField(serializers.CharField):
    """A string, and only a string (DRF's own turns numbers into text)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    """One of CHOICES, given as a string; the error lists the choices, not the input."""

    def __init__(self, **kwargs: Any) -> None:
        values = [c[0] if isinstance(c, tuple) else c for c in kwargs["choices"]]
        kwargs.setdefault(
            "error_messages", {"invalid_choice": "Must be one of: " + ", ".join(values) + "."}
        )
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid_choice")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: not a string of digits, not a boolean, not a float."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictDecimalField(serializers.DecimalField):
    """An amount given as a JSON number or a decimal string, never a boolean or a container."""

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date-time string (a time zone is advised; none means the server's)."""

    MAX_CHARS = 40

    def to_internal_value(self, value: Any) -> datetime:
        if not isinstance(value, str) or len(value) > self.MAX_CHARS:
            self.fail("invalid", format="ISO 8601, e.g. 2027-01-31T00:00:00Z")
        return super().to_internal_value(value)


def _limit(help_text: str) -> StrictIntegerField:
    return StrictIntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_LIMIT, help_text=help_text
    )


# --- input --------------------------------------------------------------------


class StrictInputSerializer(serializers.Serializer):
    """A body that is an object of this serializer's fields; any other field is named and refused.

    ``REFUSALS`` says why a field the API knows is not taken here.
    """

    REFUSALS: dict[str, str] = {}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        unknown: dict[str, list[str]] = {}
        if isinstance(data, Mapping):
            extra = [name for name in data if name not in self.fields]
            for name in extra[:MAX_UNKNOWN_NAMED]:
                text = str(name)
                unknown[quoted(text)] = [self.REFUSALS.get(text, "Unknown field.")]
        try:
            values = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            detail = (
                exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
            )
            raise serializers.ValidationError({**unknown, **detail}) from None
        if unknown:
            raise serializers.ValidationError(unknown)
        return values


_READ_ONLY = "This field is read-only."


class ClientKeyFieldsSerializer(StrictInputSerializer):
    """The editable fields of a key (``key_changes.EDITABLE_FIELDS``), each optional."""

    REFUSALS = {
        "name": "A key's name cannot change: its usage and budget are recorded under it.",
        "key": _READ_ONLY,
        "key_hash": "Never shown, never taken.",
        "prefix": _READ_ONLY,
        "status": _READ_ONLY,
        "created_at": _READ_ONLY,
        "last_used_at": _READ_ONLY,
        "revoked_at": "Revoke with POST /api/keys/{name}/revoke/.",
        "rotated_at": "Rotate with POST /api/keys/{name}/rotate/.",
        "previous_key_valid_until": "Rotate with POST /api/keys/{name}/rotate/.",
        "spent_this_period": _READ_ONLY,
    }

    scope = StrictChoiceField(
        choices=SCOPES,
        required=False,
        help_text="chat: /chat and the model endpoints; admin: everything.",
    )
    owner = StrictCharField(
        required=False,
        allow_null=True,
        max_length=150,
        help_text="The username of the user the key belongs to (null: none, admins only).",
    )
    requests_per_minute = _limit("Requests per minute (null: unlimited).")
    tokens_per_minute = _limit("Tokens per minute (null: unlimited).")
    max_concurrent_requests = _limit("Requests at once (null: unlimited).")
    allowed_models = serializers.ListField(
        child=StrictCharField(max_length=MAX_PATTERN_CHARS, trim_whitespace=False),
        required=False,
        max_length=MAX_PATTERNS,
        help_text="provider/model patterns such as 'openai/*' (empty: every model).",
    )
    default_model = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=MAX_PATTERN_CHARS,
        help_text="The provider/model used when a call names none ('': routing decides).",
    )
    expires_at = StrictDateTimeField(
        required=False, allow_null=True, help_text="When the key stops working (null: never)."
    )
    budget_usd = StrictDecimalField(
        required=False,
        allow_null=True,
        max_digits=14,
        decimal_places=6,
        min_value=Decimal("0.000001"),
        help_text="Spend cap in USD per budget period (null: none).",
    )
    budget_period = StrictChoiceField(
        choices=PERIODS,
        required=False,
        help_text="day (UTC), week (from Monday, UTC) or month (UTC).",
    )

    def validate_owner(self, value: str | None) -> Any:
        """Return the user called VALUE (None: no owner)."""
        if value is None:
            return None
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: value}).first()
        if user is None:
            raise serializers.ValidationError(f"No user named {quoted(value)!r}.")
        return user


class ClientKeyCreateSerializer(ClientKeyFieldsSerializer):
    """``POST /api/keys/``: a new key's name and, optionally, what it may do."""

    REFUSALS = {k: v for k, v in ClientKeyFieldsSerializer.REFUSALS.items() if k != "name"}

    name = StrictCharField(
        max_length=100,
        validators=[RegexValidator(KEY_NAME, KEY_NAME_RULE)],
        help_text="Unique, and fixed for good: usage and budgets are recorded under 'key:<name>'.",
    )

    def validate_name(self, value: str) -> str:
        if value in RESERVED_NAMES:
            raise serializers.ValidationError(f"{value!r} is reserved by the API's URLs.")
        return value

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        if value is not None and value <= client_keys.clock():
            raise serializers.ValidationError("The moment has passed; give a future one.")
        return value


class ClientKeyUpdateSerializer(ClientKeyFieldsSerializer):
    """``PATCH /api/keys/{name}/``: the fields to change; those left out stay."""


class ClientKeyRotateSerializer(StrictInputSerializer):
    """``POST /api/keys/{name}/rotate/``."""

    grace_seconds = StrictIntegerField(
        min_value=0,
        max_value=int(MAX_GRACE.total_seconds()),
        help_text="How long the former key keeps working (0: it stops now).",
    )


class EmptyBodySerializer(StrictInputSerializer):
    """A body with nothing in it (or no body)."""


# --- output -------------------------------------------------------------------


def _decimal_text(value: Decimal | None) -> str | None:
    """Return VALUE as plain decimal text without trailing zeros ("5", "0.0123"), as the audit has it."""
    return None if value is None else format(value.normalize(), "f")


class ClientKeySerializer(serializers.ModelSerializer):
    """A client key as the API shows it: what it may do, its state and its spend; never a secret.

    ``spent_this_period`` comes from the ``spend`` map in the context (one
    aggregate per page, ``key_spend.spend_this_period``).
    """

    owner = serializers.SerializerMethodField(help_text="The owner's username (null: none).")
    status = serializers.SerializerMethodField(
        help_text="active, revoked or expired (past expires_at)."
    )
    previous_key_valid_until = serializers.SerializerMethodField(
        help_text="Until when the secret replaced by the last rotation still works (null: not)."
    )
    budget_usd = serializers.SerializerMethodField(
        help_text="Spend cap in USD per budget period, as decimal text (null: none)."
    )
    spent_this_period = serializers.SerializerMethodField(
        help_text="Recorded spend in USD in the current budget period, as decimal text."
    )

    class Meta:
        model = ClientAPIKey
        fields = [
            "name",
            "scope",
            "prefix",
            "owner",
            "status",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "rotated_at",
            "previous_key_valid_until",
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrent_requests",
            "allowed_models",
            "default_model",
            "budget_usd",
            "budget_period",
            "spent_this_period",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_owner(self, row: ClientAPIKey) -> str | None:
        return row.owner.get_username() if row.owner_id else None

    @extend_schema_field(serializers.CharField(help_text="active, revoked or expired."))
    def get_status(self, row: ClientAPIKey) -> str:
        return key_status(row)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_previous_key_valid_until(self, row: ClientAPIKey) -> str | None:
        until = row.previous_key_expires_at
        if row.previous_key_hash is None or until is None or until <= client_keys.clock():
            return None
        return serializers.DateTimeField().to_representation(until)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_budget_usd(self, row: ClientAPIKey) -> str | None:
        return _decimal_text(row.budget_usd)

    @extend_schema_field(serializers.CharField())
    def get_spent_this_period(self, row: ClientAPIKey) -> str:
        spend: Mapping[int, Decimal] = self.context.get("spend") or {}
        return _decimal_text(spend.get(row.pk, Decimal(0))) or "0"


class ClientKeySecretSerializer(ClientKeySerializer):
    """A key with its secret: the answer to creation and rotation, and nothing else."""

    key = serializers.SerializerMethodField(
        help_text="The key itself. Shown in this response only: store it now."
    )

    class Meta(ClientKeySerializer.Meta):
        fields = ["key", *ClientKeySerializer.Meta.fields]
        read_only_fields = fields

    def get_key(self, row: ClientAPIKey) -> str:
        return self.context["raw_key"]


class ClientKeyFilterSerializer(StrictInputSerializer):
    """The query filters of ``GET /api/keys/``."""

    scope = StrictChoiceField(choices=SCOPES, required=False)
    status = StrictChoiceField(choices=list(STATUSES), required=False)
    owner = StrictCharField(required=False, max_length=150, help_text="A username.")

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # The page number is the paginator's; any other parameter is a mistake.
        plain = {name: data[name] for name in data if name != "page"}
        return super().to_internal_value(plain)


class KeyFieldChangeSerializer(serializers.Serializer):
    """One changed field of an audited key change (a rotation adds its grace period)."""

    field = serializers.CharField(
        help_text="An audited field (scope, owner, the limits, allowed_models, default_model, "
        "expires_at, budget_usd, budget_period, revoked_at), or 'secret' for a rotation."
    )
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)
    grace_seconds = serializers.IntegerField(
        required=False, help_text="A rotation: how long the former secret stays valid."
    )
    former_valid_until = serializers.DateTimeField(required=False, allow_null=True)


class ClientKeyChangeSerializer(serializers.Serializer):
    """One audited change to a client key: who, when, from where, what; never a secret."""

    id = serializers.IntegerField()
    changed_at = serializers.DateTimeField()
    key = serializers.CharField(help_text="The key's name.")
    action = serializers.ChoiceField(choices=[a for a, _ in ClientKeyChange.ACTIONS])
    actor = serializers.CharField(help_text="The user, or 'key:<name>' for an API key.")
    source = serializers.CharField(help_text="admin, api or command.")
    remote_addr = serializers.CharField(allow_null=True, help_text="The client's address.")
    changes = KeyFieldChangeSerializer(many=True)

    def to_representation(self, instance: ClientKeyChange) -> dict[str, Any]:
        return {
            "id": instance.pk,
            "changed_at": iso_utc(instance.changed_at),
            "key": instance.key_name,
            "action": instance.action,
            "actor": instance.actor,
            "source": instance.source,
            "remote_addr": instance.remote_addr,
            "changes": list(instance.changes or []),
        }


class ClientKeyHistoryFilterSerializer(StrictInputSerializer):
    """The query filters of ``GET /api/keys/history/``."""

    key = StrictCharField(required=False, max_length=100, help_text="A key name.")
    actor = StrictCharField(
        required=False, max_length=150, help_text="A username, or 'key:<name>' for an API key."
    )
    source = StrictCharField(required=False, max_length=32, help_text="admin, api or command.")
    action = StrictChoiceField(required=False, choices=[a for a, _ in ClientKeyChange.ACTIONS])
    since = StrictDateTimeField(required=False, help_text="ISO 8601; included.")
    until = StrictDateTimeField(required=False, help_text="ISO 8601; included.")

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        plain = {name: data[name] for name in data if name != "page"}
        return super().to_internal_value(plain)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since and until and since > until:
            raise serializers.ValidationError({"until": ["Must not be before 'since'."]})
        return attrs
