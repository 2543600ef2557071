"""What a client key has spent: budget periods and the recorded cost within them.

A budget period is a UTC day, a week starting Monday 00:00 UTC, or a
calendar month in UTC; ``period_bounds`` gives its start and the start of
the next. The spend of a period is the sum of ``UsageRecord.cost_usd`` of
the key's calls (``client`` = ``key:<name>``, as ``request_usage`` records
them) made since the period's start. Answers with no known price count
nothing. Usage rows reach the database in batches a moment after each
answer, so this is the spend as recorded; ``key_budgets`` adds what has
been charged since and is not recorded yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import Sum

from plugins_api.models import ClientAPIKey
from providers.models import UsageRecord
from providers.runtime.orm_threads import orm_threads

ZERO = Decimal(0)


def key_client_label(name: str) -> str:
    """Return the ``UsageRecord.client`` of the calls made with the key called NAME."""
    return f"key:{name}"


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """Return the start of the budget PERIOD holding NOW and the start of the next (UTC)."""
    moment = now.astimezone(UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == ClientAPIKey.PERIOD_DAY:
        return day, day + timedelta(days=1)
    if period == ClientAPIKey.PERIOD_WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == ClientAPIKey.PERIOD_MONTH:
        start = day.replace(day=1)
        following = (start + timedelta(days=32)).replace(day=1)
        return start, following
    raise ValueError(f"Unknown budget period {period!r}.")


def spend_this_period(keys: Iterable[ClientAPIKey], now: datetime) -> dict[int, Decimal]:
    """Return each of KEYS' recorded spend in its own budget period holding NOW, by key id.

    One aggregate query per distinct period start among KEYS (at most three).
    """
    by_start: dict[datetime, dict[str, int]] = defaultdict(dict)
    spent: dict[int, Decimal] = {}
    for key in keys:
        start, _ = period_bounds(key.budget_period, now)
        by_start[start][key_client_label(key.name)] = key.pk
        spent[key.pk] = ZERO
    for start, ids_by_label in by_start.items():
        totals = (
            UsageRecord.objects.filter(client__in=list(ids_by_label), created_at__gte=start)
            .values("client")
            .annotate(total=Sum("cost_usd"))
        )
        for row in totals:
            spent[ids_by_label[row["client"]]] = row["total"] or ZERO
    return spent


async def aspent_since(name: str, start: datetime) -> Decimal:
    """Return the recorded spend of the key called NAME since START (async, one query on the ORM threads)."""
    rows = UsageRecord.objects.filter(client=key_client_label(name), created_at__gte=start)
    totals = await orm_threads.run(rows.aggregate, total=Sum("cost_usd"))
    return totals["total"] or ZERO


async def aspent_between(name: str, start: datetime, end: datetime) -> Decimal:
    """Return the recorded spend of the key called NAME from START until just before END (async).

    ``key_budgets`` reads the rows older than a cut-off this way, and counts
    the newer ones (perhaps not written yet) from its own charges.
    """
    rows = UsageRecord.objects.filter(
        client=key_client_label(name), created_at__gte=start, created_at__lt=end
    )
    totals = await orm_threads.run(rows.aggregate, total=Sum("cost_usd"))
    return totals["total"] or ZERO
