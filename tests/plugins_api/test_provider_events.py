"""One event per change: the chat page's provider list follows this process's registry.

The registry announces every provider applied, replaced or removed
(``registry.subscribe``); each open chat consumer subscribes while it is
connected and pushes the page a ``providers`` frame. No channel-layer group
and no polling are involved, so a page learns of exactly what its worker
serves, and a closed socket leaves nothing subscribed.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from echo_site.asgi import router as echo_router
from providers.runtime import process as runtime
from providers.runtime.registry import ProviderChange, ProviderRegistry, ProviderSpec

ORIGIN = (b"origin", b"http://testserver")


async def router(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echo's router, given the Host header a real handshake carries."""
    if not any(name == b"host" for name, _ in scope["headers"]):
        scope = {**scope, "headers": [(b"host", b"testserver"), *scope["headers"]]}
    await echo_router(scope, receive, send)


@pytest.fixture
def session_cookie(transactional_db: Any, django_user_model: Any) -> str:
    user = django_user_model.objects.create_user("alice", password="pw-alice-123")
    browser = Client()
    browser.force_login(user)
    return f"sessionid={browser.cookies['sessionid'].value}"


@pytest.fixture
async def page(session_cookie: str) -> AsyncIterator[WebsocketCommunicator]:
    """An open chat page with echo serving; its first frame (the list) already read."""
    await runtime.registry.apply(
        ProviderSpec("echo", "echo", {"prefix": "Echo: "}, is_default=True)
    )
    communicator = WebsocketCommunicator(
        router, "/ws/chat/", headers=[ORIGIN, (b"cookie", session_cookie.encode())]
    )
    connected, code = await communicator.connect(timeout=10)
    assert connected, code
    hello = await communicator.receive_json_from(timeout=10)
    assert [p["name"] for p in hello["providers"]] == ["echo"]
    yield communicator
    await communicator.disconnect()


def names(frame: dict[str, Any]) -> list[str]:
    assert frame["type"] == "providers"
    return [p["name"] for p in frame["providers"]]


async def test_an_applied_replaced_or_removed_provider_reaches_the_open_page(
    page: WebsocketCommunicator,
) -> None:
    assert runtime.registry.subscriber_count() == 1

    await runtime.registry.apply(ProviderSpec("newcomer", "echo", {"prefix": "New: "}))
    assert names(await page.receive_json_from(timeout=2)) == ["echo", "newcomer"]

    await runtime.registry.apply(
        ProviderSpec("newcomer", "echo", {"prefix": "New: "}, is_default=True)
    )
    frame = await page.receive_json_from(timeout=2)
    assert {p["name"]: p["is_default"] for p in frame["providers"]} == {
        "echo": False,
        "newcomer": True,
    }

    await runtime.registry.unregister("newcomer", reason="Disabled by admin.")
    assert names(await page.receive_json_from(timeout=2)) == ["echo"]


async def test_a_burst_of_changes_ends_with_the_full_list(page: WebsocketCommunicator) -> None:
    for i in range(20):
        await runtime.registry.apply(ProviderSpec(f"p{i:02d}", "echo", {}))
    frames = [await page.receive_json_from(timeout=2)]
    while len(names(frames[-1])) < 21:
        frames.append(await page.receive_json_from(timeout=2))
    assert names(frames[-1]) == ["echo", *[f"p{i:02d}" for i in range(20)]]
    # Coalesced: the changes made before the page's task ran went in one list.
    assert len(frames) < 20
    assert await page.receive_nothing(timeout=0.2)


async def test_a_closed_page_is_unsubscribed_and_later_changes_are_harmless(
    session_cookie: str,
) -> None:
    communicator = WebsocketCommunicator(
        router, "/ws/chat/", headers=[ORIGIN, (b"cookie", session_cookie.encode())]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    await communicator.receive_json_from(timeout=10)
    assert runtime.registry.subscriber_count() == 1
    await communicator.disconnect()
    assert runtime.registry.subscriber_count() == 0
    await runtime.registry.apply(ProviderSpec("after", "echo", {}))  # nobody to tell: no error


async def test_a_refused_connection_subscribes_nothing(transactional_db: Any) -> None:
    communicator = WebsocketCommunicator(router, "/ws/chat/", headers=[ORIGIN])
    connected, _ = await communicator.connect(timeout=10)
    assert not connected
    assert runtime.registry.subscriber_count() == 0


def test_the_second_broadcast_group_is_gone() -> None:
    """The pages' push no longer has a channel-layer group of its own (nor its signal wiring)."""
    from django.db.models.signals import post_save

    from providers.models import ProviderConfig

    assert importlib.util.find_spec("plugins_api.provider_push") is None
    receivers = [r for r in post_save._live_receivers(ProviderConfig)[0]]
    assert not [r for r in receivers if "provider_push" in getattr(r, "__module__", "")]


# --- the event itself -------------------------------------------------------


async def test_every_change_is_announced_with_whether_the_provider_serves() -> None:
    registry = ProviderRegistry()
    runtime.register_builtin_plugins(registry)
    seen: list[ProviderChange] = []
    registry.subscribe(seen.append)
    await registry.apply(ProviderSpec("a", "echo", {}))
    await registry.apply(ProviderSpec("a", "echo", {"prefix": "again "}))
    with pytest.raises(Exception):  # noqa: B017 - a failed apply changes nothing served
        await registry.apply(ProviderSpec("a", "echo", {"prefix": 3}))
    await registry.unregister("a")
    await registry.unregister("a")  # not live any more: nothing changes, nothing is announced
    assert [(c.name, c.serving, c.generation) for c in seen] == [
        ("a", True, 1),
        ("a", True, 2),
        ("a", False, 4),
    ]
    registry.unsubscribe(seen.append)
    await registry.apply(ProviderSpec("b", "echo", {}))
    assert len(seen) == 3


async def test_a_failing_callback_neither_fails_the_change_nor_silences_the_others() -> None:
    registry = ProviderRegistry()
    runtime.register_builtin_plugins(registry)
    seen: list[str] = []

    def broken(change: ProviderChange) -> None:
        raise RuntimeError("a subscriber's bug")

    async def later(change: ProviderChange) -> None:
        seen.append(f"async {change.name}")

    registry.subscribe(broken)
    registry.subscribe(lambda change: seen.append(change.name))
    registry.subscribe(later)
    await registry.apply(ProviderSpec("a", "echo", {}))
    await asyncio.sleep(0)
    assert "a" in registry
    assert seen == ["a", "async a"]


async def test_a_subscriber_that_is_gone_is_dropped_without_unsubscribe() -> None:
    """Bound methods are held weakly: a consumer that vanished leaks nothing."""
    registry = ProviderRegistry()
    runtime.register_builtin_plugins(registry)

    class Page:
        def __init__(self) -> None:
            self.changes: list[str] = []

        def on_change(self, change: ProviderChange) -> None:
            self.changes.append(change.name)

    page = Page()
    registry.subscribe(page.on_change)
    await registry.apply(ProviderSpec("a", "echo", {}))
    assert page.changes == ["a"]
    del page
    gc.collect()
    assert registry.subscriber_count() == 0
    await registry.apply(ProviderSpec("b", "echo", {}))
