"""The admin index's dashboard: providers' health and breakers, recent requests and errors, spend.

``admin_dashboard`` gathers what the index shows above the app list
(``templates/admin/index.html``), and ``dashboard_index`` wraps the admin
site's index view to hand it over; importing this module installs the
wrapper. The providers come through their own admin's queryset, and their
last check and breaker are written by that admin's own columns, so both
pages say the same. Usage numbers are aggregates over
``UsageRecord``: a fixed handful of queries, whatever the number of rows
or providers. A staff user who is not a superuser sees only their own
keys' and calls' numbers (``usage_visible_to``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Count, F, Q, Sum
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from providers.admin.usage_admin import usage_visible_to, usd
from providers.health.status import breaker_state
from providers.models import ProviderConfig

TOP_KEYS = 5
KEY_PREFIX = "key:"

#: What "now" is for the dashboard's periods (tests set a fixed moment).
clock = timezone.now


def provider_rows(request: HttpRequest) -> list[dict[str, Any]] | None:
    """Return each provider's name, live state, last check and breaker; None if REQUEST may not see them."""
    model_admin = admin.site.get_model_admin(ProviderConfig)
    if not model_admin.has_view_permission(request):
        return None
    rows = []
    # The admin's own queryset prefetches the latest checks its columns read: two queries.
    for config in model_admin.get_queryset(request).order_by("name"):
        checks = getattr(config, "recent_health_checks", None) or []
        if not config.enabled:
            health = "off"
        elif not checks:
            health = "never"
        else:
            health = "up" if checks[0].available else "down"
        breaker = (
            breaker_state(config.name, config).get("state", "closed") if config.enabled else ""
        )
        rows.append(
            {
                "name": config.name,
                "pk": config.pk,
                "plugin": config.plugin,
                "is_default": config.is_default,
                "live": model_admin.live_state(config),
                "health": health,
                "last_health": model_admin.last_health(config),
                "breaker": breaker.replace("_", "-"),
                "breaker_text": model_admin.breaker(config),
            }
        )
    return rows


def usage_numbers(request: HttpRequest, now: datetime | None = None) -> dict[str, Any]:
    """Return REQUEST's user's requests and errors in the last hour, spend today and this month, top keys.

    "Today" and "this month" begin at midnight in the current time zone.
    """
    now = now or clock()
    local = timezone.localtime(now)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = midnight.replace(day=1)
    hour_ago = now - timedelta(hours=1)
    rows = usage_visible_to(request.user)
    totals = rows.filter(created_at__gte=min(month_start, hour_ago)).aggregate(
        requests_hour=Count("id", filter=Q(created_at__gte=hour_ago)),
        errors_hour=Count("id", filter=Q(created_at__gte=hour_ago, outcome="error")),
        requests_today=Count("id", filter=Q(created_at__gte=midnight)),
        spend_today=Sum("cost_usd", filter=Q(created_at__gte=midnight)),
        spend_month=Sum("cost_usd", filter=Q(created_at__gte=month_start)),
    )
    top_keys = [
        {
            "name": row["client"].removeprefix(KEY_PREFIX),
            "requests": row["requests"],
            "cost": usd(row["cost_usd"]),
        }
        for row in rows.filter(created_at__gte=midnight, client__startswith=KEY_PREFIX)
        .values("client")
        .annotate(requests=Count("id"), cost_usd=Sum("cost_usd"))
        .order_by(F("cost_usd").desc(nulls_last=True), "-requests", "client")[:TOP_KEYS]
    ]
    return {
        **totals,
        "spend_today_text": usd(totals["spend_today"] or 0),
        "spend_month_text": usd(totals["spend_month"] or 0),
        "top_keys": top_keys,
        "today": midnight.date(),
        "month": month_start.date(),
        "zone": timezone.get_current_timezone_name(),
        "everyone": request.user.is_superuser,
    }


def admin_dashboard(request: HttpRequest) -> dict[str, Any]:
    """Return what the admin index's dashboard shows REQUEST's user."""
    return {"providers": provider_rows(request), "usage": usage_numbers(request)}


_site_index = admin.site.index


def dashboard_index(
    request: HttpRequest, extra_context: dict[str, Any] | None = None
) -> TemplateResponse:
    """Render the admin index with the dashboard (``echo_dashboard`` in its context)."""
    context = {"echo_dashboard": admin_dashboard(request), **(extra_context or {})}
    return _site_index(request, context)


# Installed before the site's URLs are built (the admin imports this at autodiscovery).
admin.site.index = dashboard_index
