"""The client key admin in a real browser: issue a key, copy it once, use it, see its use and spend, revoke it.

Debian's Chromium, driven by Playwright, against a live Echo (uvicorn in
this process, ``live_echo``). The key calls ``/v1/chat/completions`` for
real: Echo's ``openai`` provider answers through FakeOpenAI on loopback, and
``gpt-4o`` has a price (``providers/usage/model_info.yaml``), so the call is
recorded with a cost by the usual usage path and the list shows it against
the key's budget. Without Chromium the test skips, and fails under CI=true.

The list's screenshot goes to ``var/screenshots/admin-client-keys.png``;
with ``ECHO_UPDATE_SCREENSHOTS=1`` also to ``docs/screenshots/`` for the docs.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from plugins_api.access.key_changes import client_key_issue, client_key_revoke
from plugins_api.access.key_limits import KeyLimits
from plugins_api.admin.client_key_admin import usd
from plugins_api.models import ClientAPIKey
from providers.config.services import provider_config_create
from providers.models import UsageRecord
from providers.testing.fake_openai import FakeOpenAI
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

UPSTREAM_KEY = "sk-fake-upstream-for-the-keys-admin"
KEY_NAME = "browser-key"
QUESTION = "how much does this answer cost"
DOCS_SCREENSHOT = Path(settings.BASE_DIR) / "docs" / "screenshots" / "admin-client-keys.png"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_keys={UPSTREAM_KEY}) as fake:
        yield fake


@pytest.fixture
def server(transactional_db: Any, upstream: FakeOpenAI, admin_user: Any, live_echo: Any) -> Any:
    """Echo live, its default provider OpenAI (the fake), and a few keys for the list to show."""
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": upstream.base_url, "max_retries": 0},
        secrets={"api_key": UPSTREAM_KEY},
        is_default=True,
    )
    client_key_issue(
        name="data-team",
        limits=KeyLimits(requests_per_minute=120, tokens_per_minute=50_000, max_concurrent=8),
        budget_usd=Decimal("25"),
        owner=admin_user,
    )
    client_key_issue(name="old-ci-bot", budget_period="week")
    client_key_revoke(name="old-ci-bot")
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


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": QUESTION}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def recorded(name: str) -> tuple[Decimal | None, Any]:
    """Return the key's recorded cost and its last use, as the database has them now."""
    cost = UsageRecord.objects.filter(client=f"key:{name}").aggregate(total=Sum("cost_usd"))
    row = ClientAPIKey.objects.get(name=name)
    return cost["total"], row.last_used_at


def test_issue_copy_use_see_spend_and_revoke_a_key_in_a_real_browser(
    server: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1600, "height": 720})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()

    # Log in to the admin, on the way to the add form.
    page.goto(f"{server.url}/admin/plugins_api/clientapikey/add/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{server.url}/admin/plugins_api/clientapikey/add/")

    # Issue a key with a budget and a model allow-list.
    page.fill("#id_name", KEY_NAME)
    page.fill("#id_requests_per_minute", "30")
    page.fill("#id_allowed_models", "openai/*")
    page.fill("#id_budget_usd", "2")
    page.select_option("#id_budget_period", "day")
    page.click("input[name=_save]")
    expect(page.locator("#shown-once")).to_contain_text("will not be shown again")
    shown = page.locator("#client-key-secret").input_value()
    assert shown.startswith("echo-")

    # Copy it with the button, and read the clipboard back.
    page.click("#copy-key")
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == shown

    # Use the copied key for a priced chat call through the live server.
    answer = chat(server.url, copied)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == f"You said: {QUESTION}"

    # The usage row and the last-use stamp are written in batches, a moment later.
    deadline = time.monotonic() + 15
    cost, last_used = off_the_loop(lambda: recorded(KEY_NAME))
    while (not cost or last_used is None) and time.monotonic() < deadline:
        time.sleep(0.2)
        cost, last_used = off_the_loop(lambda: recorded(KEY_NAME))
    assert cost and cost > 0 and last_used is not None, (cost, last_used)

    # The list: last used and the spend against the budget; never the secret.
    page.goto(f"{server.url}/admin/plugins_api/clientapikey/")
    row = page.locator("#result_list tbody tr", has_text=KEY_NAME)
    expect(row.locator(".field-spend")).to_have_text(f"{usd(cost)} of $2.00 / day")
    stamp = timezone.localtime(last_used)
    expect(row.locator(".field-last_used")).to_have_text(f"{stamp:%Y-%m-%d %H:%M:%S %Z}")
    expect(row.locator(".field-limits")).to_have_text("30 req/min")
    expect(row.locator(".field-status")).to_have_text("active")
    assert copied not in page.content()
    shot = screenshot_path("admin-client-keys.png")
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("ECHO_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # Revoke it from its page, confirming; the key is refused from then on.
    row.locator(".field-name a").click()
    assert copied not in page.content()
    page.click("#revoke-key")
    expect(page.locator("#keys-to-revoke")).to_contain_text(KEY_NAME)
    page.click("#confirm-revoke")
    expect(page.locator(".messagelist")).to_contain_text("is revoked")
    expect(page.locator(".field-status .readonly")).to_contain_text("revoked")
    refused = chat(server.url, copied)
    assert refused.status_code == 401, refused.text
    context.close()
