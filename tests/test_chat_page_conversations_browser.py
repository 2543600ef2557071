"""The chat page's conversations and notices in a real browser: URLs, stops, rename, search, failover.

Debian's Chromium, driven by Playwright, against a live Echo (the fixtures
of ``test_chat_page_browser``, with more providers): each conversation at
``/chat/c/<id>``, its provider, model and answer details restored when
reopened, back and forward; stopped answers the same live and reopened,
and one stopped before any text labelled so; rename and search in the
list; the notice on an answer that came from a fallback, and on a picker
that had to switch; a message over the limits refused before sending with
its text kept. Screenshots go to ``var/screenshots/``.
"""

# ruff: noqa: F811

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from plugins_api.chat.protocol import failover_notes
from plugins_api.models import Conversation, ConversationMessage
from providers.config.services import provider_config_create, provider_config_update
from providers.models import ProviderConfig
from tests.server_processes import free_port
from tests.test_chat_page_browser import (  # noqa: F401 - fixtures
    QUICK_ECHO_DELAY_MS,
    SLOW_DELAY_MS,
    ask,
    chromium,
    last_answer,
    log_in,
    off_the_loop,
    screenshot_path,
    server,
    wait_settled,
)

# Slow: a real browser against a live server.
pytestmark = pytest.mark.slow

DESKTOP = {"width": 1280, "height": 800}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
STOPPED_EMPTY = "Stopped before any answer"


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    """A port that takes connections and never answers: an upstream stuck before its first word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections wait in the backlog, never read or answered
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def providers(transactional_db, silent_upstream: int) -> None:
    """Echo (default), parrot, slowpoke; openai, whose upstream is gone, falling back to echo;
    and silent, whose upstream never says a word."""
    provider_config_create(
        name="echo",
        plugin="echo",
        settings={"prefix": "Echo: ", "delay_ms": QUICK_ECHO_DELAY_MS},
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
    provider_config_create(
        name="openai",
        plugin="openai",
        settings={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0},
        secrets={"api_key": "sk-test-closed-port-0001"},
        fallbacks=["echo"],
    )
    provider_config_create(
        name="silent",
        plugin="openai",
        settings={"base_url": f"http://127.0.0.1:{silent_upstream}/v1", "max_retries": 0},
        secrets={"api_key": "sk-test-silent-port-0002"},
    )


def conversation_id(url: str) -> int:
    found = re.search(r"/chat/c/(\d+)$", url)
    assert found, url
    return int(found.group(1))


def meta(page: Any, index: int) -> str:
    return page.locator(".message.assistant .meta").nth(index).text_content()


def bubble(page: Any, index: int) -> str:
    return page.locator(".message.assistant .bubble").nth(index).text_content()


# --- without a browser ---------------------------------------------------------


def test_the_conversation_page_is_its_owners_only(
    client: Any, admin_user: Any, django_user_model: Any
) -> None:
    mine = Conversation.objects.create(title="mine", user=admin_user)
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    bobs = Conversation.objects.create(title="bob's secret plans", user=bob)
    ConversationMessage.objects.create(conversation=bobs, role="user", content="the vault code")

    anonymous = client.get(f"/chat/c/{mine.pk}")
    assert anonymous.status_code == 302
    assert anonymous["Location"] == f"/accounts/login/?next=/chat/c/{mine.pk}"

    client.force_login(admin_user)
    for path in (f"/chat/c/{mine.pk}", f"/chat/c/{mine.pk}/"):
        page = client.get(path)
        assert page.status_code == 200
        assert f'data-conversation="{mine.pk}"'.encode() in page.content
        assert b'data-conversation-missing="false"' in page.content
        assert b'data-max-message-chars="400000"' in page.content
        assert f'data-max-frame-bytes="{settings.ECHO_WS_MAX_FRAME_BYTES}"'.encode() in page.content
    for path in (
        f"/chat/c/{bobs.pk}",
        "/chat/c/999999999",
        "/chat/c/0",
        "/chat/c/-1",
        "/chat/c/abc",
        f"/chat/c/{2**63}",
        "/chat/c/" + "9" * 100,
        "/chat/c/%C2%B2",  # a superscript two: a digit to str.isdigit, not a number
    ):
        page = client.get(path)
        assert page.status_code == 404, path
        assert b'data-conversation-missing="true"' in page.content, path
        assert b'data-conversation=""' in page.content, path
        assert b"secret plans" not in page.content and b"vault" not in page.content
        assert b'id="provider"' in page.content  # the chat page, not an error page


def test_the_limits_default_to_long_prompts_and_stay_in_step() -> None:
    assert settings.ECHO_WS_MAX_MESSAGE_CHARS == 400_000
    # Any message under the character limit fits a frame, and a frame fits a /chat body.
    assert settings.ECHO_WS_MAX_FRAME_BYTES >= 4 * settings.ECHO_WS_MAX_MESSAGE_CHARS
    assert settings.ECHO_WS_MAX_FRAME_BYTES <= settings.ECHO_MAX_BODY_BYTES
    assert settings.DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE == settings.ECHO_WS_MAX_FRAME_BYTES


def test_the_done_frame_lists_the_routes_given_up_on_bounded() -> None:
    metadata = {
        "fallback_path": [
            {"route": "anthropic/claude-3-5-haiku", "error": "unavailable", "attempts": 3},
            {"route": "openai", "error": "rate_limited", "attempts": 1},
            "not a step",
            {"route": 42},
            {"route": "x" * 500, "error": None, "attempts": "many"},
        ]
    }
    assert failover_notes(metadata) == [
        {
            "provider": "anthropic",
            "model": "claude-3-5-haiku",
            "error": "unavailable",
            "attempts": 3,
        },
        {"provider": "openai", "model": None, "error": "rate_limited", "attempts": 1},
        {"provider": "x" * 200, "model": None, "error": "error", "attempts": 0},
    ]
    assert failover_notes({}) == [] and failover_notes(None) == []
    assert failover_notes({"fallback_path": "nope"}) == []
    many = {"fallback_path": [{"route": f"p{i}", "error": "timeout"} for i in range(100)]}
    assert len(failover_notes(many)) == 20


# --- in the browser ------------------------------------------------------------


def test_a_conversation_has_its_url_and_reopens_as_it_was_shown(
    server: Any, chromium: Any, django_user_model: Any
) -> None:
    from playwright.sync_api import expect

    page = chromium.new_context(viewport=DESKTOP).new_page()
    log_in(page, server.url)

    # 1. A new conversation takes its URL once it exists.
    page.select_option("#provider", "parrot")
    ask(page, "first question")
    wait_settled(page)
    page.wait_for_url(re.compile(r"/chat/c/\d+$"))
    first = conversation_id(page.url)
    live_meta = meta(page, 0)
    assert re.fullmatch(
        r"parrot · parrot-1 · \d+\xa0tokens · first word \d+\xa0ms · total \d+\xa0ms", live_meta
    ), live_meta

    # 2. New chat: back to the page's own address; the next conversation gets its own.
    page.click("#new-chat")
    page.wait_for_url(f"{server.url}/")
    expect(page.locator("#title")).to_have_text("New chat")
    page.select_option("#provider", "echo")
    ask(page, "second question")
    wait_settled(page)
    page.wait_for_url(re.compile(r"/chat/c/\d+$"))
    second = conversation_id(page.url)
    assert second != first

    # 3. Opened by its URL in another tab: its messages, details, provider and model.
    other = page.context.new_page()
    response = other.goto(f"{server.url}/chat/c/{first}")
    assert response.status == 200
    expect(other.locator("#title")).to_have_text("first question")
    expect(other.locator(".message")).to_have_count(2)
    expect(other.locator(".message.assistant .bubble")).to_have_text("Parrot: first question")
    expect(other.locator(".message.assistant .meta")).to_have_text(live_meta)
    expect(other.locator("#provider")).to_have_value("parrot")
    expect(other.locator("#model")).to_have_value("parrot-1")
    expect(other.locator("#notice")).to_be_hidden()
    other.close()

    # 4. Picked from the list, then back and forward through the history.
    page.click(f'#conversations li[data-id="{first}"] button.open')
    page.wait_for_url(f"{server.url}/chat/c/{first}")
    expect(page.locator("#title")).to_have_text("first question")
    expect(page.locator("#provider")).to_have_value("parrot")
    page.go_back()
    page.wait_for_url(f"{server.url}/chat/c/{second}")
    expect(page.locator("#title")).to_have_text("second question")
    expect(page.locator(".message.assistant .bubble")).to_have_text("Echo: second question")
    expect(page.locator("#provider")).to_have_value("echo")
    page.go_back()
    page.wait_for_url(f"{server.url}/chat/c/{first}")  # the new chat became the conversation
    expect(page.locator("#title")).to_have_text("first question")
    page.go_forward()
    page.wait_for_url(f"{server.url}/chat/c/{second}")
    expect(page.locator("#title")).to_have_text("second question")
    expect(page.locator(".message")).to_have_count(2)

    # 5. Another user's conversation, or no conversation: "not found", a 404, nothing of theirs.
    def bobs_conversation() -> int:
        bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
        conversation = Conversation.objects.create(title="bob's secret plans", user=bob)
        ConversationMessage.objects.create(
            conversation=conversation, role="user", content="the vault code is 1234"
        )
        return conversation.pk

    bobs = off_the_loop(bobs_conversation)
    for path in (f"/chat/c/{bobs}", "/chat/c/987654321", "/chat/c/not-a-number"):
        response = page.goto(f"{server.url}{path}")
        assert response.status == 404, path
        expect(page.locator("#notice")).to_be_visible()
        expect(page.locator("#notice")).to_contain_text("not found")
        expect(page.locator(".message")).to_have_count(0)
        page.wait_for_selector("#send:not([disabled])")  # the page works all the same
        assert "secret plans" not in page.content() and "vault" not in page.content()
    page.context.close()


def test_stopped_answers_look_the_same_live_and_reopened(server: Any, chromium: Any) -> None:
    from playwright.sync_api import expect

    page = chromium.new_context(viewport=DESKTOP).new_page()
    log_in(page, server.url)

    # 1. Stopped mid-answer: the words shown are the words kept.
    page.select_option("#provider", "slowpoke")
    ask(page, " ".join(f"word{i}" for i in range(40)))
    page.wait_for_function(
        """() => {
            const answers = document.querySelectorAll(".message.assistant .bubble");
            return answers[answers.length - 1].textContent.split(" ").length >= 4;
        }"""
    )
    page.click("#stop")
    wait_settled(page, "cancelled", timeout=5_000)
    shown = bubble(page, 0)
    shown_meta = meta(page, 0)
    assert shown.startswith("Slow: word0") and "word39" not in shown
    assert "stopped" in shown_meta

    # 2. Stopped before the provider said anything: labelled, not an empty bubble.
    page.select_option("#provider", "silent")
    ask(page, "Are you there?")
    expect(page.locator("#stop")).to_be_visible()
    page.wait_for_timeout(300)  # the question is on its way upstream
    page.click("#stop")
    wait_settled(page, "cancelled", timeout=5_000)
    empty = last_answer(page)
    expect(empty.locator(".bubble")).to_have_text(STOPPED_EMPTY)
    expect(empty.locator(".bubble")).to_have_class(re.compile(r"\bempty-answer\b"))
    empty_meta = meta(page, 1)
    assert empty_meta.startswith("silent") and "stopped" in empty_meta

    def stored() -> list[tuple[str, str]]:
        rows = ConversationMessage.objects.filter(role="assistant").order_by("id")
        return [(row.status, row.content) for row in rows]

    assert off_the_loop(stored) == [("cancelled", shown), ("cancelled", "")]

    # 3. Reloaded: the same words, the same label, the same details.
    page.reload()
    expect(page.locator(".message.assistant")).to_have_count(2)
    assert bubble(page, 0) == shown
    assert meta(page, 0) == shown_meta
    expect(page.locator(".message.assistant .bubble").nth(1)).to_have_text(STOPPED_EMPTY)
    assert meta(page, 1) == empty_meta
    expect(page.locator("#provider")).to_have_value("silent")  # the last answer's
    page.context.close()


def test_conversations_are_renamed_in_place_and_searched(server: Any, chromium: Any) -> None:
    from playwright.sync_api import expect

    page = chromium.new_context(viewport=DESKTOP).new_page()
    searches: list[str] = []
    page.on(
        "request",
        lambda request: searches.append(request.url)
        if "/api/conversations/?q=" in request.url
        else None,
    )
    log_in(page, server.url)
    for question in ("pack for Lisbon", "banana bread recipe", "fix the bike"):
        page.click("#new-chat")
        ask(page, question)
        wait_settled(page)
    expect(page.locator("#conversations li")).to_have_count(3)

    # 1. Rename the current conversation in the list: the title follows everywhere.
    current = conversation_id(page.url)
    item = page.locator(f'#conversations li[data-id="{current}"]')
    item.locator("button.rename").click()
    field = item.locator("input.rename-field")
    expect(field).to_be_focused()
    field.fill("Bicycle repairs")
    field.press("Enter")
    expect(item.locator("button.open")).to_have_text("Bicycle repairs")
    expect(page.locator("#title")).to_have_text("Bicycle repairs")
    assert off_the_loop(lambda: Conversation.objects.get(pk=current).title) == "Bicycle repairs"

    # Escape leaves the title as it was; a title the server refuses is said so.
    item.locator("button.rename").click()
    item.locator("input.rename-field").fill("Never saved")
    item.locator("input.rename-field").press("Escape")
    expect(item.locator("button.open")).to_have_text("Bicycle repairs")
    item.locator("button.rename").click()
    item.locator("input.rename-field").evaluate("(f) => { f.maxLength = 1000; }")
    item.locator("input.rename-field").fill("x" * 201)
    item.locator("input.rename-field").press("Enter")
    expect(page.locator("#status")).to_contain_text("Must be at most 200 characters. (title)")
    expect(item.locator("button.open")).to_have_text("Bicycle repairs")
    assert off_the_loop(lambda: Conversation.objects.get(pk=current).title) == "Bicycle repairs"

    # 2. Search by message text, typed at a person's pace: one request once typing pauses.
    page.locator("#search").press_sequentially("BREAD", delay=40)
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations li button.open")).to_have_text("banana bread recipe")
    assert len(searches) == 1, searches
    # By title, after the rename; then nothing; then everything again.
    page.fill("#search", "bicycle")
    expect(page.locator("#conversations li button.open")).to_have_text(["Bicycle repairs"])
    page.fill("#search", "no such thing")
    expect(page.locator("#conversations li")).to_have_count(0)
    expect(page.locator("#conversations-empty")).to_have_text(
        "No conversation mentions “no such thing”."
    )
    page.fill("#search", "")
    expect(page.locator("#conversations li")).to_have_count(3)
    expect(page.locator("#conversations-empty")).to_be_hidden()
    page.screenshot(path=str(screenshot_path("chat-conversations-desktop.png")))

    # 3. The list drawn again keeps the items that did not change: a click pressed before a
    # refresh and released after it still opens its conversation; a title changed elsewhere
    # is redrawn, in the server's order.
    ids = [
        int(i)
        for i in page.locator("#conversations li").evaluate_all(
            "(items) => items.map((item) => { item.kept = true; return item.dataset.id; })"
        )
    ]
    oldest = ids[-1]
    off_the_loop(lambda: Conversation.objects.filter(pk=ids[0]).update(title="Renamed elsewhere"))
    page.locator(f'#conversations li[data-id="{oldest}"] button.open').hover()
    page.mouse.down()
    # A search that every conversation matches (each answer says "Echo: "): the same three
    # are drawn again while the pointer is still down.
    with page.expect_response(re.compile(r"/api/conversations/\?q=echo$")):
        page.fill("#search", "echo")
    page.wait_for_function(
        "(id) => document.querySelector(`#conversations li[data-id='${id}'] button.open`)"
        ".textContent === 'Renamed elsewhere'",
        arg=ids[0],
    )
    page.mouse.up()
    page.wait_for_url(f"{server.url}/chat/c/{oldest}")
    expect(page.locator("#title")).to_have_text("pack for Lisbon")
    drawn = page.locator("#conversations li").evaluate_all(
        "(items) => items.map((item) => [Number(item.dataset.id), item.kept === true])"
    )
    assert drawn == [[ids[0], False], [ids[1], True], [ids[2], True]], drawn
    page.context.close()


def test_failover_and_picker_switches_are_said(server: Any, chromium: Any) -> None:
    from playwright.sync_api import expect

    page = chromium.new_context(viewport=DESKTOP).new_page()
    log_in(page, server.url)

    # 1. openai's upstream is gone: echo answers, and the answer says so.
    page.select_option("#provider", "openai")
    ask(page, "Who answers?")
    wait_settled(page)
    answer = last_answer(page)
    expect(answer.locator(".bubble")).to_have_text("Echo: Who answers?")
    expect(answer.locator(".failover")).to_have_text(
        re.compile(r"^openai \([\w.-]+\) failed \(unavailable\); answered by echo$")
    )
    expect(answer.locator(".meta")).to_contain_text("echo · echo-1")
    first = conversation_id(page.url)
    said = answer.locator(".failover").text_content()
    page.reload()  # the notice is stored with the answer: the same after a reload
    expect(last_answer(page).locator(".failover")).to_have_text(said)

    # 2. A conversation answered by parrot, then parrot is disabled while the page is open.
    page.click("#new-chat")
    page.select_option("#provider", "parrot")
    ask(page, "Parrot, are you there?")
    wait_settled(page)
    parrots = conversation_id(page.url)
    expect(page.locator("#notice")).to_be_hidden()

    def disable_parrot() -> None:
        config = ProviderConfig.objects.get(name="parrot")
        provider_config_update(config=config, changes={"enabled": False})

    off_the_loop(disable_parrot)
    expect(page.locator('#provider option[value="parrot"]')).to_have_count(0, timeout=5_000)
    expect(page.locator("#provider")).to_have_value("echo")
    expect(page.locator("#notice-text")).to_have_text(
        "parrot was disabled or removed; the picker switched to echo."
    )
    page.click("#notice-close")
    expect(page.locator("#notice")).to_be_hidden()

    # 3. Reopening a conversation whose provider is gone says the picker switched.
    page.click(f'#conversations li[data-id="{first}"] button.open')
    expect(page.locator("#provider")).to_have_value("echo")
    expect(page.locator("#notice")).to_be_hidden()
    page.click(f'#conversations li[data-id="{parrots}"] button.open')
    page.wait_for_url(f"{server.url}/chat/c/{parrots}")
    expect(page.locator("#notice-text")).to_have_text(
        "This conversation was last answered by parrot, which is not available now;"
        " the picker switched to echo."
    )
    expect(page.locator("#provider")).to_have_value("echo")
    page.context.close()


def test_a_message_over_the_limits_is_refused_before_sending_and_kept(
    server: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    page = chromium.new_context(viewport=DESKTOP).new_page()
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    log_in(page, server.url)
    fill = "(text) => { const input = document.getElementById('input'); input.value = text; }"

    # 1. Over the character limit.
    too_long = "x" * 400_001
    page.evaluate(fill, too_long)
    page.click("#send")
    expect(page.locator("#status")).to_have_text(
        "This message is too long to send: 400,001 characters, and one message can have at"
        " most 400,000. Shorten it or split it into parts; your text is still in the box."
    )
    assert page.evaluate("document.getElementById('input').value.length") == 400_001
    # 2. Under it, but over the frame's bytes once encoded (control characters take six).
    page.evaluate(
        "(n) => { document.getElementById('input').value = '\\u0001'.repeat(n); }", 300_000
    )
    page.keyboard.press("End")
    page.locator("#input").press("Enter")
    expect(page.locator("#status")).to_contain_text("This message is too large to send:")
    expect(page.locator("#status")).to_contain_text("your text is still in the box.")
    assert page.evaluate("document.getElementById('input').value.length") == 300_000
    expect(page.locator(".message")).to_have_count(0)
    assert not [frame for frame in sent if '"type":"chat"' in frame], "nothing was sent"

    # 3. A long prompt within the limits (more than the old 32,000) goes and is answered.
    long_prompt = "y" * 40_000
    page.evaluate(fill, long_prompt)
    page.click("#send")
    wait_settled(page)
    expect(page.locator("#status")).to_have_text("")
    assert bubble(page, 0) == f"Echo: {long_prompt}"
    assert page.evaluate("document.getElementById('input').value") == ""
    page.context.close()


def test_conversations_on_a_phone(server: Any, chromium: Any) -> None:
    from playwright.sync_api import expect

    width = PHONE["viewport"]["width"]
    page = chromium.new_context(**PHONE).new_page()
    log_in(page, server.url)
    ask(page, "Hello from a phone, does this fit?")
    wait_settled(page)
    page.select_option("#provider", "silent")
    ask(page, "And this one I stop at once")
    expect(page.locator("#stop")).to_be_visible()
    page.wait_for_timeout(300)
    page.click("#stop")
    wait_settled(page, "cancelled", timeout=5_000)
    expect(last_answer(page).locator(".bubble")).to_have_text(STOPPED_EMPTY)
    address = page.url
    assert conversation_id(address)

    # Reopened by its URL: the same two answers, the picker as it was.
    page.goto(address)
    expect(page.locator(".message.assistant")).to_have_count(2)
    expect(last_answer(page).locator(".bubble")).to_have_text(STOPPED_EMPTY)
    expect(page.locator("#provider")).to_have_value("silent")
    page.screenshot(path=str(screenshot_path("chat-conversations-phone.png")))
    assert page.evaluate("document.documentElement.scrollWidth") <= width

    # The list on a phone: search and rename fit the screen and work by touch.
    page.click("#open-sidebar")
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    for selector in ("#search", "#conversations li button.open", "#conversations li button.rename"):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and 0 <= box["x"] and box["x"] + box["width"] <= width, selector
    page.locator("#conversations li button.rename").first.tap()
    page.locator("#conversations li input.rename-field").fill("Phone chat")
    page.locator("#conversations li input.rename-field").press("Enter")
    expect(page.locator("#conversations li button.open")).to_have_text(["Phone chat"])
    page.fill("#search", "phone")
    expect(page.locator("#conversations li")).to_have_count(1)
    page.fill("#search", "nothing like it")
    expect(page.locator("#conversations li")).to_have_count(0)
    page.screenshot(path=str(screenshot_path("chat-phone-search.png")))
    page.context.close()
