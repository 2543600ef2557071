"""The usage records page: period buttons, a chart with a slot per day and axes, costs, blank rows.

Through Django's test client against the real admin. The chart is read
back from the page's SVG: its day slots, bars, axis ticks and day labels.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from providers.admin.usage_admin import chart_ticks, period_start, usd
from providers.models import UsageRecord

PAGE = "/admin/providers/usagerecord/"


def usage(
    *,
    days_ago: float = 0,
    tokens: int = 10,
    client: str = "key:team-a",
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    outcome: str = "ok",
    cost: str | None = None,
) -> UsageRecord:
    """Record one request DAYS_AGO days before today's noon (UTC), or now when 0."""
    row = UsageRecord.objects.create(
        client=client,
        endpoint="/v1/chat/completions",
        provider=provider,
        model=model,
        latency_ms=10,
        outcome=outcome,
        prompt_tokens=tokens,
        completion_tokens=tokens,
        cost_usd=None if cost is None else Decimal(cost),
    )
    if days_ago:
        start, _ = period_start(1)  # today's midnight
        at = start + timedelta(hours=12) - timedelta(days=days_ago)
        UsageRecord.objects.filter(pk=row.pk).update(created_at=at)
    return row


@pytest.fixture
def staff(client: Any, admin_user: Any) -> Any:
    client.force_login(admin_user)
    return client


def chart(html: str) -> str:
    match = re.search(r'<svg class="echo-usage-chart".*?</svg>', html, re.S)
    assert match, "no chart"
    return match.group(0)


def days_of(svg: str) -> list[tuple[str, int]]:
    return [(d, int(t)) for d, t in re.findall(r'data-day="([\d-]+)" data-tokens="(\d+)"', svg)]


def bars(svg: str) -> list[float]:
    return [float(h) for h in re.findall(r'<rect class="echo-bar"[^>]* height="([\d.]+)"', svg)]


def y_ticks(svg: str) -> list[str]:
    return re.findall(r'class="echo-tick echo-tick-y"[^>]*>([^<]+)<', svg)


def x_labels(svg: str) -> list[str]:
    return re.findall(r'class="echo-tick echo-tick-x"[^>]*>([^<]+)<', svg)


def period_links(html: str) -> dict[str, bool]:
    """Return each period link's text and whether it is marked as the current one."""
    nav = html.split('class="echo-periods"', 1)[1].split("</nav>", 1)[0]
    links = re.findall(r'<a class="echo-period" href="\?days=(\d+)"( aria-current="page")?>', nav)
    return {days: bool(current) for days, current in links}


@pytest.mark.django_db
def test_the_chart_has_a_slot_per_day_of_the_week_with_axes(staff: Any) -> None:
    usage(days_ago=1, tokens=400)  # 800 tokens yesterday (noon)
    usage(days_ago=3, tokens=100)
    usage(days_ago=3, tokens=50)  # 300 that day
    usage(days_ago=30, tokens=9_999)  # outside the week

    svg = chart(staff.get(PAGE).content.decode())

    _, period = period_start(7)
    days = days_of(svg)
    assert [d for d, _ in days] == [
        day.isoformat() for day in period
    ]  # 7, oldest first, today last
    tokens = dict(days)
    assert tokens[period[-2].isoformat()] == 800 and tokens[period[-4].isoformat()] == 300
    assert sum(tokens.values()) == 1100  # the other five are empty slots
    assert svg.count('class="echo-day"') == 7 and svg.count("<title>") == 7
    # Bars only where there were tokens, scaled to the top tick (1000 for a peak of 800).
    assert sorted(bars(svg)) == pytest.approx([138 * 0.3, 138 * 0.8], abs=0.15)
    assert y_ticks(svg) == ["0", "500", "1,000"]
    assert x_labels(svg) == [f"{day:%b} {day.day}" for day in period]  # every day labelled
    assert 'class="echo-axis"' in svg
    # Hover and focus: each day says its numbers.
    assert f"<title>{period[-2]:%a %Y-%m-%d}: 800 tokens, 1 request</title>" in svg
    assert f"<title>{period[-4]:%a %Y-%m-%d}: 300 tokens, 2 requests</title>" in svg
    assert svg.count('tabindex="0"') == 7
    assert ">800 tokens, 1 req.</text>" in svg


@pytest.mark.django_db
def test_the_month_has_thirty_slots_and_thinned_day_labels(staff: Any) -> None:
    usage(days_ago=20, tokens=2_000)
    usage(days_ago=1, tokens=30)

    svg = chart(staff.get(PAGE + "?days=30").content.decode())

    _, period = period_start(30)
    assert [d for d, _ in days_of(svg)] == [day.isoformat() for day in period]
    assert len(bars(svg)) == 2
    assert sorted(bars(svg)) == pytest.approx([138 * 60 / 4_000, 138], abs=0.15)
    assert y_ticks(svg) == ["0", "2,000", "4,000"]
    labels = x_labels(svg)
    assert 5 <= len(labels) <= 15
    assert labels[-1] == f"{period[-1]:%b} {period[-1].day}"  # today is always labelled
    ninety = chart(staff.get(PAGE + "?days=90").content.decode())
    assert len(days_of(ninety)) == 90 and 5 <= len(x_labels(ninety)) <= 15


@pytest.mark.django_db
def test_a_period_without_requests_says_so(staff: Any) -> None:
    usage(days_ago=10)
    html = staff.get(PAGE + "?days=1").content.decode()
    assert "No requests in this period." in html and "echo-usage-chart" not in html


def test_costs_read_as_money() -> None:
    assert usd(Decimal("0.0000433000000000000")) == "$0.000043"
    assert usd(Decimal("0.00004")) == "$0.00004"
    assert usd(Decimal("1E-7")) == "$0.0000001"
    assert usd(Decimal("0.00999")) == "$0.01"
    assert usd(Decimal("0.004449")) == "$0.0044"
    assert usd(Decimal("12.345")) == "$12.35"
    assert usd(Decimal("1234.5")) == "$1,234.50"
    assert usd(Decimal("0")) == "$0.00"
    assert usd(0.5) == "$0.50"
    assert usd(None) == "—"
    assert usd(Decimal("NaN")) == "—"


def test_the_y_axis_has_three_or_four_round_ticks() -> None:
    for peak in (1, 3, 7, 30, 31, 99, 800, 1007, 45_000, 2_345_678):
        ticks = chart_ticks(peak)
        assert 3 <= len(ticks) <= 4, (peak, ticks)
        assert ticks[0] == 0 and ticks[-1] >= peak, (peak, ticks)
        step = ticks[1]
        assert all(b - a == step for a, b in zip(ticks, ticks[1:], strict=False)), ticks
        assert str(step).rstrip("0") in {"1", "2", "25", "5"}, (peak, step)


@pytest.mark.django_db
def test_costs_are_formatted_in_the_list_and_the_totals(staff: Any) -> None:
    usage(cost="0.0000433", client="key:cheap")
    usage(cost="12.345", client="key:dear")

    html = staff.get(PAGE).content.decode()

    assert "0.0000433" not in html and "12.345" not in html and "E-" not in html
    assert '<td class="field-cost">$0.000043</td>' in html
    assert '<td class="field-cost">$12.35</td>' in html
    assert "<td>key:cheap</td><td>1</td><td>10</td><td>10</td><td>0</td><td>$0.000043</td>" in html
    assert "<td>openai</td><td>2</td><td>20</td><td>20</td><td>0</td><td>$12.35</td>" in html


@pytest.mark.django_db
def test_answers_cancelled_before_a_word_are_labelled(staff: Any) -> None:
    usage(provider="", model="", outcome="cancelled", tokens=0, client="key:quick")
    usage(provider="", model="", outcome="error", tokens=0, client="key:broken")
    usage(outcome="error", client="key:broken")

    html = staff.get(PAGE).content.decode()

    cancelled = "(cancelled before an answer)"
    assert f'<td class="field-shown_provider">{cancelled}</td>' in html
    assert f'<td class="field-shown_model">{cancelled}</td>' in html
    assert '<td class="field-shown_provider">—</td>' in html  # failed before routing
    assert '<td class="field-shown_provider">openai</td>' in html
    assert "<td></td>" not in html.split('id="usage-summary"', 1)[1].split("</div>", 1)[0]
    by_provider = html.split("<caption>Per provider</caption>", 1)[1].split("</table>", 1)[0]
    # The blank group holds a cancelled and a failed request: not all cancelled.
    assert "<td>—</td><td>2</td><td>0</td><td>0</td><td>1</td><td>—</td>" in by_provider
    assert "<td>openai</td><td>1</td><td>10</td><td>10</td><td>1</td>" in by_provider
    only_cancelled = staff.get(PAGE + "?days=1&client=key:quick").content.decode()
    assert f'<td class="field-shown_model">{cancelled}</td>' in only_cancelled


@pytest.mark.django_db
def test_totals_have_requests_tokens_errors_and_cost(staff: Any) -> None:
    usage(client="key:a", provider="openai", model="gpt-4o", tokens=5, cost="0.02")
    usage(client="key:a", provider="openai", model="gpt-4o", outcome="error", tokens=0)
    usage(client="key:b", provider="anthropic", model="claude", tokens=7, cost="1.5")

    html = staff.get(PAGE).content.decode()

    assert '<th scope="col">Errors</th>' in html
    assert "<td>key:a</td><td>2</td><td>5</td><td>5</td><td>1</td><td>$0.02</td>" in html
    assert "<td>key:b</td><td>1</td><td>7</td><td>7</td><td>0</td><td>$1.50</td>" in html
    assert "<td>gpt-4o</td><td>2</td><td>5</td><td>5</td><td>1</td><td>$0.02</td>" in html
    assert "<td>anthropic</td><td>1</td><td>7</td><td>7</td><td>0</td><td>$1.50</td>" in html


@pytest.mark.django_db
def test_period_links_are_present_and_the_chosen_one_is_marked(staff: Any) -> None:
    assert period_links(staff.get(PAGE).content.decode()) == {
        "1": False,
        "7": True,
        "30": False,
        "90": False,
    }
    html = staff.get(PAGE + "?days=30").content.decode()
    assert period_links(html) == {"1": False, "7": False, "30": True, "90": False}
    assert "Usage in the last 30 days" in html
    assert ">30 days</a>" in html and ">1 day</a>" in html


@pytest.mark.django_db
@pytest.mark.parametrize(
    "days", ["0", "8", "-7", "abc", "7.5", "9" * 5000, "1e3", "", "７", " 7", "07"]
)
def test_an_unknown_period_is_refused_naming_days(staff: Any, days: str) -> None:
    usage()
    before = list(UsageRecord.objects.values_list("pk", "cost_usd"))
    response = staff.get(PAGE, {"days": days})
    assert response.status_code == 400
    assert response.content.decode().startswith("days: must be one of 1, 7, 30, 90")
    assert list(UsageRecord.objects.values_list("pk", "cost_usd")) == before


@pytest.mark.django_db
def test_a_staff_user_sees_only_their_own_rows_in_the_chart(
    client: Any, django_user_model: Any
) -> None:
    from django.contrib.auth.models import Permission

    from plugins_api.access.key_changes import client_key_issue

    alice = django_user_model.objects.create_user("alice", password="pw", is_staff=True)
    alice.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    client_key_issue(name="alice-key", owner=alice)
    usage(client="key:alice-key", tokens=20, days_ago=1)
    usage(client="key:someone-else", tokens=5_000, days_ago=1)
    client.force_login(alice)

    svg = chart(client.get(PAGE).content.decode())

    assert sum(t for _, t in days_of(svg)) == 40
    assert "5,000" not in svg and "10,000" not in svg
