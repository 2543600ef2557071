"""The admin summarises usage per key, provider and model over a period, with a chart."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from providers.models import UsageRecord


def usage(client: str, provider: str, model: str, tokens: int, days_ago: float) -> None:
    row = UsageRecord.objects.create(
        client=client,
        endpoint="/chat",
        provider=provider,
        model=model,
        latency_ms=10,
        outcome="ok",
        prompt_tokens=tokens,
        completion_tokens=tokens,
    )
    UsageRecord.objects.filter(pk=row.pk).update(
        created_at=timezone.now() - timedelta(days=days_ago)
    )


@pytest.mark.django_db
def test_the_usage_page_sums_the_period(client, admin_user) -> None:
    usage("key:team-a", "openai", "gpt-4o-mini", 10, 0.1)
    usage("key:team-a", "openai", "gpt-4o-mini", 5, 1.2)
    usage("key:team-b", "anthropic", "claude-3-5-haiku", 7, 2.5)
    usage("key:team-b", "anthropic", "claude-3-5-haiku", 1000, 20)  # outside 7 days
    client.force_login(admin_user)
    page = client.get("/admin/providers/usagerecord/").content.decode()
    assert "Usage in the last 7 days" in page
    assert "<td>key:team-a</td><td>2</td><td>15</td><td>15</td>" in page
    assert "<td>key:team-b</td><td>1</td><td>7</td><td>7</td>" in page
    assert "<td>anthropic</td><td>1</td>" in page
    assert page.count("<rect ") == 3  # one bar per day with requests
    month = client.get("/admin/providers/usagerecord/?days=30").content.decode()
    assert "<td>key:team-b</td><td>2</td><td>1007</td>" in month


@pytest.mark.django_db
def test_usage_rows_cannot_be_added_or_edited(client, admin_user) -> None:
    client.force_login(admin_user)
    assert client.get("/admin/providers/usagerecord/add/").status_code == 403
