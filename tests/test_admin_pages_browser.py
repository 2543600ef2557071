"""The admin index's dashboard and the usage records page in a real browser, on desktop and phone.

Debian's Chromium, driven by Playwright, against a live Echo (uvicorn in
this process, ``live_echo``), in the light and the dark theme. The
dashboard shows the providers with their last check; the usage page's
period buttons are readable (their computed colour differs clearly from
what is behind them) and its chart has a slot per day, with axes, whose
value shows when the day is focused. Without Chromium the tests skip, and
fail under CI=true.

Screenshots go to ``var/screenshots/admin-index.png`` and
``admin-usage.png``; with ``ECHO_UPDATE_SCREENSHOTS=1`` also to
``docs/screenshots/`` for the docs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from providers.admin.usage_admin import period_start
from providers.config.services import provider_config_create
from providers.models import HealthCheck, UsageRecord
from tests.test_chat_page_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    off_the_loop,
    require_chromium,
    screenshot_path,
)

# Slow: a real browser against a live server.
pytestmark = pytest.mark.slow

DOCS_SCREENSHOTS = Path(settings.BASE_DIR) / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# The colour of an element and of what is drawn behind it, and their WCAG contrast ratio.
CONTRAST_JS = """
(element) => {
  const rgba = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const behind = (node) => {
    for (; node; node = node.parentElement) {
      const colour = rgba(getComputedStyle(node).backgroundColor);
      if (colour.length === 3 || (colour.length === 4 && colour[3] > 0)) return colour;
    }
    return [255, 255, 255];
  };
  const luminance = ([r, g, b]) => {
    const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  };
  const fg = rgba(getComputedStyle(element).color).slice(0, 3);
  const bg = behind(element).slice(0, 3);
  const [light, dark] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
  return {
    color: getComputedStyle(element).color,
    background: `rgb(${bg.join(", ")})`,
    ratio: (light + 0.05) / (dark + 0.05),
    visible: element.getBoundingClientRect().width > 0,
  };
}
"""


@pytest.fixture
def server(transactional_db: Any, admin_user: Any, live_echo: Any) -> Any:
    """Echo live with two providers (one checked, one down) and a week of usage."""
    echo = provider_config_create(
        name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
    )
    backup = provider_config_create(name="backup", plugin="echo")
    now = timezone.now()
    HealthCheck.objects.create(provider=echo, available=True, response_time_ms=4.2, checked_at=now)
    HealthCheck.objects.create(
        provider=backup, available=False, error="connection refused", checked_at=now
    )
    start, _ = period_start(7)
    for days_ago, tokens, cost, outcome in (
        (0, 1200, "0.0000433", "ok"),
        (0, 300, None, "error"),
        (1, 2600, "12.345", "ok"),
        (3, 800, "0.004", "ok"),
        (5, 150, "0.0002", "ok"),
    ):
        row = UsageRecord.objects.create(
            client="key:data-team",
            endpoint="/v1/chat/completions",
            provider="echo",
            model="echo-1",
            latency_ms=20,
            outcome=outcome,
            prompt_tokens=tokens // 2,
            completion_tokens=tokens - tokens // 2,
            cost_usd=None if cost is None else Decimal(cost),
        )
        at = now if days_ago == 0 else start + timedelta(days=6 - days_ago, hours=12)
        UsageRecord.objects.filter(pk=row.pk).update(created_at=at)
    UsageRecord.objects.create(  # stopped before its first word
        client="admin", endpoint="/ws/chat", latency_ms=80, outcome="cancelled"
    )
    return live_echo


@pytest.fixture
def chromium(server: Any) -> Iterator[Any]:
    """Chromium, started after the server and database fixtures and stopped before them."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


def log_in(page: Any, url: str) -> None:
    page.goto(f"{url}/admin/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{url}/admin/")


def keep_screenshot(page: Any, name: str) -> None:
    shot = screenshot_path(name)
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("ECHO_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOTS / name)


def no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"] + 1, width


@pytest.mark.parametrize(
    ("viewport", "scheme"),
    [(DESKTOP, "light"), (DESKTOP, "dark"), (PHONE, "light"), (PHONE, "dark")],
    ids=["desktop-light", "desktop-dark", "phone-light", "phone-dark"],
)
def test_the_dashboard_and_the_usage_page(
    server: Any, chromium: Any, viewport: dict[str, int], scheme: str
) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport=viewport, color_scheme=scheme)
    page = context.new_page()
    log_in(page, server.url)
    name = "desktop" if viewport == DESKTOP else "phone"

    # The dashboard: the providers with their last check, the hour, today's spend, the way on.
    echo = page.locator('#echo-providers tr[data-provider="echo"]')
    expect(echo).to_be_visible()
    expect(echo.locator(".echo-health")).to_contain_text("up (4.2 ms,")
    expect(echo).to_contain_text("closed")
    expect(page.locator('#echo-providers tr[data-provider="backup"] .echo-health')).to_contain_text(
        "down: connection refused"
    )
    expect(page.locator("#echo-requests-hour")).to_have_text("3")
    expect(page.locator("#echo-errors-hour")).to_have_text("1")
    expect(page.locator("#echo-spend-today")).to_have_text("$0.000043")
    expect(page.locator("#echo-top-keys")).to_contain_text("data-team")
    shortcuts = page.get_by_role("navigation", name="Shortcuts")
    for link in ("Chat page", "API docs", "Client keys", "Usage records", "Provider changes"):
        expect(shortcuts.get_by_role("link", name=link, exact=True)).to_be_visible()
    expect(page.locator("#content-main .app-providers")).to_be_visible()  # the app list stays
    if viewport == PHONE:
        no_sideways_scroll(page)
    if (viewport, scheme) == (DESKTOP, "light"):
        keep_screenshot(page, "admin-index.png")
    else:
        page.screenshot(
            path=str(screenshot_path(f"admin-index-{name}-{scheme}.png")), full_page=True
        )

    # The usage page: readable period buttons, the chosen one marked.
    shortcuts.get_by_role("link", name="Usage records", exact=True).click()
    page.wait_for_url("**/admin/providers/usagerecord/")
    links = page.locator(".echo-periods a")
    expect(links).to_have_count(4)
    for i in range(4):
        seen = links.nth(i).evaluate(CONTRAST_JS)
        assert seen["visible"], seen
        assert seen["color"] != seen["background"], seen
        assert seen["ratio"] >= 3, seen
    current = page.locator('.echo-periods a[aria-current="page"]')
    expect(current).to_have_text("7 days")
    marked = current.evaluate("e => getComputedStyle(e).backgroundColor")
    plain = links.nth(0).evaluate("e => getComputedStyle(e).backgroundColor")
    assert marked != plain

    # The chart: one slot per day, the axes labelled, a day's value on focus.
    chart = page.locator("svg.echo-usage-chart")
    expect(chart).to_be_visible()
    expect(chart.locator(".echo-day")).to_have_count(7)
    expect(chart.locator(".echo-bar")).to_have_count(4)  # the days with tokens
    expect(chart.locator(".echo-tick-x")).to_have_count(7)
    assert 3 <= chart.locator(".echo-tick-y").count() <= 4
    expect(chart.locator(".echo-axis")).to_have_count(1)
    box = chart.bounding_box()
    assert box and 0 < box["width"] <= viewport["width"], box
    today = chart.locator(".echo-day").last
    value = today.locator(".echo-day-value")
    assert value.evaluate("e => getComputedStyle(e).visibility") == "hidden"
    today.focus()
    assert value.evaluate("e => getComputedStyle(e).visibility") == "visible"
    expect(value).to_have_text("1,500 tokens, 3 req.")
    assert today.locator("title").text_content().endswith(": 1,500 tokens, 3 requests")

    # Costs to the currency's sense; a cancelled request is labelled, not blank.
    expect(page.locator("#usage-summary")).to_contain_text("$12.35")
    expect(page.locator("#result_list")).to_contain_text("$0.000043")
    expect(page.locator("#result_list")).to_contain_text("(cancelled before an answer)")
    assert "0.0000433" not in page.content()
    if viewport == PHONE:
        no_sideways_scroll(page)
    if (viewport, scheme) == (DESKTOP, "light"):
        keep_screenshot(page, "admin-usage.png")
    else:
        page.screenshot(
            path=str(screenshot_path(f"admin-usage-{name}-{scheme}.png")), full_page=True
        )

    # Another period: thirty slots, the button marked.
    page.get_by_role("link", name="30 days", exact=True).click()
    page.wait_for_url("**/admin/providers/usagerecord/?days=30")
    expect(page.locator('.echo-periods a[aria-current="page"]')).to_have_text("30 days")
    expect(chart.locator(".echo-day")).to_have_count(30)
    assert 5 <= chart.locator(".echo-tick-x").count() <= 15
    context.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_checked_provider_is_deleted_from_its_page_saying_what_goes_with_it(
    server: Any, chromium: Any, viewport: dict[str, int]
) -> None:
    from playwright.sync_api import expect

    from providers.models import ProviderConfig, ProviderConfigChange

    page = chromium.new_context(viewport=viewport).new_page()
    log_in(page, server.url)
    backup = off_the_loop(lambda: ProviderConfig.objects.get(name="backup"))  # checked once
    page.goto(f"{server.url}/admin/providers/providerconfig/{backup.pk}/change/")
    page.click("a.deletelink")
    # The confirmation says what goes with it, and no permission is missing.
    expect(page.locator("#content")).to_contain_text("1 health check (its check history)")
    expect(page.locator("#content")).to_contain_text("Kept: its change history")
    expect(page.locator("#content")).not_to_contain_text("permission")
    page.click("input[type=submit]")
    expect(page.locator(".messagelist")).to_contain_text("deleted successfully")

    def after() -> tuple[bool, bool, bool]:
        return (
            ProviderConfig.objects.filter(name="backup").exists(),
            HealthCheck.objects.filter(provider_id=backup.pk).exists(),
            ProviderConfigChange.objects.filter(provider_name="backup", action="deleted").exists(),
        )

    assert off_the_loop(after) == (False, False, True)
