"""The admin's view of usage: every request's row, and totals per key, provider and model.

The usage list opens on a summary of the chosen period (``?days=``, 7 by
default): totals per client key, provider and model, and a bar chart of
tokens per day, drawn as inline SVG (no scripts, no CDN).

A superuser sees every row. Any other staff user sees, in the list and in
the summary, only the rows of their own client keys (``key:<name>``, found
through the ``client_keys`` relation the API app's keys give a user: this
app does not import that app) and of their own calls (their username).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from providers.models import UsageRecord

PERIODS = (1, 7, 30, 90)
CHART_WIDTH, CHART_HEIGHT = 600, 120


def usage_visible_to(user: Any, rows: QuerySet[UsageRecord] | None = None) -> QuerySet[UsageRecord]:
    """Return those of ROWS (default: all) USER may see: all for a superuser, else their own."""
    rows = UsageRecord.objects.all() if rows is None else rows
    if user.is_superuser:
        return rows
    owned = getattr(user, "client_keys", None)  # the reverse of the API app's key owner
    names = list(owned.values_list("name", flat=True)) if owned is not None else []
    # The client label request usage records: "key:<name>" for a key, the username for a session.
    return rows.filter(client__in=[f"key:{name}" for name in names] + [user.get_username()])


def usage_totals(rows: QuerySet[UsageRecord], since: Any, group: str) -> list[dict[str, Any]]:
    """Return request, token and cost totals of ROWS since SINCE grouped by GROUP, biggest first."""
    return list(
        rows.filter(created_at__gte=since)
        .values(group)
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("-requests", group)
    )


def tokens_per_day(rows: QuerySet[UsageRecord], since: Any) -> list[dict[str, Any]]:
    """Return the tokens and requests of ROWS on each day since SINCE, oldest first."""
    return list(
        rows.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            requests=Count("id"),
            tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
        )
        .order_by("day")
    )


def daily_chart(days: list[dict[str, Any]]) -> str:
    """Return an SVG bar chart of tokens per day."""
    if not days:
        return format_html("<p>No requests in this period.</p>")
    peak = max(d["tokens"] or 0 for d in days) or 1
    width = CHART_WIDTH / len(days)
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="#417690">'
        "<title>{}: {} tokens, {} requests</title></rect>",
        (
            (
                round(i * width + 1, 1),
                round(CHART_HEIGHT - (d["tokens"] or 0) / peak * CHART_HEIGHT, 1),
                round(max(width - 2, 1), 1),
                round((d["tokens"] or 0) / peak * CHART_HEIGHT, 1),
                d["day"],
                d["tokens"] or 0,
                d["requests"],
            )
            for i, d in enumerate(days)
        ),
    )
    return format_html(
        '<svg class="echo-usage-chart" width="{}" height="{}" role="img" '
        'aria-label="Tokens per day">{}</svg>',
        CHART_WIDTH,
        CHART_HEIGHT,
        bars,
    )


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Requests as recorded, read-only, with a summary of the period above the list."""

    change_list_template = "admin/providers/usagerecord/change_list.html"
    list_display = (
        "created_at",
        "client",
        "endpoint",
        "provider",
        "model",
        "outcome",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "ttft_ms",
        "overhead_ms",
    )
    list_filter = ("provider", "outcome", "endpoint", "stream", "client")
    search_fields = ("client", "provider", "model")
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRecord]:
        """Every row for a superuser; their own keys' and calls' for anyone else."""
        return usage_visible_to(request.user, super().get_queryset(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            days = int(request.GET.get("days", 7))
        except ValueError:
            days = 7
        days = days if days in PERIODS else 7
        # ?days= is ours, not a field filter: hide it from the changelist.
        request.GET = request.GET.copy()
        request.GET.pop("days", None)
        since = timezone.now() - timedelta(days=days)
        rows = usage_visible_to(request.user)
        context = {
            "usage_days": days,
            "usage_periods": PERIODS,
            "usage_by_client": usage_totals(rows, since, "client"),
            "usage_by_provider": usage_totals(rows, since, "provider"),
            "usage_by_model": usage_totals(rows, since, "model"),
            "usage_chart": daily_chart(tokens_per_day(rows, since)),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)
