"""The chat page in a real browser: Debian's Chromium, driven by Playwright, against a live Echo.

Echo runs in uvicorn in this process (``live_echo``), HTTP and websockets.
The providers are echo ones with a delay per streamed word, so that the
answer can be watched arriving. Screenshots go to ``var/screenshots/``.

Chromium is Debian's (``apt-get install chromium``, done by ``.ci/run``),
never a browser Playwright downloads. Without it the tests skip, and fail
under CI=true.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings

from plugins_api.models import Conversation, ConversationMessage
from providers.config.services import provider_config_create
from providers.models import ProviderConfig
from providers.runtime import process as runtime

# Slow: a real browser against a live server.
pytestmark = pytest.mark.slow

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# The default "echo" provider's pause between words. This file's streaming test watches
# an answer painted piece by piece: wide enough apart that a browser starved by a loaded
# 2-core machine still paints the pieces apart. Pages that only need an answer that
# streams (long Markdown answers, conversations) pause less: each word costs its pause.
ECHO_DELAY_MS = 120
QUICK_ECHO_DELAY_MS = 40
SLOW_DELAY_MS = 200
PASSWORD = "pw-admin-123"  # the admin_user fixture's


def require_chromium() -> None:
    """Fail (under CI) or skip (elsewhere) unless Debian's Chromium is installed."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is not installed (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must provide it (see .ci/run).")
    pytest.skip(message)


def off_the_loop(func: Callable[[], T]) -> T:
    """Run FUNC (ORM reads) in a thread of its own.

    Playwright's sync API keeps an event loop in this thread, and Django
    refuses sync queries from a thread with a running loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(func).result(timeout=10)


def screenshot_path(name: str) -> Path:
    folder = Path(settings.VAR_DIR) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


@pytest.fixture
def chromium(server: Any) -> Iterator[Any]:
    """Chromium, started after the server and database fixtures and stopped before them.

    Playwright's loop in this thread would make their sync ORM calls fail.
    """
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def echo_delay_ms() -> int:
    """The echo provider's pause between words (a module that streams long answers asks less)."""
    return ECHO_DELAY_MS


@pytest.fixture
def providers(transactional_db, echo_delay_ms: int) -> None:
    """Echo (default), parrot (another echo) and slowpoke (an echo slow enough to stop)."""
    provider_config_create(
        name="echo",
        plugin="echo",
        settings={"prefix": "Echo: ", "delay_ms": echo_delay_ms},
        is_default=True,
    )
    provider_config_create(
        name="parrot",
        plugin="echo",
        settings={"prefix": "Parrot: ", "models": ["parrot-1"], "default_model": "parrot-1"},
    )
    provider_config_create(
        name="slowpoke", plugin="echo", settings={"prefix": "Slow: ", "delay_ms": SLOW_DELAY_MS}
    )


@pytest.fixture
def server(providers: None, admin_user: Any, live_echo: Any) -> Any:
    """Echo live with the providers, and the admin's login."""
    return live_echo


def log_in(page: Any, url: str) -> None:
    """Open the chat page, be sent to the login form, log in and land on the chat page."""
    page.goto(f"{url}/")
    assert page.url.startswith(f"{url}/accounts/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    page.wait_for_selector("#send:not([disabled])")  # the socket is open


def ask(page: Any, text: str) -> None:
    page.fill("#input", text)
    page.click("#send")


def last_answer(page: Any) -> Any:
    return page.locator(".message.assistant").last


def wait_settled(page: Any, status: str = "complete", timeout: float = 10_000) -> None:
    page.wait_for_function(
        """(status) => {
            const answers = document.querySelectorAll(".message.assistant");
            return answers.length && answers[answers.length - 1].dataset.status === status;
        }""",
        arg=status,
        timeout=timeout,
    )


def test_the_page_needs_a_login_and_post_chat_stays_the_api(client: Any, admin_user: Any) -> None:
    """Without a browser: the routes around the page."""
    for path in ("/", "/chat/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={path}"
    client.force_login(admin_user)
    page = client.get("/chat/")
    assert page.status_code == 200
    assert b'id="provider"' in page.content and b"/static/echo/chat.js" in page.content
    api = client.post("/chat", {}, content_type="application/json")
    assert (api.status_code, api.json()["error"]["field"]) == (400, "prompt")  # still the API
    assert client.get("/accounts/login/").status_code == 200


WATCH_ANSWER = """() => {
    window.answerGrowth = [];
    const messages = document.getElementById("messages");
    new MutationObserver(() => {
        const answers = messages.querySelectorAll(".message.assistant");
        const answer = answers[answers.length - 1];
        if (!answer) return;
        window.answerGrowth.push({
            at: performance.now(),
            length: answer.querySelector(".bubble").textContent.length,
            streaming: answer.classList.contains("streaming"),
        });
    }).observe(messages, {childList: true, subtree: true, characterData: true});
}"""


def test_chat_stream_switch_stop_and_admin_changes_in_a_real_browser(
    server: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    log_in(page, server.url)
    options = page.locator("#provider option")
    expect(options).to_have_text(["echo (default)", "parrot", "slowpoke"])
    expect(page.locator("#model")).to_have_value("echo-1")

    # 1. Ask echo; watch the answer grow while the provider is still streaming.
    page.evaluate(WATCH_ANSWER)
    question = "one two three four five six seven eight"
    ask(page, question)
    wait_settled(page)
    answer = last_answer(page)
    expect(answer.locator(".bubble")).to_have_text(f"Echo: {question}")
    expect(answer.locator(".meta")).to_contain_text("echo · echo-1")
    growth = page.evaluate("window.answerGrowth")
    partial = [g for g in growth if g["streaming"] and 0 < g["length"] < len(f"Echo: {question}")]
    lengths = sorted({g["length"] for g in partial})
    assert len(lengths) >= 4, growth  # rendered piece by piece, not all at the end
    assert partial[-1]["at"] - partial[0]["at"] >= 3 * ECHO_DELAY_MS, growth
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#title")).to_have_text(question)

    # 2. Switch provider mid-conversation: the answer comes from the other one.
    page.select_option("#provider", "parrot")
    expect(page.locator("#model")).to_have_value("parrot-1")
    ask(page, "Who answers now?")
    wait_settled(page)
    expect(last_answer(page).locator(".bubble")).to_have_text("Parrot: Who answers now?")
    expect(last_answer(page).locator(".meta")).to_contain_text("parrot · parrot-1")
    expect(page.locator("#conversations li")).to_have_count(1)  # the same conversation

    def answers() -> list[tuple[str, str, str]]:
        conversation = Conversation.objects.get()
        rows = ConversationMessage.objects.filter(conversation=conversation, role="assistant")
        return [(m.provider, m.model, m.status) for m in rows.order_by("id")]

    assert off_the_loop(answers) == [
        ("echo", "echo-1", "complete"),
        ("parrot", "parrot-1", "complete"),
    ]

    # 3. Stop a long answer: the text stops growing, what came stays, marked stopped.
    page.select_option("#provider", "slowpoke")
    ask(page, " ".join(f"word{i}" for i in range(30)))
    expect(page.locator("#stop")).to_be_visible()
    page.wait_for_function(
        """() => {
            const answers = document.querySelectorAll(".message.assistant .bubble");
            return answers[answers.length - 1].textContent.split(" ").length >= 3;
        }"""
    )
    page.click("#stop")
    wait_settled(page, "cancelled", timeout=5_000)
    expect(page.locator("#send")).to_be_visible()
    expect(last_answer(page).locator(".meta")).to_contain_text("stopped")
    shown = last_answer(page).locator(".bubble").text_content()
    page.wait_for_timeout(3 * SLOW_DELAY_MS)
    assert last_answer(page).locator(".bubble").text_content() == shown
    assert shown.startswith("Slow: word0") and "word29" not in shown

    def last_stored() -> ConversationMessage:
        return ConversationMessage.objects.filter(role="assistant").order_by("id").last()

    stopped = off_the_loop(last_stored)
    assert (stopped.status, stopped.provider, stopped.content) == ("cancelled", "slowpoke", shown)
    assert runtime.registry.status("slowpoke")["active_requests"] == 0  # upstream call ended

    page.screenshot(path=str(screenshot_path("chat-desktop.png")))

    # 4. An admin, in another session, disables parrot: the open page's picker follows.
    expect(page.locator('#provider option[value="parrot"]')).to_have_count(1)
    admin = chromium.new_context().new_page()
    parrot_id = off_the_loop(lambda: ProviderConfig.objects.get(name="parrot").pk)
    change_url = f"{server.url}/admin/providers/providerconfig/{parrot_id}/change/"
    admin.goto(f"{server.url}/admin/login/?next={change_url}")
    admin.fill("#id_username", "admin")
    admin.fill("#id_password", PASSWORD)
    admin.click("input[type=submit]")
    admin.wait_for_url(change_url)
    admin.uncheck("input[name=enabled]")
    admin.click("input[name=_save]")
    admin.wait_for_url(f"{server.url}/admin/providers/providerconfig/")
    expect(page.locator('#provider option[value="parrot"]')).to_have_count(0, timeout=5_000)
    expect(page.locator("#provider")).to_have_value("slowpoke")  # the pick stays
    admin.context.close()
    context.close()


def test_the_chat_page_is_usable_on_a_phone(server: Any, chromium: Any) -> None:
    from playwright.sync_api import expect

    width, height = 390, 844
    context = chromium.new_context(
        viewport={"width": width, "height": height},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    log_in(page, server.url)
    ask(page, "Hello from a phone, does this fit?")
    wait_settled(page)
    ask(page, "And a second question, to fill the screen a little more")
    wait_settled(page)
    page.screenshot(path=str(screenshot_path("chat-phone.png")))

    # Nothing wider than the screen; picker, messages and composer all in view.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for selector in ("#provider", "#model", "#input", "#send", "#open-sidebar"):
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= height, selector
    assert page.locator("#input").bounding_box()["width"] >= width / 2
    # The conversation list waits off-screen behind the menu button.
    sidebar = page.locator("#sidebar").bounding_box()
    assert sidebar["x"] + sidebar["width"] <= 0
    page.click("#open-sidebar")
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations li button.open")).to_be_in_viewport()
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    page.screenshot(path=str(screenshot_path("chat-phone-conversations.png")))
    page.click("#conversations li button.open")
    expect(page.locator(".message.assistant")).to_have_count(2)
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    context.close()
