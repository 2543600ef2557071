"""ShoutProvider passes Echo's conformance kit and answers in capitals.

Run from the Echo project, with the package installed:
``.venv/bin/pytest examples/echo-shout-plugin/tests``.
"""

from __future__ import annotations

from echo_shout.provider import ShoutProvider

from providers.testing.conformance import ProviderConformance
from providers.types import ChatMessage, ChatRequest


class TestShoutConformance(ProviderConformance):
    plugin_class = ShoutProvider
    fake_class = None  # no upstream: the fault tests are skipped with a reason


async def test_it_shouts() -> None:
    provider = ShoutProvider({"exclamations": 2}, name="shout")
    await provider.initialize()
    answer = await provider.chat_completion(
        ChatRequest(messages=[ChatMessage(role="user", content="hello there")])
    )
    assert answer.content == "HELLO THERE!!"
