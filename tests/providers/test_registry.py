"""ProviderRegistry: hot swap, failed reloads, discovery, health."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest

from providers.errors import (
    PluginLoadError,
    ProviderConfigError,
    ProviderInitializationError,
    ProviderNotFoundError,
)
from providers.plugins.echo_provider import EchoProvider
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.types import ChatMessage, ChatRequest


class TrackedEcho(EchoProvider):
    """Echo that records its shutdown, and can refuse to start."""

    shutdowns: list[str] = []

    async def initialize(self) -> None:
        if self.config["prefix"] == "refuse":
            raise RuntimeError("upstream said no")
        await super().initialize()

    async def shutdown(self) -> None:
        TrackedEcho.shutdowns.append(self.config["prefix"])


@pytest.fixture
def registry() -> ProviderRegistry:
    TrackedEcho.shutdowns = []
    registry = ProviderRegistry()
    registry.register(TrackedEcho, "echo", source="builtin")
    return registry


def hello() -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content="one two three four")])


async def test_hot_swap_lets_a_stream_in_flight_finish_on_the_old_instance(registry) -> None:
    await registry.apply(ProviderSpec("echo", "echo", {"prefix": "old:", "delay_ms": 20}))
    received: list[str] = []
    two_chunks_in = asyncio.Event()

    async def stream() -> None:
        async with registry.lease("echo") as provider:
            async for chunk in provider.chat_completion_stream(hello()):
                received.append(chunk.content)
                if len(received) == 2:
                    two_chunks_in.set()

    task = asyncio.create_task(stream())
    await two_chunks_in.wait()
    await registry.reload("echo", {"prefix": "new:", "delay_ms": 0})

    # The new config serves new requests at once...
    response = await registry.get("echo").chat_completion(hello())
    assert response.content == "new:one two three four"
    # ...while the old instance is still alive for the stream.
    assert TrackedEcho.shutdowns == []
    await task
    assert "".join(received) == "old:one two three four"
    await registry.wait_closed()
    assert TrackedEcho.shutdowns == ["old:"]


async def test_a_bad_config_is_rejected_and_the_old_instance_keeps_serving(registry) -> None:
    await registry.apply(ProviderSpec("echo", "echo", {"prefix": "good:"}))
    with pytest.raises(ProviderConfigError) as caught:
        await registry.reload("echo", {"prefix": "x", "delay_ms": -1, "colour": "red"})
    assert caught.value.errors == {
        "colour": ["Unknown setting."],
        "delay_ms": ["Must be at least 0."],
    }
    assert registry.get("echo").config["prefix"] == "good:"
    assert "delay_ms" in registry.last_error("echo")
    assert TrackedEcho.shutdowns == []


async def test_a_failing_initialize_keeps_the_old_instance(registry) -> None:
    await registry.apply(ProviderSpec("echo", "echo", {"prefix": "good:"}))
    with pytest.raises(ProviderInitializationError, match="upstream said no"):
        await registry.reload("echo", {"prefix": "refuse"})
    assert registry.get("echo").config["prefix"] == "good:"
    assert registry.status("echo")["last_error"].startswith("Initialization failed")
    # The half-built instance is cleaned up; the serving one is not.
    assert TrackedEcho.shutdowns == ["refuse"]


async def test_update_provider_config_merges(registry) -> None:
    await registry.apply(ProviderSpec("echo", "echo", {"prefix": "p:", "delay_ms": 5}))
    await registry.update_provider_config("echo", {"delay_ms": 7})
    assert registry.get("echo").config["prefix"] == "p:"
    assert registry.get("echo").config["delay_ms"] == 7


async def test_unregister_shuts_down_and_get_raises(registry) -> None:
    await registry.apply(ProviderSpec("echo", "echo", {"prefix": "bye"}))
    assert await registry.unregister("echo", reason="Disabled by admin.")
    await registry.wait_closed()
    assert TrackedEcho.shutdowns == ["bye"]
    with pytest.raises(ProviderNotFoundError):
        registry.get("echo")
    assert registry.status("echo") == {
        "name": "echo",
        "loaded": False,
        "plugin": None,
        "last_error": "Disabled by admin.",
    }


async def test_only_one_default(registry) -> None:
    await registry.apply(ProviderSpec("a", "echo", {}, is_default=True))
    await registry.apply(ProviderSpec("b", "echo", {}, is_default=True))
    assert registry.default_name == "b"
    assert registry.spec("a").is_default is False


async def test_unknown_plugin_waits_pending_until_discovered(registry, tmp_path: Path) -> None:
    with pytest.raises(ProviderNotFoundError):
        await registry.apply(ProviderSpec("late", "late", {}))
    assert "late" not in registry
    (tmp_path / "late_provider.py").write_text(
        PLUGIN_SOURCE.format(cls="LateProvider", reply="late")
    )
    await registry.discover_plugins(tmp_path)
    assert (await registry.get("late").chat_completion(hello())).content == "late"


def test_register_rejects_incomplete_classes(registry) -> None:
    class Half(EchoProvider):
        pass

    Half.__abstractmethods__ = frozenset({"chat_completion"})
    with pytest.raises(PluginLoadError, match="does not implement: chat_completion"):
        registry.register(Half, "half")
    with pytest.raises(PluginLoadError, match="does not extend"):
        registry.register(dict, "dict")  # type: ignore[arg-type]


PLUGIN_SOURCE = textwrap.dedent(
    """
    from providers.base import AbstractAIProvider, PluginMetadata
    from providers.types import ChatResponse, HealthStatus


    class {cls}(AbstractAIProvider):
        @property
        def metadata(self):
            return PluginMetadata(name="t", version="1")

        def get_config_schema(self):
            return {{"type": "object", "properties": {{}}}}

        async def initialize(self):
            pass

        async def chat_completion(self, request):
            return ChatResponse(content="{reply}", model="m")

        async def health_check(self):
            return HealthStatus(available=True)

        async def list_models(self):
            return ["m"]
    """
)


async def test_discovery_reports_good_and_broken_files(registry, tmp_path: Path) -> None:
    (tmp_path / "custom_ai_provider.py").write_text(
        PLUGIN_SOURCE.format(cls="CustomAiProvider", reply="v1")
    )
    (tmp_path / "broken_provider.py").write_text("def nope(:\n")
    (tmp_path / "wrongname_provider.py").write_text(
        PLUGIN_SOURCE.format(cls="SomethingElse", reply="x")
    )
    (tmp_path / "incomplete_provider.py").write_text(
        "from providers.base import AbstractAIProvider\n"
        "class IncompleteProvider(AbstractAIProvider):\n    pass\n"
    )
    (tmp_path / "importfail_provider.py").write_text("import does_not_exist_anywhere\n")
    (tmp_path / "echo_provider.py").write_text(PLUGIN_SOURCE.format(cls="EchoProvider", reply="x"))
    (tmp_path / "notes.py").write_text("raise SystemExit('never imported')\n")

    report = {r.name: r for r in await registry.discover_plugins(tmp_path)}

    assert report["custom_ai"].status == "registered"
    assert report["custom_ai"].class_name == "CustomAiProvider"
    assert (
        report["broken"].status == "failed" and "Syntax error at line 1" in report["broken"].error
    )
    assert "no class WrongnameProvider" in report["wrongname"].error
    assert "does not implement" in report["incomplete"].error
    assert "ModuleNotFoundError" in report["importfail"].error
    assert "taken by a built-in" in report["echo"].error
    assert "notes" not in report
    assert registry.plugin("custom_ai").__name__ == "CustomAiProvider"


async def test_rediscovery_swaps_changed_code_into_live_providers(registry, tmp_path: Path) -> None:
    plugin_file = tmp_path / "custom_provider.py"
    plugin_file.write_text(PLUGIN_SOURCE.format(cls="CustomProvider", reply="v1"))
    await registry.discover_plugins(tmp_path)
    await registry.apply(ProviderSpec("custom", "custom", {}))
    assert (await registry.get("custom").chat_completion(hello())).content == "v1"

    report = await registry.discover_plugins(tmp_path)
    assert [r.status for r in report] == ["unchanged"]

    plugin_file.write_text(PLUGIN_SOURCE.format(cls="CustomProvider", reply="v2"))
    report = await registry.discover_plugins(tmp_path)
    assert [r.status for r in report] == ["updated"]
    assert (await registry.get("custom").chat_completion(hello())).content == "v2"


async def test_rediscovery_runs_the_code_it_read_not_a_cached_compilation(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit of the same size within the same second: Python's bytecode cache cannot tell.

    Its ``__pycache__`` entry is checked by the source's size and modification
    time in seconds; discovery compares the file's whole content, and must run
    the content it compared.
    """
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as a server usually runs
    plugin_file = tmp_path / "custom_provider.py"
    plugin_file.write_text(PLUGIN_SOURCE.format(cls="CustomProvider", reply="v1"))
    stamp = plugin_file.stat().st_mtime_ns
    await registry.discover_plugins(tmp_path)
    await registry.apply(ProviderSpec("custom", "custom", {}))
    assert (await registry.get("custom").chat_completion(hello())).content == "v1"

    plugin_file.write_text(PLUGIN_SOURCE.format(cls="CustomProvider", reply="v2"))
    os.utime(plugin_file, ns=(stamp, stamp))  # the same second, the same size
    report = await registry.discover_plugins(tmp_path)
    assert [r.status for r in report] == ["updated"]
    assert (await registry.get("custom").chat_completion(hello())).content == "v2"


async def test_discovery_of_a_missing_directory_is_reported(registry, tmp_path: Path) -> None:
    report = await registry.discover_plugins(tmp_path / "absent")
    assert report[0].status == "failed" and report[0].error == "Not a directory."


async def test_health_check_all_runs_concurrently_and_contains_failures(registry) -> None:
    class Slow(EchoProvider):
        async def health_check(self):
            await asyncio.sleep(5)

    class Broken(EchoProvider):
        async def health_check(self):
            raise ValueError("boom")

    registry.register(Slow, "slow")
    registry.register(Broken, "broken")
    await registry.apply(ProviderSpec("echo", "echo", {}))
    await registry.apply(ProviderSpec("slow", "slow", {}))
    await registry.apply(ProviderSpec("broken", "broken", {}))
    statuses = await registry.health_check_all(timeout=0.2)
    assert statuses["echo"].available
    assert not statuses["slow"].available and "timed out" in statuses["slow"].error
    assert statuses["broken"].error == "ValueError: boom"


async def test_status_masks_secrets(registry) -> None:
    class Keyed(EchoProvider):
        def get_config_schema(self):
            schema = super().get_config_schema()
            schema["properties"]["api_key"] = {"type": "string", "writeOnly": True}
            return schema

    registry.register(Keyed, "keyed")
    await registry.apply(ProviderSpec("keyed", "keyed", {"api_key": "sk-live-1234567890abcd"}))
    status = registry.status("keyed")
    assert status["config"]["api_key"] == "sk-...abcd"
    assert "1234567890" not in str(status)


async def test_a_lease_counts_while_held_even_when_its_block_raises_and_is_held_once(
    registry,
) -> None:
    await registry.apply(ProviderSpec("echo", "echo", {"prefix": "one:"}))
    lease = registry.lease("echo")
    with pytest.raises(ValueError):
        async with lease as provider:
            assert provider is registry.get("echo")
            await registry.reload("echo", {"prefix": "two:"})  # the held instance is retired...
            assert TrackedEcho.shutdowns == []  # ...but not shut down while leased
            raise ValueError("the request failed")
    await registry.wait_closed()
    assert TrackedEcho.shutdowns == ["one:"]  # the lease was given back all the same
    async with lease:
        with pytest.raises(RuntimeError, match="held once"):
            async with lease:  # a lease object is one hold at a time
                pass
    with pytest.raises(ProviderNotFoundError):
        async with registry.lease("nobody"):
            pass
