"""The admin's view of usage: every request's row, and totals per key, provider and model.

The usage list opens on a summary of the chosen period (``?days=``: 1, 7,
30 or 90 calendar days ending today in the site's time zone, 7 by
default): totals per client key, provider and model (requests, tokens,
errors, cost), and a bar chart of tokens per day drawn as inline SVG (no
scripts, no CDN). The chart has one slot per day of the period, an empty
one for a day without requests, a y axis with a few round ticks and day
labels under the bars; each day says its numbers on hover (its SVG
``<title>``) and, reached with the keyboard, on focus.

Costs are shown to the currency's sense (``usd``): cents from a cent up,
two significant digits below one. An answer cancelled before its first
word has no provider or model: it is labelled so, not left blank.

A superuser sees every row. Any other staff user sees, in the list and in
the summary, only the rows of their own client keys (``key:<name>``, found
through the ``client_keys`` relation the API app's keys give a user: this
app does not import that app) and of their own calls (their username).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from providers.models import UsageRecord

PERIODS = (1, 7, 30, 90)
DEFAULT_PERIOD = 7
CANCELLED_LABEL = "(cancelled before an answer)"
NO_VALUE = "—"
CENT = Decimal("0.01")

# The chart's drawing box (it scales to the page's width): plot area inside the margins.
CHART_WIDTH, CHART_HEIGHT = 640, 190
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 56, 632, 24, 162
# Room a day label needs, in drawing units, and the label strides that read well.
LABEL_ROOM = 50
LABEL_STRIDES = (1, 2, 3, 5, 7, 10, 14, 15, 30)
# Half the width of a day's value ("12,345 tokens, 12 req.", drawn bigger on a phone).
VALUE_ROOM = 105


def usd(amount: Decimal | float | int | None) -> str:
    """Return AMOUNT in dollars as a person reads it: "$12.35", "$0.000043", "—" for None.

    From a cent up, cents (rounded half up, thousands grouped); below a
    cent, two significant digits without trailing zeros. Never scientific
    notation.
    """
    if amount is None:
        return NO_VALUE
    value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    if not value.is_finite():
        return NO_VALUE
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return "$0.00"
    if value < CENT:
        # Two significant digits: quantize to the second digit's place.
        rounded = value.quantize(Decimal(1).scaleb(value.adjusted() - 1), rounding=ROUND_HALF_UP)
        if rounded < CENT:
            text = f"{rounded:f}".rstrip("0").rstrip(".")
            return f"{sign}${text}"
        value = rounded  # 0.00999 rounds up to a cent
    return f"{sign}${value.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"


def usage_visible_to(user: Any, rows: QuerySet[UsageRecord] | None = None) -> QuerySet[UsageRecord]:
    """Return those of ROWS (default: all) USER may see: all for a superuser, else their own."""
    rows = UsageRecord.objects.all() if rows is None else rows
    if user.is_superuser:
        return rows
    owned = getattr(user, "client_keys", None)  # the reverse of the API app's key owner
    names = list(owned.values_list("name", flat=True)) if owned is not None else []
    # The client label request usage records: "key:<name>" for a key, the username for a session.
    return rows.filter(client__in=[f"key:{name}" for name in names] + [user.get_username()])


def usage_label(value: str, *, cancelled: bool) -> str:
    """Return how a provider or model VALUE is shown: itself, or why it is blank."""
    if value:
        return value
    return CANCELLED_LABEL if cancelled else NO_VALUE


def usage_totals(rows: QuerySet[UsageRecord], since: Any, group: str) -> list[dict[str, Any]]:
    """Return request, token, error and cost totals of ROWS since SINCE grouped by GROUP, biggest first.

    Each total also carries ``label`` (the group's value, or why it is
    blank) and ``cost`` (the cost as ``usd`` writes it).
    """
    totals = list(
        rows.filter(created_at__gte=since)
        .values(group)
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            errors=Count("id", filter=Q(outcome="error")),
            cancelled=Count("id", filter=Q(outcome="cancelled")),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("-requests", group)
    )
    for total in totals:
        total["label"] = usage_label(
            total[group], cancelled=total["cancelled"] == total["requests"]
        )
        total["cost"] = usd(total["cost_usd"])
    return totals


def period_start(days: int, now: datetime | None = None) -> tuple[datetime, list[date]]:
    """Return when the period of the last DAYS calendar days began, and its days, oldest first.

    The days end today in the current time zone; the start is the first
    day's midnight there.
    """
    today = timezone.localdate(now or timezone.now())
    period = [today - timedelta(days=days - 1 - i) for i in range(days)]
    start = timezone.make_aware(datetime.combine(period[0], time.min))
    return start, period


def tokens_per_day(rows: QuerySet[UsageRecord], since: Any) -> list[dict[str, Any]]:
    """Return the tokens and requests of ROWS on each day since SINCE that has any, oldest first."""
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


def chart_ticks(peak: int) -> list[int]:
    """Return the y axis's ticks for a tallest bar of PEAK: 0 and two or three round steps above.

    The step is 1, 2, 2.5 or 5 times a power of ten (whole tokens), the
    smallest that covers PEAK in at most three steps.
    """
    peak = max(peak, 1)
    magnitude = 10 ** max(int(math.log10(peak / 3)), 0) if peak > 3 else 1
    step = magnitude
    for factor in (1, 2, 2.5, 5, 10, 20, 25, 50):
        candidate = magnitude * factor
        if candidate == int(candidate) and math.ceil(peak / candidate) <= 3:
            step = int(candidate)
            break
    count = max(math.ceil(peak / step), 2)
    return [step * i for i in range(count + 1)]


def compact_number(value: int) -> str:
    """Return VALUE short enough for an axis label: 950, 2,500, 25k, 1.5M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if value >= 10_000:
        return f"{value / 1_000:.3g}k"
    return f"{value:,}"


def label_stride(slots: int) -> int:
    """Return every how many days a day label fits under a chart of SLOTS days."""
    width = (PLOT_RIGHT - PLOT_LEFT) / slots
    for stride in LABEL_STRIDES:
        if stride * width >= LABEL_ROOM:
            return stride
    return LABEL_STRIDES[-1]


def daily_chart(days: list[dict[str, Any]], period: Sequence[date]) -> SafeString:
    """Return an SVG bar chart of tokens per day: one slot for each day of PERIOD.

    DAYS holds the days with requests (``tokens_per_day``). Bars are scaled
    to the top tick; a day without requests is an empty slot.
    """
    by_day = {d["day"]: d for d in days}
    if not any(day in by_day for day in period):
        return mark_safe('<p class="echo-chart-empty">No requests in this period.</p>')
    peak = max((by_day[day]["tokens"] or 0) for day in period if day in by_day)
    ticks = chart_ticks(peak)
    top = ticks[-1]
    plot_height = PLOT_BOTTOM - PLOT_TOP
    slot = (PLOT_RIGHT - PLOT_LEFT) / len(period)
    gap = min(slot * 0.2, 6)

    def y(value: float) -> float:
        return round(PLOT_BOTTOM - value / top * plot_height, 1)

    grid = format_html_join(
        "",
        '<path class="echo-grid" d="M{} {}H{}" stroke="#ccc"/>'
        '<text class="echo-tick echo-tick-y" x="{}" y="{}" text-anchor="end">{}</text>',
        (
            (
                PLOT_LEFT,
                y(tick),
                PLOT_RIGHT,
                PLOT_LEFT - 6,
                round(y(tick) + 4, 1),
                compact_number(tick),
            )
            for tick in ticks
        ),
    )
    stride = label_stride(len(period))
    slots = []
    for i, day in enumerate(period):
        row = by_day.get(day)
        tokens = (row["tokens"] or 0) if row else 0
        requests = row["requests"] if row else 0
        left = PLOT_LEFT + i * slot
        centre = round(left + slot / 2, 1)
        said = f"{day:%a %Y-%m-%d}: {tokens:,} tokens, {requests:,} request{'s' if requests != 1 else ''}"
        bar = (
            format_html(
                '<rect class="echo-bar" x="{}" y="{}" width="{}" height="{}" fill="#417690"/>',
                round(left + gap / 2, 1),
                y(tokens),
                round(slot - gap, 1),
                round(PLOT_BOTTOM - y(tokens), 1),
            )
            if tokens
            else ""
        )
        label = (
            format_html(
                '<text class="echo-tick echo-tick-x" x="{}" y="{}" text-anchor="middle">{}</text>',
                centre,
                PLOT_BOTTOM + 16,
                f"{day:%b} {day.day}",
            )
            if (len(period) - 1 - i) % stride == 0
            else ""
        )
        value_y = max(y(tokens) - 6, PLOT_TOP - 8)
        # The focused day's value stays inside the chart: from the edge near it, or centred.
        if centre > PLOT_RIGHT - VALUE_ROOM:
            value_x, value_anchor = PLOT_RIGHT, "end"
        elif centre < PLOT_LEFT + VALUE_ROOM:
            value_x, value_anchor = PLOT_LEFT + 2, "start"
        else:
            value_x, value_anchor = centre, "middle"
        slots.append(
            format_html(
                '<g class="echo-day" tabindex="0" role="img" aria-label="{}" data-day="{}" '
                'data-tokens="{}"><title>{}</title>'
                '<path class="echo-slot" d="M{} {}h{}V{}h-{}z" fill="transparent"/>{}{}'
                '<text class="echo-day-value" x="{}" y="{}" text-anchor="{}">{}</text></g>',
                said,
                day.isoformat(),
                tokens,
                said,
                round(left, 1),
                PLOT_TOP,
                round(slot, 1),
                PLOT_BOTTOM,
                round(slot, 1),
                bar,
                label,
                value_x,
                value_y,
                value_anchor,
                f"{tokens:,} tokens, {requests:,} req.",
            )
        )
    axes = format_html(
        '<path class="echo-axis" d="M{} {}V{}H{}" stroke="#666" fill="none"/>',
        PLOT_LEFT,
        PLOT_TOP,
        PLOT_BOTTOM,
        PLOT_RIGHT,
    )
    return format_html(
        '<svg class="echo-usage-chart" viewBox="0 0 {} {}" width="{}" height="{}" role="group" '
        'aria-label="Tokens per day, {} to {}" preserveAspectRatio="xMinYMin meet">'
        '<text class="echo-axis-title" x="4" y="12">tokens</text>{}{}{}</svg>',
        CHART_WIDTH,
        CHART_HEIGHT,
        CHART_WIDTH,
        CHART_HEIGHT,
        period[0].isoformat(),
        period[-1].isoformat(),
        grid,
        format_html_join("", "{}", ((s,) for s in slots)),
        axes,
    )


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Requests as recorded, read-only, with a summary of the period above the list."""

    change_list_template = "admin/providers/usagerecord/change_list.html"
    list_display = (
        "created_at",
        "client",
        "endpoint",
        "shown_provider",
        "shown_model",
        "outcome",
        "prompt_tokens",
        "completion_tokens",
        "cost",
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

    @admin.display(description="provider", ordering="provider")
    def shown_provider(self, obj: UsageRecord) -> str:
        """Show the provider that answered, or why none did."""
        return usage_label(obj.provider, cancelled=obj.outcome == "cancelled")

    @admin.display(description="model", ordering="model")
    def shown_model(self, obj: UsageRecord) -> str:
        """Show the model that answered, or why none did."""
        return usage_label(obj.model, cancelled=obj.outcome == "cancelled")

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, obj: UsageRecord) -> str:
        """Show the request's cost in dollars, rounded to the currency's sense."""
        return usd(obj.cost_usd)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Show the list under the summary of the ``?days=`` period; refuse an unknown period."""
        raw = request.GET.get("days")
        days = DEFAULT_PERIOD
        if raw is not None:
            # Compared as text: int() would take " 7", "٧" and a 5,000-digit number.
            chosen = {str(period): period for period in PERIODS}.get(raw)
            if chosen is None:
                return HttpResponseBadRequest(
                    "days: must be one of " + ", ".join(str(p) for p in PERIODS) + ".",
                    content_type="text/plain; charset=utf-8",
                )
            days = chosen
        # ?days= is ours, not a field filter: hide it from the changelist.
        request.GET = request.GET.copy()
        request.GET.pop("days", None)
        since, period = period_start(days)
        rows = usage_visible_to(request.user)
        context = {
            "usage_days": days,
            "usage_periods": PERIODS,
            "usage_first_day": period[0],
            "usage_last_day": period[-1],
            "usage_by_client": usage_totals(rows, since, "client"),
            "usage_by_provider": usage_totals(rows, since, "provider"),
            "usage_by_model": usage_totals(rows, since, "model"),
            "usage_chart": daily_chart(tokens_per_day(rows, since), period),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)
