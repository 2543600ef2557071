"""Write usage rows: shape each queued request into its row and insert a batch in one statement.

Runs in the thread the recorder's ``sync_to_async`` uses, never on the
request's path: a request only queues ``(event, cost, recorded_at)``; here
each becomes the values of a ``UsageRecord`` (every one made storable: cut to
its column, no NUL, no lone surrogate, finite numbers), prepared for the
database by its own model field, exactly as ``bulk_create`` prepares them (a
value the preparation would leave as it is passes as it is, and a date, a
decimal or an empty JSON list takes a shortcut to the result its field's
chain of calls would give: most of a row's cost was that chain).

A batch is one ``INSERT ... VALUES`` of the model's concrete columns,
executed with ``cursor.executemany`` (psycopg 3 pipelines it): no model
instance, no SQL compiler per batch. The thread keeps its database
connection between batches and drops it only when the database went away,
so the next batch reconnects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from providers.runtime.orm_threads import drop_if_broken
from providers.usage.storable import storable_float, storable_int, storable_json, storable_text

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Field

    from providers.usage.recorder import UsageEvent

# The columns' limits: PositiveIntegerField and PositiveSmallIntegerField on PostgreSQL.
MAX_TOKENS = 2**31 - 1
MAX_ATTEMPTS = 2**15 - 1
# DecimalField(max_digits=14, decimal_places=8) holds less than a million.
MAX_COST = Decimal("999999.99999999")

#: What a request queues: its event, its cost (or None) and when it was recorded (``time.time()``).
QueuedUsage = tuple["UsageEvent", Decimal | None, float]
#: A row's storable values by field name, before the database's own preparation.
UsageRow = dict[str, Any]


@cache
def _column_lengths() -> dict[str, int]:
    from providers.models import UsageRecord

    return {
        f.name: f.max_length
        for f in UsageRecord._meta.get_fields()
        if getattr(f, "max_length", None) is not None
    }


def usage_row(event: UsageEvent, cost: Decimal | None, recorded_at: float) -> UsageRow:
    """Return the values of the row that records EVENT, every one storable in its column.

    ``created_at`` is RECORDED_AT, when the request ended: a batch written
    after a database outage still says when its requests happened.
    """
    size = _column_lengths()
    return {
        "created_at": dt.datetime.fromtimestamp(
            recorded_at, tz=dt.UTC if settings.USE_TZ else None
        ),
        "client": storable_text(event.client, size["client"]),
        "endpoint": storable_text(event.endpoint, size["endpoint"]),
        "provider": storable_text(event.provider, size["provider"]),
        "model": storable_text(event.model, size["model"]),
        "stream": bool(event.stream),
        "prompt_tokens": storable_int(event.prompt_tokens, low=0, high=MAX_TOKENS),
        "completion_tokens": storable_int(event.completion_tokens, low=0, high=MAX_TOKENS),
        "cost_usd": cost,  # the PriceBook's: finite and at most MAX_COST
        "latency_ms": storable_float(event.latency_ms) or 0.0,
        "ttft_ms": storable_float(event.ttft_ms),
        "overhead_ms": storable_float(event.overhead_ms),
        "outcome": storable_text(event.outcome, size["outcome"]),
        "error_kind": storable_text(event.error_kind, size["error_kind"]),
        "attempts": storable_int(event.attempts, low=0, high=MAX_ATTEMPTS),
        "fallback_path": storable_json(list(event.fallback_path or [])),
    }


@dataclass(frozen=True, slots=True)
class UsageInsert:
    """The prepared INSERT of ``UsageRecord``'s concrete columns, for one database vendor."""

    sql: str
    fields: tuple[Field, ...]
    copy_sql: str  # the same columns, for PostgreSQL's COPY
    # Per field, the Python type its preparation leaves unchanged (None: always prepare).
    plain_types: tuple[type | None, ...]
    # Per field, what prepares its usual values without the field's chain of calls
    # (None: none does; see ``_shortcut``).
    shortcuts: tuple[Shortcut | None, ...]

    @classmethod
    def for_connection(cls, connection: BaseDatabaseWrapper) -> UsageInsert:
        """Return the INSERT for CONNECTION's vendor, from the model's own column list."""
        return _usage_insert(connection)

    def params(self, row: UsageRow, connection: BaseDatabaseWrapper) -> tuple[Any, ...]:
        """Return ROW's values in column order, prepared by each field as ``bulk_create`` does.

        A field the row leaves out takes its default (``auto_now``/``auto_now_add``: now).
        A text, integer, float or boolean value that already has its field's
        type (``storable_*`` made it so) is passed as is: the field's own
        preparation would return it unchanged, at a quarter of a row's cost.
        """
        values = []
        for f, plain, shortcut in zip(self.fields, self.plain_types, self.shortcuts, strict=True):
            if f.name in row:
                value = row[f.name]
            elif getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
                value = timezone.now()
            else:
                value = f.get_default()
            if plain is not None and (type(value) is plain or (value is None and f.null)):
                values.append(value)
                continue
            if shortcut is not None:
                prepared = shortcut(value, connection)
                if prepared is not _BY_THE_FIELD:
                    values.append(prepared)
                    continue
            values.append(f.get_db_prep_save(value, connection))
        return tuple(values)


_INSERTS: dict[str, UsageInsert] = {}


def _usage_insert(connection: BaseDatabaseWrapper) -> UsageInsert:
    insert = _INSERTS.get(connection.vendor)
    if insert is None:
        insert = _INSERTS[connection.vendor] = _build_usage_insert(connection)
    return insert


def _build_usage_insert(connection: BaseDatabaseWrapper) -> UsageInsert:
    from django.db.models import AutoField

    from providers.models import UsageRecord

    opts = UsageRecord._meta
    # bulk_create's columns: the concrete ones, less the generated and the database-assigned id.
    fields = tuple(
        f
        for f in opts.concrete_fields
        if not getattr(f, "generated", False) and not isinstance(f, AutoField)
    )
    if any(hasattr(f, "get_placeholder") for f in fields):
        # A field with its own SQL placeholder would be written wrong by a plain %s:
        # refuse to start rather than store wrong values.
        raise ImproperlyConfigured("a UsageRecord field needs its own SQL placeholder")
    quote_name = connection.ops.quote_name
    columns = ", ".join(quote_name(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    table = quote_name(opts.db_table)
    return UsageInsert(
        f"INSERT INTO {table} ({columns}) VALUES ({marks})",
        fields,
        f"COPY {table} ({columns}) FROM STDIN",
        tuple(_plain_type(f, connection) for f in fields),
        tuple(_shortcut(f, connection) for f in fields),
    )


#: A value of each plain type, to ask a field what its preparation makes of it.
_SAMPLES: dict[type, Any] = {str: "x", bool: True, float: 1.5, int: 7}


def _plain_type(field: Field, connection: BaseDatabaseWrapper) -> type | None:
    """Return the Python type FIELD's preparation leaves as it is on CONNECTION, or None.

    Asked of the field itself: PostgreSQL's integers, for one, come back wrapped
    (psycopg's ``Int4``), so they are always prepared there. Dates, decimals and
    JSON always are.
    """
    from django.db import models

    # Exact classes: a subclass may prepare its values its own way.
    candidate = {
        models.CharField: str,
        models.TextField: str,
        models.BooleanField: bool,
        models.FloatField: float,
        models.IntegerField: int,
        models.PositiveIntegerField: int,
        models.PositiveSmallIntegerField: int,
        models.SmallIntegerField: int,
        models.BigIntegerField: int,
    }.get(type(field))
    if candidate is None:
        return None
    sample = _SAMPLES[candidate]
    prepared = field.get_db_prep_save(sample, connection)
    return candidate if type(prepared) is candidate and prepared == sample else None


#: What a shortcut returns for a value it does not take: the field prepares it.
_BY_THE_FIELD = object()
#: Prepares a value as its field would, for CONNECTION: ``(value, connection) -> prepared``.
Shortcut = Callable[[Any, "BaseDatabaseWrapper"], Any]


def _aware_datetime(value: Any, connection: BaseDatabaseWrapper) -> Any:
    """A ``DateTimeField``'s aware datetime: its field only passes it to the vendor's adapter."""
    if type(value) is dt.datetime and value.tzinfo is not None:
        return connection.ops.adapt_datetimefield_value(value)
    return _BY_THE_FIELD


def _finite_decimal(value: Any, connection: BaseDatabaseWrapper) -> Any:
    """A ``DecimalField``'s finite Decimal: its field makes an equal one, with the same digits."""
    return value if type(value) is Decimal and value.is_finite() else _BY_THE_FIELD


def _empty_list_as(prepared: Any) -> Shortcut:
    """A ``JSONField``'s empty list (a call without failovers): PREPARED, made once."""

    def empty_list(value: Any, connection: BaseDatabaseWrapper) -> Any:
        return prepared if type(value) is list and not value else _BY_THE_FIELD

    return empty_list


def _shortcut(field: Field, connection: BaseDatabaseWrapper) -> Shortcut | None:
    """Return what prepares FIELD's usual values on CONNECTION's vendor as FIELD does, or None.

    A field's preparation is a chain of a few calls per value, most of the
    cost of a row; for a date, a decimal and an empty JSON list the chain
    ends in a known result. Asked of the field itself on a sample, as
    ``_plain_type`` does: a vendor or a subclass that prepares them its own
    way gets no shortcut.
    """
    from django.db import models

    sample: Any
    if type(field) is models.DateTimeField:
        shortcut: Shortcut = _aware_datetime
        sample = dt.datetime(2026, 11, 27, 5, 6, 7, 890123, tzinfo=dt.UTC)
    elif type(field) is models.DecimalField:
        shortcut, sample = _finite_decimal, Decimal("0.00012345")
    elif type(field) is models.JSONField:
        shortcut, sample = _empty_list_as(field.get_db_prep_save([], connection)), []
    else:
        return None
    expected = field.get_db_prep_save(sample, connection)
    got = shortcut(sample, connection)
    same = type(got) is type(expected) and _held(got) == _held(expected)
    if isinstance(expected, Decimal):
        same = same and got.as_tuple() == expected.as_tuple()
    return shortcut if same else None


def _held(value: Any) -> Any:
    """VALUE, or what a driver's JSON adapter holds (psycopg's compare by identity)."""
    return value.obj if hasattr(value, "obj") else value


@dataclass(slots=True)
class WriteResult:
    """What one write of queued rows did."""

    written: int = 0
    refused: list[str] = field(default_factory=list)  # the kind of each refused row
    left: list[UsageRow] = field(default_factory=list)  # rows to try again: the database is away
    error: Exception | None = None  # why LEFT is not empty


def _is_transient(exc: Exception) -> bool:
    """Return whether EXC says the database is away (keep the rows), not that it refuses them."""
    from django.db import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)


def _refusal_kind(exc: Exception) -> str:
    """Name the refusal by its class and SQLSTATE: never by the message, which may quote the row."""
    sqlstate = getattr(exc.__cause__, "sqlstate", None) or getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__} {sqlstate}" if sqlstate else type(exc).__name__


def _close_after_outage(connection: BaseDatabaseWrapper) -> None:
    """Close CONNECTION after the database went away, so that the next batch reconnects."""
    from django.db import DatabaseError

    if connection.in_atomic_block:
        return
    try:
        connection.close()
    except DatabaseError:
        pass  # already broken: Django forgets it all the same


def _insert_batch(
    connection: BaseDatabaseWrapper, insert: UsageInsert, batch: list[tuple[Any, ...]]
) -> None:
    """Insert BATCH (prepared rows) in one transaction: all of them or none.

    PostgreSQL takes them by COPY, a quarter of the client CPU of a pipelined
    ``executemany`` (measured with psycopg 3.3); other databases by the INSERT's ``executemany``.
    """
    from django.db import transaction

    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # psycopg's own copy: its errors become Django's (OperationalError, IntegrityError...).
            with connection.wrap_database_errors, cursor.cursor.copy(insert.copy_sql) as copy:
                for params in batch:
                    copy.write_row(params)
        else:
            cursor.executemany(insert.sql, batch)


def usage_rows_write(items: Sequence[QueuedUsage | UsageRow]) -> WriteResult:
    """Write ITEMS (queued requests, or rows left by an earlier write) in one batch or one by one.

    Runs in the ORM's thread. A row that cannot be made or that the database
    refuses is left out (its kind is in ``refused``); when the database is
    away, the unwritten rows come back in ``left``, made, to be tried again.
    """
    from django.db import DEFAULT_DB_ALIAS, connections, transaction

    connection = connections[DEFAULT_DB_ALIAS]  # once: each use of the proxy looks it up again
    result = WriteResult()
    rows: list[UsageRow] = []
    for item in items:
        try:
            rows.append(item if isinstance(item, dict) else usage_row(*item))
        except Exception as exc:  # a value no column can take: this row only
            result.refused.append(_refusal_kind(exc))
    if not rows:
        return result
    drop_if_broken(connection)
    insert = UsageInsert.for_connection(connection)
    try:
        _insert_batch(connection, insert, [insert.params(row, connection) for row in rows])
        result.written = len(rows)
        return result
    except Exception as exc:
        if _is_transient(exc):
            _close_after_outage(connection)
            result.left, result.error = rows, exc
            return result
    for index, row in enumerate(rows):
        try:
            params = insert.params(row, connection)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(insert.sql, params)
        except Exception as exc:
            if _is_transient(exc):
                _close_after_outage(connection)
                result.left, result.error = rows[index:], exc
                return result
            result.refused.append(_refusal_kind(exc))
        else:
            result.written += 1
    return result
