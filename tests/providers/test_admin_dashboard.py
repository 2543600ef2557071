"""The admin index's dashboard: providers' health and breakers, recent requests, errors and spend.

Through Django's test client against the real admin: the numbers are those
of the rows made here, a staff user who is not a superuser sees only their
own keys' numbers, and the page costs the same few queries however many
rows and providers there are.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from plugins_api.access.key_changes import client_key_issue
from providers.admin import dashboard
from providers.config.services import provider_config_create
from providers.models import HealthCheck, UsageRecord
from providers.runtime import process as runtime

INDEX = "/admin/"
# Mid-month, past noon (UTC): the last hour, today and this month are all different.
NOW = dt.datetime(2026, 11, 15, 12, 30, tzinfo=dt.UTC)
SECRET = "sk-dashboard-upstream-secret-0123456789"


@pytest.fixture(autouse=True)
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    monkeypatch.setattr(dashboard, "clock", lambda: NOW)
    return NOW


def usage(
    client: str, *, at: dt.datetime, outcome: str = "ok", cost: str | None = None
) -> UsageRecord:
    """Record one request of CLIENT at AT."""
    row = UsageRecord.objects.create(
        client=client,
        endpoint="/v1/chat/completions",
        provider="echo",
        model="echo-1",
        latency_ms=5,
        outcome=outcome,
        prompt_tokens=3,
        completion_tokens=4,
        cost_usd=None if cost is None else Decimal(cost),
    )
    UsageRecord.objects.filter(pk=row.pk).update(created_at=at)
    return row


def stat(html: str, name: str) -> str:
    match = re.search(rf'id="echo-{name}">([^<]*)<', html)
    assert match, name
    return match.group(1)


def top_keys(html: str) -> list[tuple[str, str, str]]:
    table = html.split('id="echo-top-keys"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<th scope="row">([^<]+)</th><td>(\d+)</td><td>([^<]+)</td>', table)


def provider_row(html: str, name: str) -> str:
    match = re.search(rf'<tr data-provider="{name}">(.*?)</tr>', html, re.S)
    assert match, name
    return match.group(1)


def the_month_of_rows() -> None:
    """Requests across the month: the last hour, earlier today, earlier this month, last month."""
    minute = dt.timedelta(minutes=1)
    for i in range(3):
        usage("key:team-a", at=NOW - (10 + i) * minute, cost="0.01")
    usage("key:team-b", at=NOW - 20 * minute, outcome="error")
    usage("key:team-b", at=NOW - 50 * minute, outcome="error")
    usage("key:team-b", at=NOW - dt.timedelta(hours=4), cost="1.25")
    usage("key:team-b", at=NOW - dt.timedelta(hours=2), outcome="error")  # not the last hour
    usage("admin", at=NOW - 5 * minute, outcome="cancelled")  # the chat page: not a key
    usage("key:team-c", at=NOW - dt.timedelta(days=12), cost="10")  # Nov 3
    usage("key:team-c", at=NOW - dt.timedelta(days=16), cost="100")  # October


@pytest.mark.django_db
def test_the_numbers_are_those_of_the_rows(client: Any, admin_user: Any) -> None:
    the_month_of_rows()
    client.force_login(admin_user)

    html = client.get(INDEX).content.decode()

    assert stat(html, "requests-hour") == "6"  # 3 ok, 2 errors, 1 cancelled
    assert stat(html, "errors-hour") == "2"
    assert stat(html, "spend-today") == "$1.28"  # 3 x 0.01 + 1.25
    assert stat(html, "spend-month") == "$11.28"  # and 10 on Nov 3, not October's 100
    assert "Spend in November" in html and "Spend today (UTC)" in html
    assert top_keys(html) == [("team-b", "4", "$1.25"), ("team-a", "3", "$0.03")]
    assert "Numbers of your own keys" not in html


@pytest.mark.django_db
def test_the_dashboard_links_the_admins_places_and_keeps_the_app_list(
    client: Any, admin_user: Any
) -> None:
    client.force_login(admin_user)

    html = client.get(INDEX).content.decode()

    links = html.split('aria-label="Shortcuts"', 1)[1].split("</nav>", 1)[0]
    for href, text in (
        ("/", "Chat page"),
        ("/api/docs/", "API docs"),
        ("/admin/plugins_api/clientapikey/", "Client keys"),
        ("/admin/providers/usagerecord/", "Usage records"),
        ("/admin/providers/providerconfigchange/", "Provider changes"),
    ):
        assert f'<a href="{href}">{text}</a>' in links, text
    assert 'id="echo-top-keys"' in html and "No key has made a request today." in html
    assert html.index('id="echo-dashboard"') < html.index('class="app-providers module')
    assert "Recent actions" in html  # the sidebar is still there


@pytest.mark.django_db
def test_providers_show_their_last_check_and_breaker(
    client: Any, admin_user: Any, echo_config: Any
) -> None:
    HealthCheck.objects.create(
        provider=echo_config, available=True, response_time_ms=12.5, checked_at=timezone.now()
    )
    flaky = provider_config_create(
        name="flaky",
        plugin="openai",
        settings={"base_url": "http://127.0.0.1:9/v1"},
        secrets={"api_key": SECRET},
    )
    HealthCheck.objects.create(
        provider=flaky,
        available=False,
        error=f"the gateway refused key {SECRET}",
        checked_at=timezone.now() - dt.timedelta(minutes=3, seconds=5),
    )
    breaker = runtime.manager.breaker("flaky")
    breaker.configure(failure_threshold=1, cooldown_seconds=60)
    breaker.record_failure(f"chat failed: key {SECRET} refused")
    provider_config_create(name="fresh", plugin="echo")
    provider_config_create(name="paused", plugin="echo", enabled=False, disabled_reason="Billing.")
    client.force_login(admin_user)

    html = client.get(INDEX).content.decode()

    echo = provider_row(html, "echo")
    assert "up (12.5 ms," in echo and 'class="echo-dot echo-up"' in echo
    assert ">default<" in echo and "closed" in echo
    down = provider_row(html, "flaky")
    assert "down: the gateway refused key sk-...6789 (3\xa0minutes ago)" in down
    assert 'class="echo-dot echo-down"' in down
    assert "echo-breaker-open" in down and ">open</strong>: a probe in" in down
    assert "chat failed: key sk-...6789 refused" in down
    fresh = provider_row(html, "fresh")
    assert "never checked" in fresh and 'class="echo-dot echo-never"' in fresh
    assert "disabled: Billing." in provider_row(html, "paused")
    assert SECRET not in html


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    """A staff user, not a superuser, who may view usage (and nothing about providers)."""
    user = django_user_model.objects.create_user("alice", password="pw-alice-123", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    return user


@pytest.mark.django_db
def test_a_staff_user_sees_only_their_own_keys_numbers(
    client: Any, alice: Any, django_user_model: Any, echo_config: Any
) -> None:
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123", is_staff=True)
    client_key_issue(name="alice-key", owner=alice)
    client_key_issue(name="bob-key", owner=bob)
    minute = dt.timedelta(minutes=1)
    usage("key:alice-key", at=NOW - minute, cost="0.50")
    usage("alice", at=NOW - 2 * minute, outcome="error", cost="0.25")  # her chat-page calls
    usage("key:bob-key", at=NOW - minute, outcome="error", cost="4")
    usage("bob", at=NOW - minute, cost="8")
    usage("key:orphan", at=NOW - minute, cost="16")
    client.force_login(alice)

    html = client.get(INDEX).content.decode()

    assert stat(html, "requests-hour") == "2"
    assert stat(html, "errors-hour") == "1"
    assert stat(html, "spend-today") == "$0.75"
    assert stat(html, "spend-month") == "$0.75"
    assert top_keys(html) == [("alice-key", "1", "$0.50")]
    assert "bob-key" not in html and "orphan" not in html
    assert "Numbers of your own keys and calls only." in html
    # No permission on providers: no providers table.
    assert 'id="echo-providers"' not in html

    alice.user_permissions.add(Permission.objects.get(codename="view_providerconfig"))
    html = client.get(INDEX).content.decode()
    assert 'data-provider="echo"' in html


def index_queries(client: Any) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(INDEX)
    assert response.status_code == 200
    return len(queries)


@pytest.mark.django_db
def test_the_query_count_is_small_and_does_not_grow_with_rows(
    client: Any, admin_user: Any, echo_config: Any, django_user_model: Any
) -> None:
    client.force_login(admin_user)
    the_month_of_rows()
    HealthCheck.objects.create(provider=echo_config, available=True, checked_at=NOW)
    few = index_queries(client)

    # Many more rows, keys, providers and checks.
    for p in range(6):
        config = provider_config_create(name=f"extra-{p}", plugin="echo")
        HealthCheck.objects.bulk_create(
            HealthCheck(
                provider=config,
                available=bool(i % 2),
                response_time_ms=float(i),
                checked_at=NOW - dt.timedelta(minutes=i),
            )
            for i in range(30)
        )
    for k in range(12):
        for _ in range(3):
            usage(f"key:bulk-{k}", at=NOW - dt.timedelta(minutes=k + 1), cost="0.02")
    many = index_queries(client)

    assert many == few
    assert few <= 10, few

    # The same for a staff user who is not a superuser.
    alice = django_user_model.objects.create_user("alice", password="pw", is_staff=True)
    for codename in ("view_usagerecord", "view_providerconfig"):
        alice.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(alice)
    staff_few = index_queries(client)
    for k in range(5):
        client_key_issue(name=f"alice-{k}", owner=alice)
        usage(f"key:alice-{k}", at=NOW - dt.timedelta(minutes=2), cost="0.01")
    assert index_queries(client) == staff_few
    assert staff_few <= 14, staff_few


@pytest.mark.django_db
def test_the_dashboard_needs_a_staff_login(client: Any, django_user_model: Any) -> None:
    response = client.get(INDEX)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    django_user_model.objects.create_user("carol", password="pw-carol-123")
    client.login(username="carol", password="pw-carol-123")
    response = client.get(INDEX)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_hostile_query_strings_change_nothing(client: Any, admin_user: Any) -> None:
    the_month_of_rows()
    client.force_login(admin_user)
    before = UsageRecord.objects.count()
    # A NUL is refused at the edge, before the admin.
    assert client.get(INDEX + "?days=%00").status_code == 400
    for query in ("?x=" + "A" * 10_000, "?client=key:team-a&e=1", "?__proto__[x]=1", "?days=-1"):
        response = client.get(INDEX + query)
        assert response.status_code == 200, query
        # The dashboard takes no parameters: the numbers stay everyone's.
        assert stat(response.content.decode(), "requests-hour") == "6", query
    assert UsageRecord.objects.count() == before
