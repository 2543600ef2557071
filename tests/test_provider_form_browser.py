"""The Add provider form in a real browser, on desktop and phone (issue 19).

Debian's Chromium, driven by Playwright, against a live Echo (uvicorn in
this process, ``live_echo``) and a fake OpenAI upstream that knows one key.
The OpenAI form shows name, plugin, API key and URL
first with the advanced settings collapsed; a validation error keeps the
key typed; Test connection shows its result (the key masked) without
saving; the saved provider is checked at once. Without Chromium the tests
skip, and fail under CI=true.

The screenshot goes to ``var/screenshots/admin-add-provider.png``; with
``ECHO_UPDATE_SCREENSHOTS=1`` also to ``docs/screenshots/`` for the docs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from providers.models import HealthCheck, ProviderConfig
from providers.testing.fake_openai import FakeOpenAI
from tests.providers.test_provider_form import BAD_KEY, GOOD_KEY
from tests.test_admin_pages_browser import (
    DESKTOP,
    PHONE,
    keep_screenshot,
    log_in,
    no_sideways_scroll,
)
from tests.test_chat_page_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    off_the_loop,
    require_chromium,
    screenshot_path,
)

# Slow: a real browser against a live server.
pytestmark = pytest.mark.slow


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    """A fake OpenAI that accepts GOOD_KEY only."""
    with FakeOpenAI(api_keys={GOOD_KEY}) as fake:
        yield fake


@pytest.fixture
def server(transactional_db: Any, admin_user: Any, live_echo: Any) -> Any:
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


def top(page: Any, selector: str) -> float:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return box["y"]


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_add_a_provider_test_its_connection_and_save(
    upstream: FakeOpenAI, server: Any, chromium: Any, viewport: dict[str, int]
) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport=viewport)
    page = context.new_page()
    log_in(page, server.url)
    page.goto(f"{server.url}/admin/providers/providerconfig/add/?plugin=openai")

    # What a new provider needs first, in this order; the advanced settings folded away.
    order = ["#id_name", "#id_plugin", "#id_setting__api_key", "#id_setting__base_url"]
    for selector in order:
        expect(page.locator(selector)).to_be_visible()
    tops = [top(page, selector) for selector in order]
    assert tops == sorted(tops), tops
    assert top(page, "#id_setting__base_url") < top(page, "#id_setting__default_model")
    for hidden in ("#id_fallbacks", "#id_routing_priority", "#id_setting__max_retries"):
        expect(page.locator(hidden)).to_be_hidden()
    page.get_by_text("Advanced", exact=True).click()
    expect(page.locator("#id_setting__max_retries")).to_be_visible()
    if viewport == PHONE:
        no_sideways_scroll(page)

    # A bad URL: a plain message, and the typed key still there.
    page.fill("#id_name", "work-openai")
    page.fill("#id_setting__api_key", BAD_KEY)
    page.fill("#id_setting__base_url", "ftp://api.example.com/v1")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-setting__base_url .errorlist")).to_have_text(
        "Enter a URL starting with http:// or https:// in Base URL."
    )
    expect(page.locator("#id_setting__api_key")).to_have_value(BAD_KEY)

    # Test connection with that key: the error shown, the key masked, nothing saved.
    page.fill("#id_setting__base_url", upstream.base_url)
    page.get_by_role("button", name="Test connection").click()
    result = page.locator("#connection-test-result")
    expect(result).to_contain_text("Connection failed.")
    expect(result).to_contain_text("Incorrect API key provided")
    assert BAD_KEY not in result.inner_text()
    expect(page.locator("#id_setting__api_key")).to_have_value(BAD_KEY)
    assert off_the_loop(lambda: not ProviderConfig.objects.filter(name="work-openai").exists())

    # The right key: the connection works, its models listed; then save.
    page.fill("#id_setting__api_key", GOOD_KEY)
    page.get_by_role("button", name="Test connection").click()
    expect(result).to_contain_text("Connection works.")
    expect(result).to_contain_text("gpt-4o-mini")
    if viewport == PHONE:
        no_sideways_scroll(page)
        page.screenshot(path=str(screenshot_path("admin-add-provider-phone.png")), full_page=True)
    else:
        keep_screenshot(page, "admin-add-provider.png")
    assert off_the_loop(lambda: not ProviderConfig.objects.filter(name="work-openai").exists())

    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url("**/admin/providers/providerconfig/")
    expect(page.locator(".messagelist")).to_contain_text("Work-openai is up")
    assert GOOD_KEY not in page.content()
    assert (
        off_the_loop(
            lambda: HealthCheck.objects.filter(provider__name="work-openai", available=True).count()
        )
        == 1
    )
    context.close()
