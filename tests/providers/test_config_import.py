"""``sync_providers``: the YAML seeds the database and never overwrites an admin's edit."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from providers.base import AbstractAIProvider, PluginMetadata
from providers.config.files import load_provider_entries
from providers.config.services import provider_config_create, provider_config_update
from providers.config.yaml_import import FILE_DISABLED_REASON, Outcome, sync_provider_configs
from providers.models import ProviderConfig
from providers.runtime import process as runtime
from providers.types import ChatRequest, ChatResponse, HealthStatus

pytestmark = pytest.mark.django_db

SECRET = "sk-fake-0123456789abcdef-never-print"
OTHER_SECRET = "sk-admin-typed-9876543210-never-print"

FAKEAI_YAML = """
ai_providers:
  fakeai:
    api_key: ${FAKEAI_API_KEY}
    timeout: 30
  echo:
    prefix: "Echo: "
routing:
  default: echo
"""


class FakeaiProvider(AbstractAIProvider):
    """A plugin with a required secret, as the cloud providers have."""

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(name="FakeAI", version="0.1", requires_api_key=True)

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "api_key": {"type": "string", "writeOnly": True},
                "base_url": {"type": "string", "default": "http://127.0.0.1:9/v1"},
                "timeout": {"type": "integer", "minimum": 1},
            },
            "required": ["api_key"],
            "additionalProperties": False,
        }

    async def initialize(self) -> None:
        pass

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="fake", model="fake-1", provider=self.name)

    async def health_check(self) -> HealthStatus:
        return HealthStatus(available=True)

    async def list_models(self) -> list[str]:
        return ["fake-1"]


@pytest.fixture
def fakeai() -> None:
    runtime.registry.register(FakeaiProvider, "fakeai")


@pytest.fixture
def yaml_file(tmp_path: Path):
    """Write the YAML text given to the file that ``sync`` imports."""
    path = tmp_path / "providers.yaml"

    def write(text: str) -> Path:
        path.write_text(text)
        return path

    return write


def sync(path: Path, *args: str) -> str:
    """Run ``sync_providers --file PATH``; return everything it printed."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("sync_providers", "--file", str(path), *args, stdout=out, stderr=err)
    except CommandError as exc:
        exc.output = out.getvalue() + err.getvalue()  # for the tests that expect it
        raise
    return out.getvalue() + err.getvalue()


def row(name: str) -> ProviderConfig:
    return ProviderConfig.objects.get(name=name)


def test_creates_what_is_missing(yaml_file) -> None:
    path = yaml_file(
        """
ai_providers:
  echo:
    prefix: "Hi: "
    models: [echo-1, echo-2]
"""
    )
    output = sync(path)

    echo = row("echo")
    assert (echo.plugin, echo.enabled) == ("echo", True)
    assert echo.settings == {"prefix": "Hi: ", "models": ["echo-1", "echo-2"]}
    assert echo.import_fingerprint.startswith("h1:")  # keyed: see test_secret_hygiene
    assert "echo: created." in output


def test_an_unchanged_file_changes_nothing(yaml_file) -> None:
    path = yaml_file("ai_providers:\n  echo: {prefix: 'Hi: '}\n")
    sync(path)
    saved_at = row("echo").updated_at

    assert "echo: unchanged." in sync(path)
    assert row("echo").updated_at == saved_at


def test_an_unset_variable_imports_the_provider_disabled_with_the_reason(
    yaml_file, fakeai, monkeypatch
) -> None:
    monkeypatch.delenv("FAKEAI_API_KEY", raising=False)
    output = sync(yaml_file(FAKEAI_YAML))

    fake = row("fakeai")
    assert fake.enabled is False
    assert fake.disabled_reason == "Environment variable FAKEAI_API_KEY is not set."
    assert fake.secrets == {}
    assert fake.settings == {"timeout": 30}
    assert "fakeai: created. Disabled: Environment variable FAKEAI_API_KEY is not set." in output
    assert row("echo").enabled is True  # the others are imported as usual


def test_setting_the_variable_later_enables_the_untouched_provider(
    yaml_file, fakeai, monkeypatch
) -> None:
    path = yaml_file(FAKEAI_YAML)
    monkeypatch.delenv("FAKEAI_API_KEY", raising=False)
    sync(path)

    monkeypatch.setenv("FAKEAI_API_KEY", SECRET)
    output = sync(path)

    fake = row("fakeai")
    assert fake.enabled is True
    assert fake.disabled_reason == ""
    assert fake.secrets == {"api_key": SECRET}
    assert "fakeai: updated from the file" in output
    assert "secrets.api_key: set in the file, not in the database" in output
    assert "echo: unchanged." in output

    # And unsetting it again takes the key away and disables it, saying why.
    monkeypatch.delenv("FAKEAI_API_KEY")
    sync(path)
    fake = row("fakeai")
    assert (fake.enabled, fake.secrets) == (False, {})
    assert "FAKEAI_API_KEY" in fake.disabled_reason


def test_a_changed_file_updates_a_provider_no_one_edited(yaml_file) -> None:
    sync(yaml_file("ai_providers:\n  echo: {prefix: 'one: ', delay_ms: 5}\n"))
    output = sync(yaml_file("ai_providers:\n  echo: {prefix: 'two: '}\n"))

    assert row("echo").settings == {"prefix": "two: "}
    assert 'settings.prefix: "one: " in the database, "two: " in the file' in output
    assert "settings.delay_ms: 5 in the database, unset in the file" in output


def test_an_admin_edit_is_reported_as_a_conflict_and_kept(yaml_file, fakeai, monkeypatch) -> None:
    monkeypatch.setenv("FAKEAI_API_KEY", SECRET)
    sync(yaml_file(FAKEAI_YAML))
    provider_config_update(
        config=row("fakeai"),
        changes={"settings": {"timeout": 90}, "secrets": {"api_key": OTHER_SECRET}},
    )
    before = row("fakeai")

    output = sync(yaml_file(FAKEAI_YAML.replace("timeout: 30", "timeout: 45")))

    after = row("fakeai")
    assert (after.settings, after.secrets) == (before.settings, before.secrets)
    assert after.updated_at == before.updated_at
    assert "fakeai: conflict: edited since the last import and differs from the file" in output
    assert "settings.timeout: 90 in the database, 45 in the file" in output
    assert "secrets.api_key: differs (values not shown)" in output
    assert "--overwrite" in output

    # Still a conflict on the next start: the edit is never taken for the import's own.
    assert "fakeai: conflict" in sync(yaml_file(FAKEAI_YAML))


def test_a_provider_created_in_the_admin_is_never_overwritten_silently(yaml_file) -> None:
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "admin: "})

    output = sync(yaml_file("ai_providers:\n  echo: {prefix: 'file: '}\n"))

    assert row("echo").settings == {"prefix": "admin: "}
    assert "echo: conflict: created outside the import" in output


def test_a_row_that_already_matches_the_file_follows_it_from_then_on(yaml_file) -> None:
    # An admin made the same change as the file: nothing of theirs would be lost.
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "same: "})
    assert "echo: unchanged." in sync(yaml_file("ai_providers:\n  echo: {prefix: 'same: '}\n"))

    assert "echo: updated" in sync(yaml_file("ai_providers:\n  echo: {prefix: 'next: '}\n"))
    assert row("echo").settings == {"prefix": "next: "}


def test_overwrite_replaces_the_admin_edit_with_the_file(yaml_file, fakeai, monkeypatch) -> None:
    monkeypatch.setenv("FAKEAI_API_KEY", SECRET)
    path = yaml_file(FAKEAI_YAML)
    sync(path)
    provider_config_update(
        config=row("fakeai"),
        changes={
            "settings": {"timeout": 90, "base_url": "http://admin"},
            "secrets": {"api_key": OTHER_SECRET},
        },
    )

    output = sync(path, "--overwrite")

    fake = row("fakeai")
    assert fake.settings == {"timeout": 30}  # the admin's extra key is gone too
    assert fake.secrets == {"api_key": SECRET}
    assert "fakeai: overwritten with the file's values." in output
    assert "settings.base_url: " in output
    # From now on it is the import's own again: a changed file simply updates it.
    assert "fakeai: updated" in sync(yaml_file(FAKEAI_YAML.replace("30", "31")))
    assert row("fakeai").settings == {"timeout": 31}


def test_dry_run_reports_and_writes_nothing(
    yaml_file, fakeai, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    monkeypatch.setenv("FAKEAI_API_KEY", SECRET)
    provider_config_create(name="echo", plugin="echo", settings={"prefix": "admin: "})
    path = yaml_file(FAKEAI_YAML)

    with django_capture_on_commit_callbacks() as callbacks:
        output = sync(path, "--dry-run", "--overwrite")

    assert output.splitlines()[1] == "Dry run: nothing is saved. The import would do this:"
    assert "fakeai: created." in output
    assert "echo: overwritten with the file's values." in output
    assert not ProviderConfig.objects.filter(name="fakeai").exists()
    echo = row("echo")
    assert (echo.settings, echo.is_default, echo.import_fingerprint) == (
        {"prefix": "admin: "},
        False,
        "",
    )
    assert callbacks == []  # nothing to reload either


def test_the_import_reloads_the_providers_through_the_save_signal(
    yaml_file, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        sync(yaml_file("ai_providers:\n  echo: {prefix: 'first: '}\n"))
    # A process that serves nothing (the command) starts no provider: it only publishes.
    assert "echo" not in runtime.registry
    assert runtime.run_in_serving_loop(runtime.load_provider_from_database, "echo") is None

    path = yaml_file("ai_providers:\n  echo: {prefix: 'live: ', models: [echo-7]}\n")
    with django_capture_on_commit_callbacks(execute=True):
        sync(path)

    live = runtime.registry.get("echo")
    assert live.config["prefix"] == "live: "
    assert live.config["models"] == ["echo-7"]


def test_routing_default_and_fallbacks_are_imported(yaml_file) -> None:
    sync(
        yaml_file(
            """
ai_providers:
  primary: {plugin: echo}
  backup: {plugin: echo}
routing:
  default: primary
  fallbacks:
    primary: [backup, backup/echo-1]
"""
        )
    )
    primary, backup = row("primary"), row("backup")
    assert (primary.is_default, primary.fallbacks) == (True, ["backup", "backup/echo-1"])
    assert (backup.is_default, backup.fallbacks) == (False, [])


def test_a_file_that_moves_the_default_moves_it(yaml_file) -> None:
    text = "ai_providers:\n  a: {plugin: echo}\n  b: {plugin: echo}\nrouting:\n  default: "
    sync(yaml_file(text + "b\n"))
    # "a" comes first in the file, yet the default moves without a clash.
    output = sync(yaml_file(text + "a\n"))

    assert (row("a").is_default, row("b").is_default) == (True, False)
    assert "a: updated" in output and "b: updated" in output


def test_the_default_an_admin_chose_is_kept(yaml_file) -> None:
    provider_config_create(name="chosen", plugin="echo", is_default=True)
    path = yaml_file("ai_providers:\n  echo: {}\nrouting:\n  default: echo\n")

    output = sync(path)

    assert row("chosen").is_default is True
    assert row("echo").is_default is False
    assert "echo: created." in output
    assert "Not made the default: 'chosen' is the default provider" in output
    assert "chosen: not in the file; left as it is." in output
    # Said again on every start, and still kept.
    assert "echo: conflict: the default provider was chosen outside the import" in sync(path)

    sync(path, "--overwrite")
    assert (row("echo").is_default, row("chosen").is_default) == (True, False)


def test_an_invalid_entry_is_reported_and_the_others_are_imported(yaml_file) -> None:
    path = yaml_file(
        """
ai_providers:
  broken:
    plugin: echo
    delay_ms: -5
    colour: blue
  nowhere:
    plugin: no-such-plugin
  echo: {}
"""
    )
    with pytest.raises(CommandError, match="invalid and were not imported") as caught:
        sync(path)

    output = caught.value.output
    assert "broken: not imported, the file's entry is invalid." in output
    assert "delay_ms: Must be at least 0." in output
    assert "colour: Unknown setting." in output
    assert "plugin: No plugin named 'no-such-plugin' is installed." in output
    assert list(ProviderConfig.objects.values_list("name", flat=True)) == ["echo"]


def test_a_required_key_missing_from_the_file_is_an_error_not_excused(yaml_file, fakeai) -> None:
    # Only a key left out because of an unset variable is excused.
    path = yaml_file("ai_providers:\n  fakeai: {timeout: 5}\n")
    with pytest.raises(CommandError) as caught:
        sync(path)
    assert "api_key: This field is required." in caught.value.output
    assert not ProviderConfig.objects.filter(name="fakeai").exists()


def test_a_file_that_disables_a_provider_says_so(yaml_file) -> None:
    sync(yaml_file("ai_providers:\n  echo: {enabled: false}\n"))
    assert (row("echo").enabled, row("echo").disabled_reason) == (False, FILE_DISABLED_REASON)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ai_providers:\n  echo: [unclosed\n", "not valid YAML"),
        ("ai_providers: {echo: {}}\nrouting: {default: nope}\n", "routing.default names 'nope'"),
    ],
)
def test_a_broken_file_is_a_command_error_and_changes_nothing(
    yaml_file, text: str, message: str
) -> None:
    with pytest.raises(CommandError, match=message) as caught:
        sync(yaml_file(text))
    assert caught.value.returncode == 1
    assert not ProviderConfig.objects.exists()


def test_a_missing_file_for_the_environment_is_a_clear_command_error(tmp_path, settings) -> None:
    settings.ECHO_CONFIG_DIR = tmp_path
    with pytest.raises(CommandError, match=rf"{tmp_path}/production\.yaml: file not found"):
        call_command("sync_providers", "--env", "production", stdout=io.StringIO())


def test_the_default_file_is_config_for_the_current_environment(tmp_path, settings) -> None:
    settings.ECHO_CONFIG_DIR = tmp_path
    settings.ECHO_ENV = "development"
    (tmp_path / "development.yaml").write_text("ai_providers:\n  devecho: {plugin: echo}\n")
    call_command("sync_providers", stdout=io.StringIO())
    assert row("devecho").plugin == "echo"


def test_secrets_are_never_printed(yaml_file, fakeai, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FAKEAI_API_KEY", SECRET)
    path = yaml_file(FAKEAI_YAML)
    printed = [sync(path, "--dry-run"), sync(path)]
    provider_config_update(config=row("fakeai"), changes={"secrets": {"api_key": OTHER_SECRET}})
    printed += [sync(path), sync(path, "--dry-run", "--overwrite"), sync(path, "--overwrite")]
    # An invalid entry next to the secret: its errors must not echo the value either.
    bad = FAKEAI_YAML.replace("timeout: 30", "timeout: slow")
    with pytest.raises(CommandError) as caught:
        sync(yaml_file(bad))
    printed.append(caught.value.output + str(caught.value))
    captured = capsys.readouterr()
    printed += [captured.out, captured.err]

    assert "secrets.api_key: differs (values not shown)" in printed[2]
    for text in printed:
        for secret in (SECRET, OTHER_SECRET, SECRET[-8:], OTHER_SECRET[-8:]):
            assert secret not in text


def test_plugins_in_the_plugin_directories_can_be_imported(yaml_file, tmp_path, settings) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "parrot_provider.py").write_text(
        "from providers.plugins.echo_provider import EchoProvider\n\n\n"
        "class ParrotProvider(EchoProvider):\n    pass\n"
    )
    settings.ECHO_PLUGIN_DIRS = [plugin_dir]

    sync(yaml_file("ai_providers:\n  parrot: {prefix: 'Polly: '}\n"))

    assert row("parrot").plugin == "parrot"


def test_providers_that_are_not_in_the_file_are_left_alone(yaml_file) -> None:
    provider_config_create(name="mine", plugin="echo", settings={"prefix": "mine: "})
    report = sync_provider_configs(
        entries=load_provider_entries(yaml_file("ai_providers:\n  echo: {}\n"), {})
    )
    assert report.get("mine").outcome == Outcome.NOT_IN_FILE
    assert row("mine").settings == {"prefix": "mine: "}


@pytest.mark.parametrize("environment", ["development", "production", "test"])
def test_the_shipped_files_import_cleanly(environment: str, settings) -> None:
    path = Path(settings.ECHO_CONFIG_DIR) / f"{environment}.yaml"
    report = sync_provider_configs(entries=load_provider_entries(path, {}))
    assert {r.outcome for r in report.results} == {Outcome.CREATED}
    assert row("echo").is_default is True


GROUPS_YAML = """
ai_providers:
  echo: {prefix: "E: ", models: [echo-1]}
  parrot: {plugin: echo, prefix: "P: ", models: [parrot-1]}
model_groups:
  fast:
    strategy: weighted
    deployments:
      - {provider: echo, model: echo-1, weight: 3}
      - {provider: parrot, model: parrot-1, weight: 1}
"""


def test_the_command_imports_model_groups_after_the_providers(yaml_file) -> None:
    from providers.models import ModelGroup

    printed = sync(yaml_file(GROUPS_YAML))
    assert "Model groups from" in printed
    fast = ModelGroup.objects.get(name="fast")
    assert [d["provider"] for d in fast.deployments] == ["echo", "parrot"]
    # A group naming no configured provider is reported; the providers still import.
    broken = GROUPS_YAML + "  lost:\n    deployments: [{provider: nope, model: m}]\n"
    with pytest.raises(CommandError) as failed:
        sync(yaml_file(broken))
    assert "lost" in failed.value.output and "nope" in failed.value.output
    assert not ModelGroup.objects.filter(name="lost").exists()
    assert ModelGroup.objects.filter(name="fast").exists()


def test_a_broken_model_groups_section_is_a_configuration_error(yaml_file, settings) -> None:
    from providers.config.system_checks import check_provider_yaml

    path = yaml_file("ai_providers: {echo: {}}\nmodel_groups: [not, a, mapping]\n")
    settings.ECHO_CONFIG_DIR = path.parent
    settings.ECHO_ENV = path.stem
    errors = check_provider_yaml()
    assert [e.id for e in errors] == ["providers.E001"]
    assert "model_groups" in errors[0].msg
