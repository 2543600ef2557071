"""The chat page's answers as sanitized Markdown, and its behaviour offline, in a real browser.

Debian's Chromium, driven by Playwright, against a live Echo (the fixtures of
``test_chat_page_browser``). The echo provider answers by echoing the message,
so a message written in Markdown comes back as an answer in Markdown, hostile
HTML included. For the offline part the browser talks to Echo through a TCP
relay in this process that can be cut (connections dropped, the port refusing
new ones, as when the server is gone) and restored on the same port.
Screenshots go to ``var/screenshots/``.
"""

# ruff: noqa: F811

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any

import pytest

from plugins_api.models import Conversation
from providers.config.services import provider_config_update
from providers.models import ProviderConfig
from tests.server_processes import free_port
from tests.test_chat_page_browser import (  # noqa: F401 - fixtures
    QUICK_ECHO_DELAY_MS,
    ask,
    chromium,
    last_answer,
    log_in,
    off_the_loop,
    providers,
    screenshot_path,
    server,
    wait_settled,
)

# Slow: a real browser against a live server.
pytestmark = pytest.mark.slow


@pytest.fixture
def echo_delay_ms() -> int:
    """The answers here are long (a word each pause): they stream, quickly."""
    return QUICK_ECHO_DELAY_MS


OFFLINE_NOTICE = "Connection lost; reconnecting…"
CODE = 'def greet(name):\n    return f"hello {name}"'
MARKDOWN_MESSAGE = f"""Markdown check
# A heading
Some **bold** words and `inline code`.
```python
{CODE}
```
<script>window.__pwned=1</script>
<img src=x onerror="window.__pwned=2">

A [safe link](https://example.com/docs) and a [bad one](javascript:window.__pwned=3)."""
HOSTILE_MESSAGE = """Hostile, with a [reference link][ref] defined at the end
[mixed case](JaVaScRiPt:window.__pwned=4) [data](data:text/html,<b>x</b>) [relative](/admin/)
![pixel](https://tracker.example/p.png?chat=secret) ![inline](javascript:window.__pwned=5)
<a href="https://evil.example/" onclick="window.__pwned=6">raw anchor</a>

<iframe src="javascript:window.__pwned=7"></iframe> <svg onload="window.__pwned=8"></svg>
<style>body { display: none }</style> <b onmouseover="window.__pwned=9">raw bold</b>

```python"><img src=x onerror=window.__pwned=10>
print("fenced")
```
- [x] done
- [ ] not yet

[ref]: https://example.com/ref"""
# What no answer's bubble may contain, whatever the model wrote.
FORBIDDEN_IN_ANSWERS = """() => {
    const bubbles = [...document.querySelectorAll(".message.assistant .bubble")];
    const bad = [];
    for (const bubble of bubbles) {
        for (const element of bubble.querySelectorAll("*")) {
            if (!["P", "BR", "HR", "H1", "H2", "H3", "H4", "H5", "H6", "STRONG", "EM", "DEL",
                  "CODE", "PRE", "BLOCKQUOTE", "UL", "OL", "LI", "A", "TABLE", "THEAD", "TBODY",
                  "TR", "TH", "TD", "SPAN", "DIV", "BUTTON"].includes(element.tagName)) {
                bad.push(element.outerHTML);
            }
            for (const attribute of element.attributes) {
                if (/^on/i.test(attribute.name) || attribute.name === "style" || attribute.name === "src") {
                    bad.push(`${element.tagName} ${attribute.name}`);
                }
            }
            if (element.tagName === "A") {
                const href = element.getAttribute("href") || "";
                if (!/^(https?:|mailto:)/i.test(href)) bad.push(`a href=${href}`);
                if (element.target !== "_blank" || element.rel !== "noopener noreferrer") {
                    bad.push(`a without target/rel: ${element.outerHTML}`);
                }
            }
        }
    }
    return bad;
}"""


class CuttableRelay:
    """A TCP relay from a loopback port to Echo whose line can be cut and restored.

    Cut: the listening socket closes (new connections are refused, as when no
    server runs) and every relayed connection is dropped. Restore: the same
    port listens again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.accepting: threading.Thread | None = None
        self.stopped = threading.Event()

    def restore(self) -> None:
        """Listen on the relay's port again (connect to Echo for each client)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.listener = listener
        self.stopped = threading.Event()
        self.accepting = threading.Thread(
            target=self._accept, args=(listener, self.stopped), name="relay-accept", daemon=True
        )
        self.accepting.start()

    def cut(self) -> None:
        """Refuse new connections and drop every relayed one."""
        self.stopped.set()
        if self.accepting is not None:
            self.accepting.join(timeout=5)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            self._drop(connection)

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                self._drop(client)
                continue
            upstream.settimeout(None)
            with self.lock:
                self.connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), name="relay-pump", daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with self.lock:
                    self.connections.discard(end)
                self._drop(end)

    @staticmethod
    def _drop(connection: socket.socket) -> None:
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        connection.close()


@pytest.fixture
def relay(server: Any) -> Any:
    """A cuttable relay in front of the live Echo, listening."""
    port = int(server.url.rsplit(":", 1)[1])
    line = CuttableRelay(port)
    line.restore()
    yield line
    line.cut()


def bubble_html(page: Any, index: int) -> str:
    return page.locator(".message.assistant .bubble").nth(index).inner_html()


def test_answers_render_as_sanitized_markdown_with_highlighted_code_and_copy(
    server: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    log_in(page, server.url)

    # Rendered while it streams: the bold is markup before the answer ends.
    ask(page, MARKDOWN_MESSAGE)
    page.wait_for_selector(".message.assistant.streaming .bubble strong", timeout=5_000)
    wait_settled(page, timeout=15_000)
    answer = last_answer(page).locator(".bubble")
    expect(answer.locator("h1")).to_have_text("A heading")
    expect(answer.locator("strong")).to_have_text("bold")
    expect(answer.locator("p code")).to_have_text("inline code")

    # The code block: highlighted as Python, under its language and a Copy button.
    code = answer.locator("pre code")
    expect(code).to_have_count(1)
    expect(code).to_have_class(re.compile(r"\bhljs\b.*\blanguage-python\b"))
    expect(code.locator("span.hljs-keyword").first).to_have_text("def")
    assert code.text_content() == CODE
    expect(answer.locator(".code-head .code-language")).to_have_text("python")
    before_copy = bubble_html(page, 0)

    # The model's HTML is text: shown literally, never run.
    expect(answer).to_contain_text("<script>window.__pwned=1</script>")
    expect(answer).to_contain_text('<img src=x onerror="window.__pwned=2">')
    assert answer.locator("script, img").count() == 0
    # Each on its own line, as written.
    expect(answer.locator("p", has_text="window.__pwned")).to_have_text(
        ["<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=2">']
    )
    links = answer.locator("a")
    expect(links).to_have_count(1)  # the javascript: one is only its text
    expect(links).to_have_attribute("href", "https://example.com/docs")
    expect(links).to_have_attribute("target", "_blank")
    expect(links).to_have_attribute("rel", "noopener noreferrer")
    expect(answer).to_contain_text("and a bad one.")
    answer.get_by_text("bad one").click()
    assert page.evaluate("window.__pwned") is None

    # The person's message stays plain text, exactly as typed.
    question = page.locator(".message.user .bubble").last
    assert question.text_content() == MARKDOWN_MESSAGE
    assert question.locator("*").count() == 0

    page.screenshot(path=str(screenshot_path("chat-markdown-desktop.png")))

    # Copy puts exactly the code on the clipboard.
    answer.locator(".code-head button.copy").click()
    expect(answer.locator(".code-head button.copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    expect(answer.locator(".code-head button.copy")).to_have_text("Copy", timeout=3_000)

    # More attacks: none becomes markup, an image becomes a link, task boxes are characters.
    ask(page, HOSTILE_MESSAGE)
    wait_settled(page, timeout=15_000)
    hostile = last_answer(page).locator(".bubble")
    assert page.evaluate(FORBIDDEN_IN_ANSWERS) == []
    assert page.evaluate("window.__pwned") is None
    expect(hostile).to_contain_text('<a href="https://evil.example/" onclick="window.__pwned=6">')
    expect(hostile).to_contain_text("<style>body { display: none }</style>")
    expect(hostile.locator("a")).to_have_text(["reference link", "Image: pixel"])
    expect(hostile.locator("a").first).to_have_attribute("href", "https://example.com/ref")
    expect(hostile.locator("a").last).to_have_attribute(
        "href", "https://tracker.example/p.png?chat=secret"
    )
    for text in ("mixed case", "data", "relative", "Image: inline", "raw anchor", "raw bold"):
        expect(hostile).to_contain_text(text)
    fenced = hostile.locator("pre code")
    expect(fenced).to_have_class("hljs")  # an unknown language: plain, its name not a class
    expect(fenced).to_have_text('print("fenced")')
    expect(hostile.locator(".code-language")).to_have_text("")
    expect(hostile.locator("li")).to_have_text(["\u2611 done", "\u2610 not yet"])
    expect(page.locator("body")).to_be_visible()  # the answer's <style> did not apply
    hostile_html = bubble_html(page, 1)

    # Reopened from storage, both answers are drawn exactly as they were live.
    conversation_id = off_the_loop(lambda: Conversation.objects.get().pk)
    page.reload()
    page.wait_for_selector("#send:not([disabled])")
    page.click(f'#conversations li[data-id="{conversation_id}"] button.open')
    expect(page.locator(".message.assistant")).to_have_count(2)
    assert bubble_html(page, 0) == before_copy
    assert bubble_html(page, 1) == hostile_html
    assert page.evaluate(FORBIDDEN_IN_ANSWERS) == []
    assert page.evaluate("window.__pwned") is None
    context.close()


def test_markdown_answers_fit_a_phone(server: Any, chromium: Any) -> None:
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
    long_line = "x = [" + ", ".join(str(n) for n in range(80)) + "]"
    ask(
        page,
        "Steps:\n1. Install\n2. Run **it**\n\n| key | value |\n| --- | --- |\n| a | 1 |\n"
        f"```python\nimport sys\n{long_line}\nprint(x)\n```",
    )
    wait_settled(page, timeout=20_000)
    answer = last_answer(page).locator(".bubble")
    expect(answer.locator("ol li")).to_have_count(2)
    expect(answer.locator("table td")).to_have_text(["a", "1"])
    expect(answer.locator("pre code.hljs.language-python")).to_have_count(1)
    page.screenshot(path=str(screenshot_path("chat-markdown-phone.png")))

    # The long code line scrolls inside its block; the page stays as wide as the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    block = answer.locator(".code-block").bounding_box()
    assert block is not None and block["x"] >= 0 and block["x"] + block["width"] <= width
    code = answer.locator("pre code")
    assert code.evaluate("(c) => c.scrollWidth > c.clientWidth")  # it scrolls, not overflows
    copy = answer.locator(".code-head button.copy").bounding_box()
    assert copy is not None and copy["x"] + copy["width"] <= width
    context.close()


def log_attempts(context: Any, page: Any) -> list[tuple[float, str]]:
    """Return a list the browser fills with (when, URL) of each request and socket handshake PAGE sends.

    The times are the browser's own (DevTools' ``wallTime``, seconds since the
    epoch, as ``time.time()``): Playwright delivers events to this thread only
    while it waits in a Playwright call, so a time taken on delivery can be
    late by however long the test spent elsewhere (an ORM write in a thread),
    which once made a backoff's gaps look shorter than they were.
    """
    log: list[tuple[float, str]] = []
    devtools = context.new_cdp_session(page)
    devtools.send("Network.enable")
    devtools.on(
        "Network.requestWillBeSent",
        lambda event: log.append((event["wallTime"], event["request"]["url"])),
    )
    devtools.on(
        "Network.webSocketWillSendHandshakeRequest",
        lambda event: log.append((event["wallTime"], event["request"].get("url", "websocket"))),
    )
    return log


def attempts_between(log: list[tuple[float, str]], start: float, end: float) -> list[float]:
    """Return the times of the requests and socket openings logged from START to END."""
    return sorted(at for at, _ in log if start <= at <= end)


def test_offline_notice_backoff_and_recovery(
    server: Any, relay: CuttableRelay, chromium: Any
) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    log_in(page, relay.url)
    expect(page.locator("#health")).not_to_have_class(re.compile(r"\boffline\b"))
    ask(page, "before the cut")
    wait_settled(page)

    log = log_attempts(context, page)

    # 1. The server goes away: the notice at once, a grey badge, no sending.
    cut_at = time.time()
    relay.cut()
    expect(page.locator("#status")).to_have_text(OFFLINE_NOTICE, timeout=1_000)
    noticed_after = time.time() - cut_at
    health = page.locator("#health")
    expect(health).to_have_class(re.compile(r"\boffline\b"))
    expect(health).to_have_text("no connection")
    assert float(health.evaluate("(h) => getComputedStyle(h).opacity")) < 1
    expect(page.locator("#send")).to_be_disabled()

    # While it is away, an admin disables parrot: the picker must learn it on reconnection.
    def disable_parrot() -> None:
        config = ProviderConfig.objects.get(name="parrot")
        provider_config_update(config=config, changes={"enabled": False})

    off_the_loop(disable_parrot)
    expect(page.locator('#provider option[value="parrot"]')).to_have_count(1)

    # 2. Over eight seconds: a handful of attempts, each wait longer than the one before.
    page.wait_for_timeout(8_000)
    attempts = attempts_between(log, cut_at, cut_at + 8.0)
    assert 2 <= len(attempts) <= 6, (noticed_after, log)
    gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:], strict=False)]
    assert all(later > 1.2 * earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
    assert attempts[0] - cut_at >= 0.3, (cut_at, log)  # not at once: about half a second
    expect(page.locator("#status")).to_have_text(OFFLINE_NOTICE)

    # 3. Back, and the browser says it is online: it reconnects at once, state restored.
    relay.restore()
    back_at = time.monotonic()
    context.set_offline(True)
    context.set_offline(False)  # the page gets "online"
    expect(page.locator("#status")).to_have_text("", timeout=2_000)
    assert time.monotonic() - back_at < 2.5
    expect(health).not_to_have_class(re.compile(r"\boffline\b"))
    expect(health).not_to_have_text("no connection")
    expect(page.locator('#provider option[value="parrot"]')).to_have_count(0)
    expect(page.locator("#send")).to_be_enabled()
    ask(page, "after the cut")
    wait_settled(page)
    expect(last_answer(page).locator(".bubble")).to_have_text("Echo: after the cut")

    # 4. The backoff started again from half a second: a short outage ends on its own.
    second_cut_at = time.time()
    relay.cut()
    expect(page.locator("#status")).to_have_text(OFFLINE_NOTICE, timeout=1_000)
    page.wait_for_timeout(1_000)
    assert len(attempts_between(log, second_cut_at, second_cut_at + 1.0)) >= 1, log
    relay.restore()
    expect(page.locator("#status")).to_have_text("", timeout=4_000)
    expect(health).not_to_have_class(re.compile(r"\boffline\b"))
    ask(page, "after the second cut")
    wait_settled(page)
    expect(last_answer(page).locator(".bubble")).to_have_text("Echo: after the second cut")
    context.close()


def test_a_login_that_expired_while_offline_leads_to_the_login_page(
    server: Any, relay: CuttableRelay, chromium: Any
) -> None:
    from django.contrib.sessions.models import Session
    from playwright.sync_api import expect

    page = chromium.new_context().new_page()
    log_in(page, relay.url)
    relay.cut()
    expect(page.locator("#status")).to_have_text(OFFLINE_NOTICE, timeout=1_000)
    off_the_loop(lambda: Session.objects.all().delete())
    relay.restore()
    page.wait_for_url(re.compile(r"/accounts/login/\?next=(/|%2F)$"), timeout=5_000)
    page.context.close()
