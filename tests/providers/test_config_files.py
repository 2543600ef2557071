"""Reading config/{ECHO_ENV}.yaml: ${VAR} expansion, routing, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.config.files import (
    ConfigFileError,
    ProviderEntry,
    config_path,
    load_provider_entries,
)
from providers.config.system_checks import check_provider_yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def write(tmp_path: Path, text: str, name: str = "test.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_one(tmp_path: Path, text: str, environ: dict[str, str]) -> ProviderEntry:
    (entry,) = load_provider_entries(write(tmp_path, text), environ)
    return entry


def test_variables_are_expanded_from_the_environment(tmp_path: Path) -> None:
    entry = load_one(
        tmp_path,
        """
ai_providers:
  openai:
    api_key: ${OPENAI_API_KEY}
    base_url: "https://${HOST}/v1"
    models: ["${MODEL}", fixed]
    headers: {x-team: "${TEAM}"}
""",
        {"OPENAI_API_KEY": "sk-from-env", "HOST": "api.example.com", "MODEL": "gpt", "TEAM": "a"},
    )
    assert entry.config == {
        "api_key": "sk-from-env",
        "base_url": "https://api.example.com/v1",
        "models": ["gpt", "fixed"],
        "headers": {"x-team": "a"},
    }
    assert entry.missing_variables == []
    assert entry.plugin == "openai"  # the plugin defaults to the provider's name
    assert entry.enabled is True


def test_a_default_applies_only_when_the_variable_is_unset(tmp_path: Path) -> None:
    text = """
ai_providers:
  ollama:
    base_url: ${OLLAMA_URL:-http://127.0.0.1:11434}
    prefix: "${PREFIX:-}"
"""
    unset = load_one(tmp_path, text, {})
    assert unset.config == {"base_url": "http://127.0.0.1:11434", "prefix": ""}
    assert unset.missing_variables == []

    assert load_one(tmp_path, text, {"OLLAMA_URL": "http://gpu:11434"}).config["base_url"] == (
        "http://gpu:11434"
    )


def test_a_key_whose_variable_is_unset_is_left_out_and_named(tmp_path: Path) -> None:
    entry = load_one(
        tmp_path,
        """
ai_providers:
  openai:
    api_key: ${OPENAI_API_KEY}
    organization: "org-${ORG}"
    timeout: 30
""",
        # Set but empty counts as unset: an empty key is never meant.
        {"ORG": ""},
    )
    assert entry.config == {"timeout": 30}
    assert entry.missing_variables == ["OPENAI_API_KEY", "ORG"]
    assert entry.unset_keys == ["api_key", "organization"]


def test_routing_sets_the_default_and_the_fallbacks(tmp_path: Path) -> None:
    entries = load_provider_entries(
        write(
            tmp_path,
            """
ai_providers:
  primary: {plugin: echo}
  backup: {plugin: echo, fallbacks: [primary]}
routing:
  default: primary
  fallbacks:
    primary: [backup, backup/echo-2]
    backup: [ignored-because-the-provider-says-its-own]
""",
        ),
        {},
    )
    primary, backup = entries
    assert (primary.name, primary.plugin, primary.is_default) == ("primary", "echo", True)
    assert primary.fallbacks == ["backup", "backup/echo-2"]
    assert backup.is_default is False
    assert backup.fallbacks == ["primary"]


def test_enabled_from_a_variable_is_parsed_not_truthy(tmp_path: Path) -> None:
    text = "ai_providers:\n  echo:\n    enabled: ${ECHO_ON:-false}\n"
    assert load_one(tmp_path, text, {}).enabled is False
    assert load_one(tmp_path, text, {"ECHO_ON": "yes"}).enabled is True
    with pytest.raises(ConfigFileError, match=r"ai_providers\.echo\.enabled must be true or false"):
        load_one(tmp_path, text, {"ECHO_ON": "maybe"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ai_providers: [echo\n", "not valid YAML"),
        ("- echo\n", "the top level must be a mapping"),
        ("ai_providers: [echo]\n", "'ai_providers' must be a mapping"),
        ("ai_providers:\n  echo: 3\n", "ai_providers.echo must be a mapping"),
        ("ai_providers: {echo: {}}\nrouting: [echo]\n", "'routing' must be a mapping"),
        (
            "ai_providers: {echo: {}}\nrouting: {default: openai}\n",
            "routing.default names 'openai'",
        ),
        ("ai_providers: {echo: {}}\nrouting: {default: [echo]}\n", "routing.default names"),
        (
            "ai_providers: {echo: {}}\nrouting: {fallbacks: {ehco: [echo]}}\n",
            "routing.fallbacks names 'ehco'",
        ),
        ("ai_providers: {echo: {fallbacks: echo-2}}\n", "fallbacks of 'echo' must be a list"),
        (
            "ai_providers: {a: {default: true}, b: {}}\nrouting: {default: b}\n",
            "more than one default provider",
        ),
    ],
)
def test_a_malformed_file_raises_an_error_naming_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError, match=message) as caught:
        load_provider_entries(path, {})
    assert str(path) in str(caught.value)


def test_a_file_that_cannot_be_read_raises_config_file_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="file not found"):
        load_provider_entries(tmp_path / "absent.yaml", {})
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigFileError, match="cannot be read"):
        load_provider_entries(tmp_path / "dir.yaml", {})
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigFileError, match="cannot be read"):
        load_provider_entries(tmp_path / "binary.yaml", {})


@pytest.mark.parametrize("environment", ["development", "production", "test"])
def test_the_shipped_files_load(environment: str) -> None:
    entries = load_provider_entries(config_path(CONFIG_DIR, environment), {})
    assert [e.name for e in entries if e.is_default] == ["echo"]


def test_system_check_reports_a_broken_file_as_e001(tmp_path: Path, settings) -> None:
    settings.ECHO_CONFIG_DIR = tmp_path
    settings.ECHO_ENV = "test"
    write(tmp_path, "ai_providers:\n  echo: [unclosed\n")
    (error,) = check_provider_yaml()
    assert error.id == "providers.E001"
    assert "not valid YAML" in error.msg


def test_system_check_warns_about_a_missing_file_and_accepts_a_good_one(
    tmp_path: Path, settings
) -> None:
    settings.ECHO_CONFIG_DIR = str(tmp_path)  # as an override from the environment would be
    settings.ECHO_ENV = "test"
    assert [m.id for m in check_provider_yaml()] == ["providers.W001"]
    write(tmp_path, "ai_providers:\n  echo: {prefix: 'hi '}\n")
    assert check_provider_yaml() == []
