"""Model groups: a public model name served by deployments, picked by the group's strategy.

The strategies and the failover run on in-process providers (echo plugins
under several names), so that thousands of calls take a second; the write
service, its audit, the admin, the REST API, the YAML import and the hot
reload run on PostgreSQL with the test process's runtime on a serving loop.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from asgiref.sync import async_to_sync

from providers.errors import ProviderConfigError, ProviderError, ProviderUnavailableError
from providers.plugins.echo_provider import EchoProvider
from providers.runtime.manager import ModelManager, Route
from providers.runtime.model_groups import Deployment, ModelGroupSpec, ModelGroupTable
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.types import ChatMessage, ChatRequest
from tests.fake_time import FakeClock, RecordedSleep


class DownProvider(EchoProvider):
    """Fails every call with a retryable error, counting the calls."""

    calls = 0

    async def chat_completion(self, request):
        type(self).calls += 1
        raise ProviderUnavailableError("upstream 503", status_code=503)


class SlowProvider(EchoProvider):
    """Answers after ``delay`` real seconds (its ``delay_ms`` setting)."""

    async def chat_completion(self, request):
        await asyncio.sleep(self.config["delay_ms"] / 1000)
        return await super().chat_completion(request)


def ask(model: str | None = "fast", text: str = "hi") -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], model=model)


def group(name: str, strategy: str, *deployments: tuple[str, str, int]) -> ModelGroupSpec:
    return ModelGroupSpec(name, strategy, tuple(Deployment(*d) for d in deployments))


async def echo_registry(*names: str, **extra: dict) -> ProviderRegistry:
    registry = ProviderRegistry()
    registry.register(EchoProvider, "echo", source="builtin")
    registry.register(DownProvider, "down")
    registry.register(SlowProvider, "slow")
    for name in names:
        plugin = "down" if name.startswith("down") else "echo"
        config = {"prefix": f"{name}: ", "models": [f"{name}-1"], **extra.get(name, {})}
        await registry.apply(ProviderSpec(name, plugin, config))
    return registry


# --- strategies ----------------------------------------------------------------------


async def test_weighted_3_to_1_splits_1000_calls_75_25() -> None:
    registry = await echo_registry("a", "b")
    manager = ModelManager(
        registry, sleep=RecordedSleep(), rng=random.Random(18), clock=FakeClock()
    )
    manager.groups.replace([group("fast", "weighted", ("a", "a-1", 3), ("b", "b-1", 1))])
    answered = Counter()
    for _ in range(1000):
        response = await manager.chat_completion(ask())
        answered[(response.provider, response.model)] += 1
        assert response.metadata["model_group"] == "fast"
    assert set(answered) == {("a", "a-1"), ("b", "b-1")}
    share = answered[("a", "a-1")] / 1000
    assert 0.70 <= share <= 0.80, answered
    # Streams pick the same way.
    streamed = Counter()
    for _ in range(200):
        chunks = [c async for c in manager.chat_completion_stream(ask())]
        streamed[chunks[-1].metadata["provider"]] += 1
        assert chunks[-1].metadata["model_group"] == "fast"
    assert 0.65 <= streamed["a"] / 200 <= 0.85, streamed
    await registry.shutdown_all()


async def test_weighted_order_tries_the_rest_by_weight_too() -> None:
    table = ModelGroupTable()
    spec = group("g", "weighted", ("a", "m", 1), ("b", "m", 1), ("c", "m", 8))
    rng = random.Random(3)
    orders = [[d.provider for d in table.order(spec, lambda d: True, rng)] for _ in range(4000)]
    # c is drawn first 80% of the time; when it is not, it is second 8 times in 9.
    firsts = Counter(order[0] for order in orders)
    assert 0.77 <= firsts["c"] / 4000 <= 0.83, firsts
    others = [order for order in orders if order[0] != "c"]
    assert 0.83 <= sum(order[1] == "c" for order in others) / len(others) <= 0.95
    # A deployment that is not usable (its breaker open) goes last, whatever its weight.
    assert [d.provider for d in table.order(spec, lambda d: d.provider != "c", rng)][-1] == "c"


async def test_least_busy_goes_to_the_deployment_with_fewest_calls_in_flight() -> None:
    registry = await echo_registry("a", "b")
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(1), clock=FakeClock())
    manager.groups.replace([group("fast", "least_busy", ("a", "a-1", 1), ("b", "b-1", 1))])
    # Two streams held open after their first chunk: each holds its deployment.
    streams = []
    for _ in range(2):
        stream = manager.chat_completion_stream(ask(text="one two three"))
        first = await anext(stream)
        streams.append((stream, first.metadata["provider"]))
    held = Counter(provider for _, provider in streams)
    assert held == {"a": 1, "b": 1}  # the second went to the idle one
    # A third call held on a: b is now the least busy.
    third = manager.chat_completion_stream(ask(text="one two three"))
    first = await anext(third)
    streams.append((third, first.metadata["provider"]))
    busiest = streams[-1][1]
    idle = "b" if busiest == "a" else "a"
    for _ in range(5):
        assert (await manager.chat_completion(ask())).provider == idle
    assert manager.groups.in_flight(Deployment(busiest, f"{busiest}-1")) == 2
    for stream, _ in streams:
        await stream.aclose()
    assert manager.groups.in_flight(Deployment("a", "a-1")) == 0
    assert manager.groups.in_flight(Deployment("b", "b-1")) == 0
    await registry.shutdown_all()


async def test_lowest_latency_explores_unknown_deployments_then_prefers_the_fastest() -> None:
    registry = await echo_registry()
    registry.register(SlowProvider, "slow")
    await registry.apply(ProviderSpec("slow", "slow", {"prefix": "slow: ", "delay_ms": 60}))
    await registry.apply(ProviderSpec("quick", "echo", {"prefix": "quick: "}))
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(2))
    manager.groups.replace(
        [group("fast", "lowest_latency", ("slow", "echo-1", 1), ("quick", "echo-1", 1))]
    )
    first_two = [(await manager.chat_completion(ask())).provider for _ in range(2)]
    assert set(first_two) == {"slow", "quick"}  # each unknown one tried once
    later = Counter([(await manager.chat_completion(ask())).provider for _ in range(10)])
    assert later == {"quick": 10}
    slow = manager.groups.latency(Deployment("slow", "echo-1"))
    quick = manager.groups.latency(Deployment("quick", "echo-1"))
    assert slow is not None and quick is not None and slow > quick
    await registry.shutdown_all()


async def test_a_failing_deployment_opens_its_breaker_and_the_group_keeps_answering() -> None:
    DownProvider.calls = 0
    registry = await echo_registry(
        "down",
        "b",
        "c",
        down={"max_retries": 0, "breaker_failure_threshold": 3, "breaker_cooldown_seconds": 60},
    )
    await registry.apply(
        ProviderSpec(
            "down",
            "down",
            {"max_retries": 0, "breaker_failure_threshold": 3, "breaker_cooldown_seconds": 60},
            fallbacks=("c",),
        )
    )
    clock = FakeClock()
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(4), clock=clock)
    manager.groups.replace([group("fast", "weighted", ("down", "echo-1", 3), ("b", "b-1", 1))])
    # The group's other deployment comes before the provider-level fallback.
    routes = manager.routes(ask())
    assert [r.provider for r in routes][-1] == "c"
    assert {r.provider for r in routes[:2]} == {"down", "b"}
    answered = Counter()
    for _ in range(300):
        response = await manager.chat_completion(ask())
        answered[response.provider] += 1
    assert answered == {"b": 300}
    assert manager.breaker("down").state == "open"
    assert DownProvider.calls == 3  # then skipped: no traffic while open
    # An open breaker's deployment goes last, recorded as skipped, never called.
    assert manager.routes(ask())[0] == Route("b", "b-1", "fast")
    # After the cooldown a probe goes; the upstream is still down, so it opens again.
    clock.now += 61
    for _ in range(20):
        assert (await manager.chat_completion(ask())).provider == "b"
    assert DownProvider.calls == 4
    await registry.shutdown_all()


async def test_the_route_filter_keeps_a_key_on_the_deployments_it_may_use() -> None:
    registry = await echo_registry("a", "b")
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(9), clock=FakeClock())
    manager.groups.replace([group("fast", "weighted", ("a", "a-1", 9), ("b", "b-1", 1))])

    def only_b(provider: str, model: str | None) -> bool:
        return provider == "b"

    for _ in range(30):
        assert (await manager.chat_completion(ask(), allow=only_b)).provider == "b"
    assert manager.public_model_groups(only_b) == ["fast"]
    assert manager.public_model_groups(lambda p, m: False) == []
    assert manager.public_model_groups() == ["fast"]
    await registry.shutdown_all()


async def test_a_group_name_comes_after_the_provider_prefix_and_before_the_catalogue() -> None:
    registry = await echo_registry("a", "b")
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(9), clock=FakeClock())
    # A group may take a served model's name: the alias wins over the catalogue.
    manager.groups.replace([group("a-1", "weighted", ("b", "b-1", 1))])
    assert manager.resolve(ask("a-1")) == Route("b", "b-1", "a-1")
    assert manager.resolve(ask("a/a-1")) == Route("a", "a-1")
    # A typo of a group's name is hinted.
    manager.groups.replace([group("fast-chat", "weighted", ("b", "b-1", 1))])
    with pytest.raises(Exception, match="fast-chat"):
        await manager.chat_completion(ask("fast-chta"))
    await registry.shutdown_all()


def test_a_row_edited_in_sql_cannot_break_the_table() -> None:
    class Row:
        name = "g"
        strategy = "nonsense"
        deployments = [
            {"provider": "a", "model": "m", "weight": 2},
            {"provider": "b", "model": "m", "weight": 0},
            {"provider": 5, "model": "m"},
            "junk",
            {"provider": "c", "model": "m", "weight": True},
        ]

    spec = ModelGroupSpec.from_row(Row())
    assert spec.strategy == "weighted"
    assert spec.deployments == (Deployment("a", "m", 2),)


# --- the write service, its validation and audit -----------------------------------


@pytest.fixture
def providers_configured(transactional_db, serving_loop):
    from providers.config.services import provider_config_create

    provider_config_create(name="a", plugin="echo", settings={"prefix": "A: ", "models": ["a-1"]})
    provider_config_create(name="b", plugin="echo", settings={"prefix": "B: ", "models": ["b-1"]})


def chat(model: str = "fast") -> str:
    from providers.runtime import process as runtime

    async def call():
        return await runtime.manager.chat_completion(ask(model))

    return runtime.run_in_serving_loop(call).provider


HOSTILE_GROUPS = [
    ({"name": "bad name"}, "name"),
    ({"name": "x" * 59}, "name"),
    ({"name": "nul\x00name"}, "name"),
    ({"name": 12}, "name"),
    ({"name": "history"}, "name"),
    ({"name": "a/clash"}, "name"),
    ({"strategy": "round_robin"}, "strategy"),
    ({"strategy": ["weighted"]}, "strategy"),
    ({"enabled": "yes"}, "enabled"),
    ({"deployments": "a/a-1"}, "deployments"),
    ({"deployments": []}, "deployments"),
    ({"deployments": [{"provider": "a", "model": f"m{i}"} for i in range(21)]}, "deployments"),
    ({"deployments": ["a/a-1"]}, "deployments.0"),
    ({"deployments": [{"provider": "nope", "model": "m"}]}, "deployments.0.provider"),
    ({"deployments": [{"provider": "A B", "model": "m"}]}, "deployments.0.provider"),
    ({"deployments": [{"provider": "a", "model": ""}]}, "deployments.0.model"),
    ({"deployments": [{"provider": "a", "model": "x" * 201}]}, "deployments.0.model"),
    ({"deployments": [{"provider": "a", "model": "m\x00"}]}, "deployments.0.model"),
    ({"deployments": [{"provider": "a", "model": {"deep": [1]}}]}, "deployments.0.model"),
    ({"deployments": [{"provider": "a", "model": "m", "weight": 0}]}, "deployments.0.weight"),
    ({"deployments": [{"provider": "a", "model": "m", "weight": -3}]}, "deployments.0.weight"),
    ({"deployments": [{"provider": "a", "model": "m", "weight": "3"}]}, "deployments.0.weight"),
    ({"deployments": [{"provider": "a", "model": "m", "weight": True}]}, "deployments.0.weight"),
    ({"deployments": [{"provider": "a", "model": "m", "weight": 1.5}]}, "deployments.0.weight"),
    ({"deployments": [{"provider": "a", "model": "m", "weight": 1001}]}, "deployments.0.weight"),
    ({"deployments": [{"provider": "a", "model": "m", "cost": 1}]}, "deployments.0.cost"),
    (
        {"deployments": [{"provider": "a", "model": "m"}, {"provider": "a", "model": "m"}]},
        "deployments.1.model",
    ),
]


@pytest.mark.parametrize(("change", "field"), HOSTILE_GROUPS)
def test_bad_groups_are_refused_naming_the_field_and_change_nothing(
    providers_configured, change, field
) -> None:
    from providers.config.services import model_group_create
    from providers.models import ModelGroup, ProviderConfigChange

    arguments = {
        "name": "fast",
        "strategy": "weighted",
        "deployments": [{"provider": "a", "model": "a-1"}],
        **change,
    }
    with pytest.raises(ProviderConfigError) as caught:
        model_group_create(**arguments)
    assert caught.value.field == field, caught.value.errors
    assert caught.value.http_status == 400
    assert not ModelGroup.objects.exists()
    assert not ProviderConfigChange.objects.filter(provider_name__startswith="group:").exists()


def test_groups_are_audited_and_served_at_once(providers_configured) -> None:
    from providers.config.services import (
        model_group_create,
        model_group_delete,
        model_group_update,
    )
    from providers.models import ModelGroup, ProviderConfigChange
    from providers.runtime import process as runtime

    created = model_group_create(
        name="fast", deployments=[{"provider": "a", "model": "a-1", "weight": 2}]
    )
    assert created.deployments == [{"provider": "a", "model": "a-1", "weight": 2}]
    assert chat() == "a"
    model_group_update(
        group=created,
        changes={"deployments": [{"provider": "b", "model": "b-1"}], "strategy": "least_busy"},
    )
    assert chat() == "b"
    assert runtime.manager.groups.get("fast").strategy == "least_busy"
    # A change that changes nothing is neither saved nor audited.
    before = ModelGroup.objects.get(name="fast").revision
    model_group_update(group=created, changes={"strategy": "least_busy"})
    assert ModelGroup.objects.get(name="fast").revision == before
    model_group_update(group=created, changes={"enabled": False})
    assert runtime.manager.groups.get("fast") is None
    with pytest.raises(ProviderConfigError) as caught:
        model_group_update(group=created, changes={"name": "other"})
    assert caught.value.field == "name"
    model_group_delete(group=ModelGroup.objects.get(name="fast"))

    trail = list(
        ProviderConfigChange.objects.filter(provider_name="group:fast").order_by("changed_at", "id")
    )
    assert [entry.action for entry in trail] == ["created", "updated", "disabled", "deleted"]
    assert [c["field"] for c in trail[1].changes] == ["strategy", "deployments"]
    assert trail[1].changes[1]["before"] == [{"provider": "a", "model": "a-1", "weight": 2}]
    assert all(entry.source == "system" for entry in trail)


def test_a_group_edited_in_sql_reaches_the_worker_by_the_repair_pass(providers_configured) -> None:
    from providers.config.services import model_group_create
    from providers.models import ModelGroup
    from providers.runtime import config_sync
    from providers.runtime import process as runtime

    model_group_create(name="fast", deployments=[{"provider": "a", "model": "a-1"}])
    assert chat() == "a"
    ModelGroup.objects.filter(name="fast").update(
        deployments=[{"provider": "b", "model": "b-1", "weight": 1}], revision=2
    )
    assert chat() == "a"  # no message: not yet
    runtime.run_in_serving_loop(config_sync.repair_all)
    assert chat() == "b"
    # A broadcast message says "look" and the worker reads the table again.
    ModelGroup.objects.filter(name="fast").delete()
    runtime.run_in_serving_loop(
        config_sync.handle_message, {"name": config_sync.GROUPS_MESSAGE_NAME, "revision": None}
    )
    assert runtime.manager.groups.names() == []


def test_a_worker_loads_the_groups_with_its_providers_at_start_up(providers_configured) -> None:
    from providers.config.services import model_group_create
    from providers.runtime import config_sync
    from providers.runtime import process as runtime

    model_group_create(name="fast", deployments=[{"provider": "b", "model": "b-1"}])
    # A fresh worker: nothing served yet, then its start-up loads every provider row.
    runtime.manager.groups.replace([])
    runtime.current().config_sync_state.groups_digest = None
    runtime.run_in_serving_loop(runtime.load_all_from_database)
    assert runtime.manager.groups.names() == ["fast"]
    assert runtime.current().config_sync_state.groups_digest is not None
    assert config_sync.served_revision("b") is not None


# --- the YAML import ----------------------------------------------------------------


def test_yaml_import_creates_follows_and_keeps_edited_groups(
    providers_configured, tmp_path
) -> None:
    from providers.config.files import ConfigFileError, load_model_group_entries
    from providers.config.services import model_group_update
    from providers.config.yaml_import import sync_model_groups
    from providers.models import ModelGroup, ProviderConfigChange

    path = tmp_path / "test.yaml"

    def write(weight: str, extra: str = "") -> None:
        path.write_text(
            "model_groups:\n"
            "  fast:\n"
            "    strategy: weighted\n"
            "    deployments:\n"
            f"      - {{provider: a, model: a-1, weight: {weight}}}\n"
            "      - {provider: b, model: b-1}\n"
            "  broken:\n"
            "    deployments: [{provider: nope, model: m}]\n" + extra
        )

    write("3")
    report = sync_model_groups(entries=load_model_group_entries(path))
    assert report.get("fast").outcome == "created"
    assert report.get("broken").outcome == "error"
    assert "deployments.0.provider" in report.get("broken").errors
    assert report.render()[-1].startswith("2 model groups:")
    row = ModelGroup.objects.get(name="fast")
    assert row.deployments[0]["weight"] == 3
    assert ProviderConfigChange.objects.get(provider_name="group:fast").source == "yaml-import"
    assert chat() in {"a", "b"}

    again = sync_model_groups(entries=load_model_group_entries(path))
    assert again.get("fast").outcome == "unchanged"
    write('"${FAST_WEIGHT}"')
    followed = sync_model_groups(
        entries=load_model_group_entries(path, environ={"FAST_WEIGHT": "5"})
    )
    assert followed.get("fast").outcome == "updated"
    assert ModelGroup.objects.get(name="fast").deployments[0]["weight"] == 5

    # Edited in the admin or the API: the file does not overwrite it, unless asked.
    model_group_update(group=row, changes={"strategy": "least_busy"})
    write("7")
    kept = sync_model_groups(entries=load_model_group_entries(path))
    assert kept.get("fast").outcome == "conflict"
    assert ModelGroup.objects.get(name="fast").strategy == "least_busy"
    dry = sync_model_groups(entries=load_model_group_entries(path), overwrite=True, dry_run=True)
    assert dry.get("fast").outcome == "overwritten"
    assert ModelGroup.objects.get(name="fast").strategy == "least_busy"
    done = sync_model_groups(entries=load_model_group_entries(path), overwrite=True)
    assert done.get("fast").outcome == "overwritten"
    assert ModelGroup.objects.get(name="fast").strategy == "weighted"

    path.write_text("model_groups:\n  fast:\n    weights: [1]\n")
    with pytest.raises(ConfigFileError, match="weights"):
        load_model_group_entries(path)
    path.write_text("model_groups: [fast]\n")
    with pytest.raises(ConfigFileError, match="mapping"):
        load_model_group_entries(path)


# --- the REST API --------------------------------------------------------------------


@pytest.fixture
def api(providers_configured, admin_key, client):
    headers = {"Authorization": f"Bearer {admin_key[1]}"}

    def call(method: str, path: str, body=None, **extra):
        kwargs = {"headers": headers, **extra}
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        return getattr(client, method)(path, **kwargs)

    return call


def test_the_rest_api_manages_groups(api) -> None:
    from providers.models import ModelGroup

    body = {
        "name": "fast",
        "strategy": "weighted",
        "deployments": [
            {"provider": "a", "model": "a-1", "weight": 3},
            {"provider": "b", "model": "b-1"},
        ],
    }
    created = api("post", "/api/model-groups/", body)
    assert created.status_code == 201, created.content
    assert created.json()["deployments"][1] == {"provider": "b", "model": "b-1", "weight": 1}
    assert created.json()["serving"] is True
    assert chat() in {"a", "b"}
    assert [g["name"] for g in api("get", "/api/model-groups/").json()["results"]] == ["fast"]
    assert api("get", "/api/model-groups/fast/").json()["strategy"] == "weighted"

    changed = api(
        "patch", "/api/model-groups/fast/", {"deployments": [{"provider": "b", "model": "b-1"}]}
    )
    assert changed.status_code == 200, changed.content
    assert chat() == "b"
    replaced = api("put", "/api/model-groups/fast/", {"strategy": "least_busy"})
    assert replaced.status_code == 400
    assert replaced.json()["error"]["field"] == "deployments"
    renamed = api("patch", "/api/model-groups/fast/", {"name": "slow"})
    assert renamed.status_code == 400 and renamed.json()["error"]["field"] == "name"

    # A name with '/' is a group name like any other, reached by the rest of the path.
    slashed = api("post", "/api/model-groups/", {**body, "name": "team/fast"})
    assert slashed.status_code == 201, slashed.content
    assert api("get", "/api/model-groups/team/fast/").json()["name"] == "team/fast"
    assert chat("team/fast") in {"a", "b"}

    history = api("get", "/api/model-groups/history/?name=fast")
    assert history.status_code == 200
    assert [e["action"] for e in history.json()["results"]] == ["updated", "created"]
    assert history.json()["results"][0]["source"] == "api"
    assert api("get", "/api/model-groups/history/").json()["error"]["field"] == "name"
    assert api("get", "/api/model-groups/history/?name=ghost").status_code == 404

    assert api("delete", "/api/model-groups/fast/").status_code == 204
    assert api("get", "/api/model-groups/fast/").status_code == 404
    assert list(ModelGroup.objects.values_list("name", flat=True)) == ["team/fast"]
    assert (
        api("get", "/api/model-groups/history/?name=fast").json()["results"][0]["action"]
        == "deleted"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "fast", "deployments": "a/a-1"}, "deployments"),
        (
            {"name": "fast", "deployments": [{"provider": "a", "model": "a-1", "weight": "9"}]},
            "deployments.0.weight",
        ),
        (
            {"name": "fast", "deployments": [{"provider": "a", "model": "a-1", "weight": 0}]},
            "deployments.0.weight",
        ),
        (
            {"name": "fast", "deployments": [{"provider": "zz", "model": "a-1"}]},
            "deployments.0.provider",
        ),
        (
            {"name": "fast", "deployments": [{"provider": "a", "model": "a\x00"}]},
            "deployments.0.model",
        ),
        ({"name": "fast", "deployments": [[[[["deep"]]]]]}, "deployments.0"),
        (
            {
                "name": "fast",
                "strategy": "random",
                "deployments": [{"provider": "a", "model": "a-1"}],
            },
            "strategy",
        ),
        (
            {
                "name": "fast",
                "enabled": "maybe",
                "deployments": [{"provider": "a", "model": "a-1"}],
            },
            "enabled",
        ),
        ({"name": "n\x00", "deployments": [{"provider": "a", "model": "a-1"}]}, "name"),
        ({"name": "x" * 500, "deployments": [{"provider": "a", "model": "a-1"}]}, "name"),
        ({"name": ["fast"], "deployments": [{"provider": "a", "model": "a-1"}]}, "name"),
        ({"deployments": [{"provider": "a", "model": "a-1"}]}, "name"),
        ({"name": "fast"}, "deployments"),
        ([1, 2], "body"),
    ],
)
def test_hostile_api_input_is_a_400_naming_the_field(api, body, field) -> None:
    from providers.models import ModelGroup, ProviderConfigChange

    response = api("post", "/api/model-groups/", body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["field"] == field
    assert not ModelGroup.objects.exists()
    assert not ProviderConfigChange.objects.filter(provider_name__startswith="group:").exists()


def test_a_huge_or_deep_body_is_refused_before_it_is_parsed(api) -> None:
    from providers.models import ModelGroup

    deep = "[" * 5000 + "]" * 5000
    response = api(
        "post",
        "/api/model-groups/",
        None,
        data=f'{{"name": "x", "deployments": {deep}}}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert not ModelGroup.objects.exists()


def test_only_admin_clients_manage_groups(providers_configured, chat_key, client) -> None:
    response = client.get("/api/model-groups/", headers={"Authorization": f"Bearer {chat_key[1]}"})
    assert response.status_code == 403
    assert client.get("/api/model-groups/").status_code == 401


# --- the admin ------------------------------------------------------------------------


def test_the_admin_adds_and_edits_a_group(providers_configured, admin_user, client) -> None:
    from providers.models import ModelGroup, ProviderConfigChange

    client.force_login(admin_user)
    add = "/admin/providers/modelgroup/add/"
    assert client.get(add).status_code == 200
    form = {
        "name": "fast",
        "strategy": "weighted",
        "deployments_lines": "a/a-1 3\nb/b-1\n",
        "enabled": "on",
        "_save": "Save",
    }
    response = client.post(add, form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    row = ModelGroup.objects.get(name="fast")
    assert row.deployments == [
        {"provider": "a", "model": "a-1", "weight": 3},
        {"provider": "b", "model": "b-1", "weight": 1},
    ]
    assert ProviderConfigChange.objects.get(provider_name="group:fast").source == "admin"
    assert chat() in {"a", "b"}

    change = f"/admin/providers/modelgroup/{row.pk}/change/"
    page = client.get(change)
    assert page.status_code == 200
    assert b"a/a-1 3" in page.content and b"group%3Afast" in page.content
    bad = client.post(change, {**form, "deployments_lines": "a/a-1 0\nnope/x\njunk"})
    assert bad.status_code == 200
    errors = bad.context["adminform"].form.errors["deployments_lines"]
    assert any("Line 3" in e for e in errors)
    bad = client.post(change, {**form, "deployments_lines": "a/a-1 0\nnope/x"})
    errors = bad.context["adminform"].form.errors["deployments_lines"]
    assert any(e.startswith("Line 1 (weight)") for e in errors)
    assert any(e.startswith("Line 2 (provider)") for e in errors)
    assert ModelGroup.objects.get(name="fast").revision == 1
    ok = client.post(change, {**form, "deployments_lines": "b/b-1", "strategy": "least_busy"})
    assert ok.status_code == 302
    assert chat() == "b"
    duplicate = client.post(add, form)
    assert duplicate.status_code == 200
    assert "name" in duplicate.context["adminform"].form.errors
    listing = client.get("/admin/providers/modelgroup/")
    assert b"b/b-1" in listing.content


def test_the_manager_lists_groups_for_v1_models(providers_configured) -> None:
    from providers.config.services import model_group_create
    from providers.runtime import process as runtime

    model_group_create(name="fast", deployments=[{"provider": "a", "model": "a-1"}])
    model_group_create(name="mixed", deployments=[{"provider": "b", "model": "b-1"}])
    model_group_create(name="off", deployments=[{"provider": "a", "model": "a-1"}], enabled=False)
    assert runtime.manager.public_model_groups() == ["fast", "mixed"]
    assert runtime.manager.public_model_groups(lambda p, m: p == "a") == ["fast"]


def test_the_weights_hold_through_the_runtime(providers_configured) -> None:
    """The 1,000-call split, end to end through the services and the served table."""
    from providers.config.services import model_group_create
    from providers.runtime import process as runtime

    model_group_create(
        name="fast",
        deployments=[
            {"provider": "a", "model": "a-1", "weight": 3},
            {"provider": "b", "model": "b-1", "weight": 1},
        ],
    )

    async def calls():
        counts = Counter()
        for _ in range(1000):
            counts[(await runtime.manager.chat_completion(ask())).provider] += 1
        return counts

    counts = runtime.run_in_serving_loop(calls)
    assert 700 <= counts["a"] <= 800, counts


def test_the_table_keeps_statistics_bounded() -> None:
    table = ModelGroupTable()
    table.replace([group("g", "lowest_latency", ("a", "m", 1), ("b", "m", 1))])
    table.record_latency(Deployment("a", "m"), 0.5)
    table.record_latency(Deployment("a", "m"), 0.1)
    assert table.latency(Deployment("a", "m")) == pytest.approx(0.3 * 0.1 + 0.7 * 0.5)
    table.replace([group("g", "lowest_latency", ("b", "m", 1))])
    assert table.latency(Deployment("a", "m")) is None
    with table.serving(Deployment("b", "m")):
        assert table.in_flight(Deployment("b", "m")) == 1
    assert table.in_flight(Deployment("b", "m")) == 0
    async_to_sync(asyncio.sleep)(0)


async def test_a_deployment_out_of_service_is_passed_over() -> None:
    registry = await echo_registry("b")
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(5), clock=FakeClock())
    manager.groups.replace([group("fast", "weighted", ("gone", "m", 50), ("b", "b-1", 1))])
    for _ in range(20):
        response = await manager.chat_completion(ask())
        assert response.provider == "b"
    manager.groups.replace([group("fast", "weighted", ("gone", "m", 1))])
    with pytest.raises(ProviderUnavailableError, match="in service"):
        await manager.chat_completion(ask())
    await registry.shutdown_all()


def test_the_shipped_development_file_imports_its_groups(transactional_db) -> None:
    from django.conf import settings

    from providers.config.files import (
        config_path,
        load_model_group_entries,
        load_provider_entries,
    )
    from providers.config.yaml_import import sync_model_groups, sync_provider_configs
    from providers.models import ModelGroup, ProviderConfig

    path = config_path(settings.BASE_DIR / "config", "development")
    providers = sync_provider_configs(entries=load_provider_entries(path, {}))
    assert not providers.has_errors
    assert ProviderConfig.objects.get(name="anthropic").routing_priority == 100
    groups = sync_model_groups(entries=load_model_group_entries(path, {}))
    assert not groups.has_errors, groups.render()
    assert ModelGroup.objects.get(name="fast").deployments[0]["weight"] == 3
    assert load_model_group_entries(config_path(settings.BASE_DIR / "config", "production")) == []


async def test_a_key_may_call_a_group_when_it_may_use_one_of_its_deployments() -> None:
    registry = await echo_registry("a", "b")
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(9), clock=FakeClock())
    manager.groups.replace([group("fast", "weighted", ("a", "a-1", 1), ("b", "b-1", 1))])
    assert manager.group_allows("fast", lambda p, m: p == "b") is True
    assert manager.group_allows("fast", lambda p, m: p == "zz") is False
    assert manager.group_allows("a-1", lambda p, m: True) is None  # not a group
    await registry.shutdown_all()


class TopKProvider(EchoProvider):
    """An echo that also honours ``top_k`` (echo itself refuses it)."""

    supported_options = EchoProvider.supported_options | {"top_k"}


async def test_a_deployment_that_cannot_honour_an_option_is_passed_over_within_its_group() -> None:
    registry = await echo_registry("a")
    registry.register(TopKProvider, "topk")
    await registry.apply(ProviderSpec("t", "topk", {"prefix": "t: ", "models": ["t-1"]}))
    manager = ModelManager(registry, sleep=RecordedSleep(), rng=random.Random(5), clock=FakeClock())
    # a is drawn first nearly always; a request with top_k must still never be refused.
    manager.groups.replace([group("fast", "weighted", ("a", "a-1", 999), ("t", "t-1", 1))])
    request = ChatRequest(messages=ask().messages, model="fast", top_k=5)
    answered = Counter()
    for _ in range(20):
        answered[(await manager.chat_completion(request)).provider] += 1
    assert answered == Counter({"t": 20})
    # No deployment can: the 400 names the option.
    manager.groups.replace([group("slowgroup", "weighted", ("a", "a-1", 1))])
    refused = ChatRequest(messages=ask().messages, model="slowgroup", top_k=5)
    with pytest.raises(ProviderError) as caught:
        await manager.chat_completion(refused)
    assert caught.value.kind == "unsupported_option" and caught.value.field == "top_k"
    await registry.shutdown_all()
