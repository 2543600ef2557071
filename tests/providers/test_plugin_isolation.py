"""Plugin code is isolated: whatever a plugin raises, in whichever contract method, stays its own.

A hostile plugin raises an arbitrary exception (not a ``ProviderError``)
quoting its own key, in one contract method at a time. The registry must
raise only ``ProviderError`` kinds with the key masked, keep Echo and the
other providers serving, and show the error in the provider's status and
health: through the registry itself, at start-up of a real server, and on
a reload through the API. Plugin files are imported off the event loop.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.base import PluginMetadata
from providers.errors import (
    PluginError,
    ProviderError,
    ProviderInitializationError,
)
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.runtime.manager import ModelManager
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.types import ChatMessage, ChatRequest, HealthStatus
from tests.conftest import LiveEcho

SECRET = "sk-hostile-0123456789abcdefXYZ"
EXCEPTIONS = [RuntimeError, KeyError, TypeError, AttributeError]
# Contract methods called while an instance is built: a plugin raising in one never serves.
AT_LOAD = ["__init__", "get_config_schema", "get_config_errors", "validate_config", "metadata"]
AT_LOAD += ["get_model_info", "initialize"]
# Called on a serving instance.
AT_RUNTIME = ["health_check", "list_models", "shutdown", "reload"]
METHODS = AT_LOAD + AT_RUNTIME


class HostileProvider(EchoProvider):
    """Echo with an ``api_key`` that raises ERROR, quoting the key, in method BROKEN."""

    broken: str | None = None
    error: type[Exception] = RuntimeError

    @classmethod
    def _maybe_raise(cls, method: str) -> None:
        if cls.broken == method:
            raise cls.error(f"{method} broke near {SECRET}")

    def __init__(self, config: dict[str, Any] | None = None, *, name: str | None = None) -> None:
        self._maybe_raise("__init__")
        super().__init__(config, name=name)

    def get_config_schema(self) -> dict[str, Any]:
        self._maybe_raise("get_config_schema")
        schema = super().get_config_schema()
        properties = {**schema["properties"], "api_key": {"type": "string", "writeOnly": True}}
        return {**schema, "properties": properties}

    def get_config_errors(self, config: dict[str, Any]) -> dict[str, list[str]]:
        self._maybe_raise("get_config_errors")
        return super().get_config_errors(config)

    def validate_config(self, config: dict[str, Any]) -> bool:
        self._maybe_raise("validate_config")
        return super().validate_config(config)

    @property
    def metadata(self) -> PluginMetadata:
        self._maybe_raise("metadata")
        return super().metadata

    def get_model_info(self, model_name: str) -> dict[str, Any] | None:
        self._maybe_raise("get_model_info")
        return super().get_model_info(model_name)

    async def initialize(self) -> None:
        self._maybe_raise("initialize")
        await super().initialize()

    async def health_check(self) -> HealthStatus:
        self._maybe_raise("health_check")
        return await super().health_check()

    async def list_models(self) -> list[str]:
        self._maybe_raise("list_models")
        return await super().list_models()

    async def shutdown(self) -> None:
        self._maybe_raise("shutdown")
        await super().shutdown()

    async def reload(self, new_config: dict[str, Any]) -> None:
        self._maybe_raise("reload")
        await super().reload(new_config)


def hostile(method: str | None, error: type[Exception] = RuntimeError) -> type[HostileProvider]:
    """Return a plugin class that raises ERROR in METHOD (None: a well-behaved one)."""
    return type("HostileProvider", (HostileProvider,), {"broken": method, "error": error})


def slug(method: str) -> str:
    return "broken-" + method.strip("_").replace("_", "-")


def broken_config(prefix: str = "Broken: ") -> dict[str, Any]:
    return {"api_key": SECRET, "prefix": prefix, "models": ["b-1"], "default_model": "b-1"}


def assert_masked(text: str | None, method: str, error: type[Exception]) -> None:
    """Assert TEXT names what the plugin raised where, and holds no window of its key."""
    assert text, "the error is shown"
    assert error.__name__ in text and method in text, text
    for start in range(len(SECRET) - 8 + 1):
        assert SECRET[start : start + 8] not in text, text


async def echo_answers(manager: ModelManager) -> str:
    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
    return (await manager.chat_completion(request, "echo")).content


# --- the registry ---------------------------------------------------------


@pytest.mark.parametrize("error", EXCEPTIONS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("method", METHODS)
async def test_a_plugin_raising_in_any_method_stays_its_own_failure(
    method: str, error: type[Exception]
) -> None:
    registry = ProviderRegistry()
    manager = ModelManager(registry)
    registry.register(EchoProvider, "echo")
    registry.register(hostile(method, error), "hostile")
    await registry.apply(ProviderSpec("echo", "echo", {"prefix": "Echo: "}, is_default=True))
    spec = ProviderSpec("broken", "hostile", broken_config())

    if method in AT_LOAD:
        with pytest.raises(ProviderError) as caught:
            await registry.apply(spec)
        # Only the typed error, never the plugin's own exception.
        assert type(caught.value) is ProviderInitializationError
        assert_masked(caught.value.message, method, error)
        assert "broken" not in registry
        assert_masked(registry.status("broken")["last_error"], method, error)
        # The build of a candidate fails the same way, and leaves the registry alone.
        with pytest.raises(ProviderInitializationError):
            await registry.build_candidate(spec)
    else:
        await registry.apply(spec)
        assert "broken" in registry
        if method == "health_check":
            checks = await registry.health_check_all(timeout=2)
            assert checks["broken"].available is False
            assert_masked(checks["broken"].error, method, error)
        elif method == "list_models":
            with pytest.raises(PluginError) as caught:
                await registry.list_models("broken")
            assert_masked(caught.value.message, method, error)
            assert_masked(registry.status("broken")["last_error"], method, error)
        elif method == "shutdown":
            # Replaced, then removed: the old instances' failing shutdowns hold up nothing.
            await registry.apply(ProviderSpec("broken", "hostile", broken_config("Again: ")))
            assert registry.get("broken").config["prefix"] == "Again: "
            assert await registry.unregister("broken")
            await registry.wait_closed()
        elif method == "reload":
            # The registry hot-swaps a fresh instance; the plugin's in-place hook is not needed.
            await registry.reload("broken", broken_config("Reloaded: "))
            assert registry.get("broken").config["prefix"] == "Reloaded: "

    # Whatever happened, the registry answers for everyone, and Echo serves.
    statuses = {name: registry.status(name) for name in ["echo", "broken"]}
    assert statuses["echo"]["loaded"] is True
    checks = await registry.health_check_all(timeout=2)
    assert checks["echo"].available is True
    assert await echo_answers(manager) == "Echo: hi"
    await registry.shutdown_all()


async def test_metadata_and_model_info_raising_after_load_are_plugin_errors_in_the_status() -> None:
    """A plugin that describes itself at load but raises later is reported, not fatal."""
    registry = ProviderRegistry()
    cls = hostile(None, KeyError)
    registry.register(cls, "hostile")
    await registry.apply(ProviderSpec("broken", "hostile", broken_config()))
    cls.broken = "get_model_info"
    with pytest.raises(PluginError) as caught:
        registry.model_info("broken", "b-1")
    assert_masked(caught.value.message, "get_model_info", KeyError)
    cls.broken = "metadata"
    with pytest.raises(PluginError):
        registry.metadata("broken")
    assert_masked(registry.status("broken")["last_error"], "metadata", KeyError)
    await registry.shutdown_all()


async def test_a_plugin_hanging_in_shutdown_holds_up_neither_a_swap_nor_a_stop() -> None:
    class Hanging(EchoProvider):
        async def shutdown(self) -> None:
            await asyncio.sleep(3600)

    registry = ProviderRegistry()
    registry.shutdown_timeout = 0.2
    registry.register(Hanging, "hanging")
    await registry.apply(ProviderSpec("slow", "hanging", {"prefix": "1"}))
    started = time.monotonic()
    await registry.apply(ProviderSpec("slow", "hanging", {"prefix": "2"}))
    assert time.monotonic() - started < 0.1  # the swap did not wait on the old instance
    assert registry.get("slow").config["prefix"] == "2"
    await registry.shutdown_all()  # given up on after the timeout
    assert time.monotonic() - started < 2


async def test_a_plugin_hanging_in_initialize_is_refused_in_time_and_the_old_one_serves() -> None:
    class HangingStart(EchoProvider):
        async def initialize(self) -> None:
            if self.config.get("prefix") == "hang":
                await asyncio.sleep(3600)

    registry = ProviderRegistry()
    registry.initialize_timeout = 0.2
    registry.shutdown_timeout = 0.2
    registry.register(HangingStart, "hangs")
    await registry.apply(ProviderSpec("slow", "hangs", {"prefix": "ok"}))
    started = time.monotonic()
    with pytest.raises(ProviderInitializationError, match="TimeoutError"):
        await registry.apply(ProviderSpec("slow", "hangs", {"prefix": "hang"}))
    assert time.monotonic() - started < 2
    assert registry.get("slow").config["prefix"] == "ok"
    with pytest.raises(ProviderInitializationError):
        await registry.build_candidate(ProviderSpec("slow", "hangs", {"prefix": "hang"}))
    await registry.shutdown_all()


@pytest.mark.slow
async def test_a_slow_plugin_import_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    """Discovery imports in a worker thread: a coroutine on the loop keeps ticking meanwhile."""
    (tmp_path / "sleepy_provider.py").write_text(
        textwrap.dedent(
            """
            import time

            from providers.plugins.echo_provider import EchoProvider

            time.sleep(1.0)  # a plugin doing blocking work at import


            class SleepyProvider(EchoProvider):
                pass
            """
        )
    )
    registry = ProviderRegistry()
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    results = await registry.discover_plugins(tmp_path)
    done.set()
    await ticker
    assert time.monotonic() - started >= 1.0  # the import did take its second
    assert [r.status for r in results] == ["registered"]
    assert "sleepy" in registry.plugins()  # registered back on the loop
    assert max(gaps) < 0.3, max(gaps)


# --- a real server: start-up and reload -------------------------------------


def _create_rows(plugins: dict[str, type[HostileProvider]]) -> None:
    """Write the provider rows straight to the database, as a restore would."""
    from providers.models import ProviderConfig

    ProviderConfig.objects.create(
        name="echo", plugin="echo", settings={"prefix": "Echo: "}, is_default=True
    )
    for name in plugins:
        settings = {k: v for k, v in broken_config().items() if k != "api_key"}
        row = ProviderConfig(name=name, plugin=name, settings=settings)
        row.secrets = {"api_key": SECRET}
        row.save()


def _chat_to_echo(url: str, key: str) -> None:
    response = httpx.post(
        f"{url}/chat",
        json={"prompt": "hi", "provider": "echo"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert "Echo: hi" in response.text


def _get(url: str, path: str, key: str) -> Any:
    response = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=20)
    assert response.status_code == 200, response.text
    assert SECRET[:12] not in response.text and SECRET[-12:] not in response.text
    return response.json()


@pytest.mark.slow
def test_broken_plugins_at_start_up_leave_echo_serving_and_show_their_errors(
    transactional_db: Any, chat_key: Any, admin_key: Any
) -> None:
    plugins = {
        slug(method): hostile(method, EXCEPTIONS[i % len(EXCEPTIONS)])
        for i, method in enumerate(METHODS)
    }
    for name, cls in plugins.items():
        runtime.registry.register(cls, name)
    _create_rows(plugins)

    server = LiveEcho().start()  # lifecycle start: discovery, then every row from the database
    try:
        _chat_to_echo(server.url, chat_key[1])
        health = _get(server.url, "/plugins/health?refresh=1", admin_key[1])
        assert health["echo"]["available"] is True
        for method in METHODS:
            name, error = slug(method), plugins[slug(method)].error
            status = _get(server.url, f"/plugins/{name}/status", admin_key[1])
            if method in AT_LOAD:
                assert name not in runtime.registry
                assert_masked(str(status), method, error)
                assert health[name]["available"] is False
                assert_masked(health[name]["error"], method, error)
            elif method == "health_check":
                assert health[name]["available"] is False
                assert_masked(health[name]["error"], method, error)
            elif method == "list_models":
                response = httpx.get(
                    f"{server.url}/plugins/{name}/models",
                    headers={"Authorization": f"Bearer {admin_key[1]}"},
                    timeout=10,
                )
                assert response.status_code == 502, response.text
                assert response.json()["error"]["type"] == "plugin_error"
                assert_masked(response.json()["error"]["message"], method, error)
                status = _get(server.url, f"/plugins/{name}/status", admin_key[1])
                assert_masked(str(status), method, error)
            else:  # shutdown, reload: not called while serving
                assert name in runtime.registry
        _chat_to_echo(server.url, chat_key[1])
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("method", AT_LOAD)
def test_a_plugin_breaking_on_reload_keeps_its_old_instance_and_echo_serving(
    method: str, transactional_db: Any, chat_key: Any, admin_key: Any
) -> None:
    cls = hostile(None, AttributeError)
    runtime.registry.register(cls, "victim")
    _create_rows({"victim": cls})
    server = LiveEcho().start()
    try:
        assert "victim" in runtime.registry
        cls.broken = method  # the plugin's code goes bad (a redeploy, an expired dependency)
        response = httpx.post(
            f"{server.url}/plugins/victim/reload",
            headers={"Authorization": f"Bearer {admin_key[1]}"},
            timeout=20,
        )
        assert response.status_code < 500, response.text
        assert SECRET[:12] not in response.text
        assert "victim" in runtime.registry  # the old instance keeps serving
        _chat_to_echo(server.url, chat_key[1])
        status = _get(server.url, "/plugins/victim/status", admin_key[1])
        assert_masked(str(status), method, AttributeError)
        health = _get(server.url, "/plugins/health", admin_key[1])
        assert health["echo"]["available"] is not False
        assert_masked(str(health["victim"]), method, AttributeError)
    finally:
        cls.broken = None
        server.stop()
