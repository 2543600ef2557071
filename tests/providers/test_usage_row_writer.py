"""The usage writer stores exactly what ``bulk_create`` stored, keeps its connection, reconnects after an outage."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pytest
from django.db import connection
from django.forms.models import model_to_dict

from providers.models import UsageRecord
from providers.usage.recorder import UsageEvent
from providers.usage.row_writer import UsageInsert, usage_row, usage_rows_write


def event(client: str, **fields) -> UsageEvent:
    values = {
        "client": client,
        "endpoint": "/v1/chat/completions",
        "provider": "openai",
        "model": "gpt-4o",
        "stream": True,
        "latency_ms": 12.3456,
        **fields,
    }
    return UsageEvent(**values)


EVENTS = [
    (event("key:plain"), None),
    (
        event(
            "key:\ud800full\x00",
            prompt_tokens=10**12,
            completion_tokens=-3,
            ttft_ms=1.5,
            overhead_ms=float("nan"),
            outcome="error",
            error_kind="rate_limited",
            attempts=3,
            fallback_path=[
                {"route": "a/b", "error": "x" * 500, "wait": 0.25, "n": [1, {"deep": [[["x"]]]}]},
                {"route": "c\x00/d", "ok": True, "none": None},
            ],
        ),
        Decimal("0.00012345"),
    ),
    (event("key:big-cost", model="m" * 500, stream=False), Decimal("999999.99999999")),
]


def stored(pks) -> list[dict]:
    rows = UsageRecord.objects.filter(pk__in=pks).order_by("pk")
    return [{**model_to_dict(row, exclude=["id"]), "created_at": row.created_at} for row in rows]


@pytest.mark.django_db
def test_a_batch_stores_what_bulk_create_stored() -> None:
    recorded_at = time.time()
    before = UsageRecord.objects.bulk_create(
        [UsageRecord(**usage_row(e, cost, recorded_at)) for e, cost in EVENTS]
    )
    start = UsageRecord.objects.order_by("-pk").values_list("pk", flat=True).first()
    result = usage_rows_write([(e, cost, recorded_at) for e, cost in EVENTS])
    assert (result.written, result.refused, result.left) == (3, [], [])
    after = UsageRecord.objects.filter(pk__gt=start).values_list("pk", flat=True)
    old, new = stored([row.pk for row in before]), stored(list(after))
    # bulk_create sets auto_now_add's created_at itself (the write's time); all else is equal.
    assert [{**row, "created_at": None} for row in new] == [
        {**row, "created_at": None} for row in old
    ]
    assert all(isinstance(row["created_at"], dt.datetime) for row in old + new)
    # What the columns hold: clean text, clamped numbers, the JSON as built, the cost exact.
    full = new[1]
    assert full["client"] == "key:\ufffdfull" and full["prompt_tokens"] == 2**31 - 1
    assert full["completion_tokens"] == 0 and full["overhead_ms"] is None
    assert full["fallback_path"][0]["n"] == [1, {"deep": "<nested too deep>"}]
    assert full["fallback_path"][1] == {"route": "c/d", "ok": True, "none": None}
    assert full["cost_usd"] == Decimal("0.00012345") and new[0]["cost_usd"] is None
    assert new[2]["cost_usd"] == Decimal("999999.99999999") and len(new[2]["model"]) == 200
    assert new[0]["ttft_ms"] is None and full["ttft_ms"] == 1.5 and new[0]["latency_ms"] == 12.346
    # created_at: when the request was recorded, in UTC, as auto_now_add would have set it.
    assert new[0]["created_at"] == dt.datetime.fromtimestamp(recorded_at, tz=dt.UTC)


def test_the_insert_names_every_concrete_column_but_the_id() -> None:
    insert = UsageInsert.for_connection(connection)
    columns = {f.column for f in UsageRecord._meta.concrete_fields} - {"id"}
    assert {f.column for f in insert.fields} == columns
    assert set(usage_row(event("key:a"), None, 0.0)) == {f.name for f in insert.fields}
    for column in columns:
        assert connection.ops.quote_name(column) in insert.sql


def comparable(values: tuple) -> list:
    """VALUES with psycopg's JSON adapters (which compare by identity) as what they hold."""
    return [(type(v), v.obj) if hasattr(v, "obj") else (type(v), v) for v in values]


@pytest.mark.parametrize("index", range(len(EVENTS)))
def test_values_passed_as_they_are_equal_what_each_field_prepares(index: int) -> None:
    insert = UsageInsert.for_connection(connection)
    e, cost = EVENTS[index]
    row = usage_row(e, cost, time.time())
    prepared = tuple(f.get_db_prep_save(row[f.name], connection) for f in insert.fields)
    assert comparable(insert.params(row, connection)) == comparable(prepared)
    # Only values that need no preparation skip it: dates, decimals and JSON are prepared.
    plain = {f.name for f, kind in zip(insert.fields, insert.plain_types, strict=True) if kind}
    assert {"created_at", "cost_usd", "fallback_path"}.isdisjoint(plain)
    assert {"client", "stream", "latency_ms"} <= plain


def _sqlite_connection():
    from django.db.backends.sqlite3.base import DatabaseWrapper

    return DatabaseWrapper(
        {**connection.settings_dict, "ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    )


@pytest.mark.parametrize("vendor", ["this database", "sqlite"])
def test_a_dates_a_decimals_and_an_empty_lists_shortcuts_prepare_what_their_fields_do(
    vendor: str,
) -> None:
    from providers.usage.row_writer import _build_usage_insert

    database = connection if vendor == "this database" else _sqlite_connection()
    insert = _build_usage_insert(database)
    short = {f.name for f, s in zip(insert.fields, insert.shortcuts, strict=True) if s}
    assert short == {"created_at", "cost_usd", "fallback_path"}
    for e, cost in EVENTS:
        row = usage_row(e, cost, time.time())
        prepared = tuple(f.get_db_prep_save(row[f.name], database) for f in insert.fields)
        assert comparable(insert.params(row, database)) == comparable(prepared)
    # What a shortcut does not take goes to the field: a naive date, a decimal given as text.
    row = usage_row(event("key:a"), Decimal("0.5"), 0.0)
    row["created_at"] = dt.datetime(2026, 1, 2, 3, 4, 5)
    row["cost_usd"] = "0.25"
    row["fallback_path"] = [{"route": "a/b"}]
    fields = {f.name: f for f in insert.fields}
    with pytest.warns(RuntimeWarning, match="naive datetime"):  # the field's own warning
        values = dict(zip(fields, insert.params(row, database), strict=True))
    for name in ("cost_usd", "fallback_path"):
        expected = fields[name].get_db_prep_save(row[name], database)
        assert comparable((values[name],)) == comparable((expected,))
    assert values["created_at"] is not None


def test_a_field_of_a_subclass_gets_no_shortcut() -> None:
    from django.db import models

    from providers.usage.row_writer import _shortcut

    class OwnDecimal(models.DecimalField):
        def get_db_prep_save(self, value, connection):
            return str(value)

    assert _shortcut(OwnDecimal(max_digits=14, decimal_places=8), connection) is None
    assert _shortcut(models.DecimalField(max_digits=14, decimal_places=8), connection) is not None
    assert _shortcut(models.CharField(max_length=9), connection) is None


def test_a_value_of_another_type_is_still_prepared_by_its_field() -> None:
    insert = UsageInsert.for_connection(connection)
    row = usage_row(event("key:a"), None, 0.0)
    row["prompt_tokens"] = "12"  # not an int: the field turns it into one, as bulk_create would
    row["latency_ms"] = 3  # an int in a float column
    fields = {f.name: f for f in insert.fields}
    values = dict(zip(fields, insert.params(row, connection), strict=True))
    for name, given in (("prompt_tokens", "12"), ("latency_ms", 3)):
        expected = fields[name].get_db_prep_save(given, connection)
        assert values[name] == expected and type(values[name]) is type(expected)
    assert type(values["latency_ms"]) is float


@pytest.mark.django_db
def test_a_row_that_cannot_be_made_is_refused_alone() -> None:
    result = usage_rows_write(
        [(event("key:ok"), None, time.time()), (event("key:odd", fallback_path=5), None, 0.0)]
    )
    assert (result.written, result.refused) == (1, ["TypeError"])
    assert list(UsageRecord.objects.values_list("client", flat=True)) == ["key:ok"]


@pytest.mark.django_db(transaction=True)
def test_the_connection_is_kept_between_batches_and_replaced_after_an_outage() -> None:
    usage_rows_write([(event("key:first"), None, time.time())])
    kept = connection.connection
    assert kept is not None
    usage_rows_write([(event("key:second"), None, time.time())])
    assert connection.connection is kept  # CONN_MAX_AGE=0 closed it at every batch before

    kept.close()  # the database went away under the writer
    lost = usage_rows_write([(event("key:third"), None, time.time())])
    assert lost.written == 0 and [row["client"] for row in lost.left] == ["key:third"]
    assert connection.connection is None  # so that the next batch connects anew

    again = usage_rows_write(lost.left)
    assert again.written == 1 and connection.connection is not None
    clients = UsageRecord.objects.order_by("pk").values_list("client", flat=True)
    assert list(clients) == ["key:first", "key:second", "key:third"]


def test_a_queued_event_holds_no_huge_text_and_its_own_lists() -> None:
    from providers.runtime import process as runtime
    from providers.usage.recorder import QUEUED_TEXT_MAX, UsageRecorder

    recorder = UsageRecorder(runtime.registry, runtime.metric_labels, serving_loop=lambda: None)
    path = [{"provider": "a", "error": "x"}]
    recorder.record(
        event("key:huge", model="m" * 5_000_000, error_kind="e" * 10_000, fallback_path=path)
    )
    queued, _cost, _at = recorder._pending[-1]
    assert len(queued.model) == QUEUED_TEXT_MAX and len(queued.error_kind) == QUEUED_TEXT_MAX
    path.append({"provider": "b"})
    assert queued.fallback_path == [{"provider": "a", "error": "x"}]


def test_a_queued_event_keeps_every_field_of_the_event() -> None:
    """None forgotten when a field is added to UsageEvent: the copy equals the event."""
    import dataclasses

    from providers.runtime import process as runtime
    from providers.usage.recorder import UsageEvent, UsageRecorder

    values = {f.name: f"value of {f.name}" for f in dataclasses.fields(UsageEvent)}
    values.update(stream=True, latency_ms=1.5, prompt_tokens=3, completion_tokens=4, attempts=2)
    values.update(ttft_ms=0.5, overhead_ms=0.25, fallback_path=[{"route": "a/b"}], retries=[])
    original = UsageEvent(**values)
    recorder = UsageRecorder(runtime.registry, runtime.metric_labels, serving_loop=lambda: None)
    recorder.record(original)

    queued, _cost, _at = recorder._pending[-1]
    assert queued == original and queued is not original
    assert queued.fallback_path is not original.fallback_path


@pytest.mark.django_db(transaction=True)
# The writer's wait, begun on the closed loop, is never awaited there: expected here.
@pytest.mark.filterwarnings("ignore:coroutine 'Event.wait' was never awaited:RuntimeWarning")
def test_a_writer_left_on_a_closed_loop_does_not_stop_the_recorders_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that ran in this process before left its writer waiting on a loop now closed."""
    import asyncio
    import gc

    from asgiref.sync import sync_to_async
    from django.db import connections

    from providers.runtime import process as runtime
    from providers.usage.recorder import UsageRecorder

    gc.collect()  # what earlier tests left goes now, not under this test's log
    caplog.clear()
    old = asyncio.new_event_loop()
    recorder = UsageRecorder(runtime.registry, runtime.metric_labels, serving_loop=lambda: old)

    async def record_on_the_old_loop() -> None:
        recorder.record(event("key:left-behind"))  # starts the writer there, which waits

    old.run_until_complete(record_on_the_old_loop())
    old.close()  # its writer never ran

    async def stop() -> None:
        await recorder.stop()
        await sync_to_async(connections.close_all)()

    asyncio.run(stop())
    assert list(UsageRecord.objects.values_list("client", flat=True)) == ["key:left-behind"]
    gc.collect()  # the old loop's task and its wait go here, under this test's warning filter
    # ... quietly: no "Task was destroyed but it is pending!" at ERROR.
    assert not [r for r in caplog.records if "destroyed" in r.getMessage()], caplog.text
