"""One runtime per process (``providers/runtime/process_runtime.py``), reached through ``process``.

What is proved: the parts read through ``providers.runtime.process`` are the
installed runtime's, whichever way they are imported; the process's runtime
is built once, with the built-in plugins; two runtimes share no state; and
each part is built with what the runtime hands it (its registry, its clock).
"""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync

from providers.plugins import BUILTIN_PLUGINS
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import config_sync
from providers.runtime import process as runtime
from providers.runtime.config_sync import Served
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from tests.fake_time import FakeClock, RecordedSleep


class CountingProvider(EchoProvider):
    """Echo, counting how often its live model list is asked for."""

    list_calls = 0

    async def list_models(self) -> list[str]:
        type(self).list_calls += 1
        return ["counted-1"]


def test_the_parts_read_through_the_module_are_the_installed_runtimes(clean_runtime) -> None:
    other = runtime.build_runtime()
    assert runtime.current() is clean_runtime
    with runtime.installed(other):
        assert runtime.current() is other
        for part in runtime.RUNTIME_PARTS:
            assert getattr(runtime, part) is getattr(other, part), part
        # Imported by name inside a function, as some call sites do: still the installed one.
        from providers.runtime.process import manager, registry

        assert (registry, manager) == (other.registry, other.manager)
    assert runtime.current() is clean_runtime
    assert runtime.registry is clean_runtime.registry


def test_a_part_cannot_be_replaced_by_a_module_global() -> None:
    # A global would keep serving after ``install``: the module refuses to hold one.
    with pytest.raises(AttributeError):
        runtime.registry = ProviderRegistry()


def test_the_process_runtime_is_built_once_with_the_built_in_plugins(clean_runtime) -> None:
    previous = runtime.install(None)
    built = []
    try:
        threads = [
            threading.Thread(target=lambda: built.append(runtime.current())) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(built) == 8
        assert all(one is built[0] for one in built)  # threads racing the first use get one runtime
        assert built[0] is not clean_runtime
        assert set(built[0].registry.plugins()) == set(BUILTIN_PLUGINS)
    finally:
        runtime.install(previous)


def test_two_runtimes_share_no_state() -> None:
    first, second = runtime.build_runtime(), runtime.build_runtime()
    first.key_cache["digest"] = (0.0, None)
    first.config_sync_state.served["echo"] = Served(3, "digest", True, None)
    async_to_sync(first.registry.apply)(ProviderSpec("echo", "echo", {}))
    first.manager.breaker("echo").record_failure("down")

    with runtime.installed(second):
        assert config_sync.served_revision("echo") is None
        assert "digest" not in runtime.key_cache
        assert "echo" not in runtime.registry
        assert runtime.metric_labels.provider("echo") == "other"  # not live in this runtime
        assert runtime.manager.breaker("echo").consecutive_failures == 0
    with runtime.installed(first):
        assert config_sync.served_revision("echo") == 3
        assert runtime.metric_labels.provider("echo") == "echo"
    async_to_sync(first.registry.shutdown_all)()


def test_every_part_is_built_on_the_runtimes_registry() -> None:
    registry = ProviderRegistry()
    built = runtime.build_runtime(registry=registry)
    assert built.registry is registry
    assert built.manager.registry is registry
    assert built.monitor.registry is registry
    assert built.monitor.manager is built.manager
    assert set(registry.plugins()) == set(BUILTIN_PLUGINS)


def test_a_runtime_with_a_fake_clock_times_its_breakers_and_model_lists_by_it(settings) -> None:
    settings.ECHO_MODEL_LIST_CACHE_SECONDS = 30
    clock = FakeClock()
    built = runtime.build_runtime(clock=clock, sleep=RecordedSleep())
    built.registry.register(CountingProvider, "counting")
    CountingProvider.list_calls = 0

    async def scenario() -> tuple[list[list[str]], list[int]]:
        await built.registry.apply(ProviderSpec("counting", "counting", {}))
        lists, calls = [await built.model_lists.models("counting", timeout=5)], []
        clock.now += 29  # still within the cache's time
        lists.append(await built.model_lists.models("counting", timeout=5))
        calls.append(CountingProvider.list_calls)
        clock.now += 2  # past it: asked again
        lists.append(await built.model_lists.models("counting", timeout=5))
        calls.append(CountingProvider.list_calls)
        await built.registry.shutdown_all()
        return lists, calls

    lists, calls = async_to_sync(scenario)()
    assert lists == [["counted-1"]] * 3
    assert calls == [1, 2]

    breaker = built.manager.breaker("counting")
    for _ in range(breaker.failure_threshold):
        breaker.record_failure("down")
    assert breaker.state == "open"
    clock.now += breaker.cooldown_seconds
    assert breaker.state == "half_open"
