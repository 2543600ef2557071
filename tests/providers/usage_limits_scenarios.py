"""Usage-recorder scenarios that need PostgreSQL, run in a process of their own.

``tests/providers/test_usage_limits.py`` runs ``main(NAME)`` with
``DATABASE_URL`` naming a scratch PostgreSQL database: a scenario may close
it to every connection, as an outage does, which the suite's own database
must never see. Each scenario prints one JSON object, its findings, as the
last line of its output.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any


def _event(client: str, **fields: Any) -> Any:
    from providers.usage.recorder import UsageEvent

    values: dict[str, Any] = {
        "client": client,
        "endpoint": "/chat",
        "provider": "echo",
        "model": "echo-1",
        "stream": False,
        "latency_ms": 3.0,
        **fields,
    }
    return UsageEvent(**values)


async def _rows() -> list[dict[str, Any]]:
    from providers.models import UsageRecord

    return [
        row
        async for row in UsageRecord.objects.order_by("id").values(
            "client", "provider", "model", "prompt_tokens", "attempts", "fallback_path"
        )
    ]


def _dropped(reason: str) -> float:
    from providers.usage import metrics

    return (
        metrics.REGISTRY.get_sample_value("echo_usage_rows_dropped_total", {"reason": reason})
        or 0.0
    )


async def _refused_raw() -> list[str]:
    """Return why PostgreSQL refuses each hostile value when it is written as it came."""
    from providers.models import UsageRecord

    reasons = []
    for hostile in ({"provider": "p" * 100}, {"model": "gpt\x00-4o"}, {"client": "key:\ud800"}):
        row = UsageRecord(client="raw", endpoint="/chat", latency_ms=1.0, outcome="ok")
        for name, value in hostile.items():
            setattr(row, name, value)
        try:
            await UsageRecord.objects.abulk_create([row])
            reasons.append("accepted")
        except Exception as exc:
            reasons.append(type(exc).__name__)
    return reasons


async def hostile() -> dict[str, Any]:
    """A hostile row in a batch; then other clients' rows, in that batch and the next."""
    from providers.runtime import process as runtime

    usage_recorder = runtime.usage_recorder

    raw = await _refused_raw()
    usage_recorder.record(_event("key:alice"))
    usage_recorder.record(
        _event(
            "key:\ud800mallory\x00",
            provider="p" * 100,
            model="gpt\x00-4o" + "\udfff" * 300,
            prompt_tokens=-5,
            completion_tokens=10**12,
            attempts=10**9,
            latency_ms=float("nan"),
            error_kind="\x00" * 100,
            fallback_path=[
                {"route": "p\x00/m\ud800", "error": "x" * 10_000, "wait": float("inf")},
                {"deep": [[[[["too deep"]]]]], "big": 10**5000},
            ],
        )
    )
    usage_recorder.record(_event("key:bob"))
    first = await usage_recorder.flush()
    usage_recorder.record(_event("key:carol"))
    second = await usage_recorder.flush()
    return {
        "raw": raw,
        "written": [first, second],
        "pending": len(usage_recorder._pending),
        "rows": await _rows(),
        "refused": _dropped("refused"),
    }


async def refused() -> dict[str, Any]:
    """A row the database refuses (a CHECK constraint) is dropped; its batch is written."""
    from django.db import connection

    from providers.runtime import process as runtime

    usage_recorder = runtime.usage_recorder

    def constrain() -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE providers_usagerecord"
                " ADD CONSTRAINT no_poison CHECK (client <> 'key:poison')"
            )

    from asgiref.sync import sync_to_async

    await sync_to_async(constrain)()
    for client in ("key:alice", "key:poison", "key:bob"):
        usage_recorder.record(_event(client))
    first = await usage_recorder.flush()
    for client in ("key:poison", "key:carol", "key:poison"):
        usage_recorder.record(_event(client))
    second = await usage_recorder.flush()
    return {
        "written": [first, second],
        "pending": len(usage_recorder._pending),
        "clients": [row["client"] for row in await _rows()],
        "refused": _dropped("refused"),
    }


def _allow_connections(allow: bool) -> None:
    """Open or close the scratch database to every connection, as an outage does."""
    import psycopg

    from tests.services import POSTGRES_ADMIN_URL

    name = os.environ["DATABASE_URL"].rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


async def outage() -> dict[str, Any]:
    """The database goes away: rows wait, at most ECHO_USAGE_QUEUE_MAX; it comes back: they are written."""
    from providers.runtime import process as runtime

    usage_recorder = runtime.usage_recorder

    usage_recorder.record(_event("key:before"))
    before = await usage_recorder.flush()  # the ORM now holds an open connection
    _allow_connections(False)
    errors: list[str] = []
    pending: list[int] = []
    try:
        for batch in range(3):
            for i in range(25):
                usage_recorder.record(_event(f"key:c{batch * 25 + i}"))
            try:
                await usage_recorder.flush()
                errors.append("none")
            except Exception as exc:
                errors.append(type(exc).__name__)
            pending.append(len(usage_recorder._pending))
        dropped_during = _dropped("queue_full")
    finally:
        _allow_connections(True)
    after = await usage_recorder.flush()
    return {
        "written": [before, after],
        "errors": errors,
        "pending": pending,
        "dropped": dropped_during,
        "clients": [row["client"] for row in await _rows()],
    }


def main(name: str) -> None:
    """Run scenario NAME and print its findings as JSON."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echo_site.settings")
    django.setup()
    scenario = {"hostile": hostile, "refused": refused, "outage": outage}[name]
    findings = asyncio.run(scenario())
    sys.stdout.write(json.dumps(findings, default=str) + "\n")
