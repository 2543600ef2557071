"""``manage.py startprovider`` and its guide alias ``utils/plugin_template.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from providers.authoring.generator import PluginSpecError, plugin_spec
from providers.runtime.registry import ProviderRegistry, load_plugin_file
from tests.test_plugin_authoring import run_pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE_OPTIONS = [
    "--name=custom-ai",
    "--display=Custom AI",
    "--url=https://api.custom-ai.com",
    "--model=custom-model-v1",
]


def generate(plugins_dir: Path, *options: str) -> None:
    call_command("startprovider", *GUIDE_OPTIONS, f"--plugins-dir={plugins_dir}", *options)


def test_the_guide_example_generates_four_files(tmp_path: Path) -> None:
    generate(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.*")) == [
        "config/custom_ai.example.yaml",
        "custom_ai_provider.py",
        "docs/custom_ai.md",
        "tests/test_custom_ai_provider.py",
    ]
    cls = load_plugin_file(tmp_path / "custom_ai_provider.py")
    assert cls.__name__ == "CustomAiProvider"
    provider = cls({"api_key": "sk-x"}, name="custom-ai")
    assert provider.config["base_url"] == "https://api.custom-ai.com"
    assert provider.config["default_model"] == "custom-model-v1"
    assert provider.metadata.name == "Custom AI"
    assert "CHANGE ME" in (tmp_path / "custom_ai_provider.py").read_text()


def test_the_config_example_imports(tmp_path: Path) -> None:
    from providers.config.files import load_provider_entries

    generate(tmp_path)
    environ = {"CUSTOM_AI_API_KEY": "sk-custom"}
    (entry,) = load_provider_entries(tmp_path / "config" / "custom_ai.example.yaml", environ)
    assert entry.name == "custom-ai" and entry.plugin == "custom_ai"
    assert entry.config["base_url"] == "https://api.custom-ai.com"


def test_it_defaults_to_the_first_plugin_dir(tmp_path: Path, settings) -> None:
    settings.ECHO_PLUGIN_DIRS = [tmp_path / "first", tmp_path / "second"]
    call_command("startprovider", *GUIDE_OPTIONS)
    assert (tmp_path / "first" / "custom_ai_provider.py").is_file()


def test_it_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "custom_ai.md").write_text("mine")
    with pytest.raises(CommandError, match="Refusing to overwrite existing files: .*custom_ai.md"):
        generate(tmp_path)
    assert (tmp_path / "docs" / "custom_ai.md").read_text() == "mine"
    assert not (tmp_path / "custom_ai_provider.py").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "Custom"}, "--name: 'Custom' is not a valid plugin name"),
        ({"name": "2fast"}, "not a valid plugin name"),
        ({"name": "my--ai"}, "not a valid plugin name"),
        ({"name": "../evil"}, "not a valid plugin name"),
        ({"name": "openai"}, "'openai' is a built-in provider"),
        ({"name": "class"}, "Python keyword"),
        ({"name": "x" * 41}, "at most 40"),
        ({"display": " "}, "--display"),
        ({"url": "api.custom-ai.com"}, "--url: 'api.custom-ai.com' is not an http(s) URL"),
        ({"url": "https://user:pw@api.custom-ai.com"}, "credentials"),
        ({"model": "two words"}, "--model"),
        ({"wire": "grpc"}, "--wire: must be one of"),
    ],
)
def test_bad_options_are_named(options: dict[str, str], message: str) -> None:
    given = {
        "name": "custom-ai",
        "display": "Custom AI",
        "url": "https://api.custom-ai.com",
        "model": "m",
        **options,
    }
    with pytest.raises(PluginSpecError) as caught:
        plugin_spec(**given)
    assert message in str(caught.value)


def test_a_bad_name_from_the_command_is_a_command_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--name: 'Bad Name' is not a valid plugin name"):
        call_command(
            "startprovider",
            "--name=Bad Name",
            "--display=x",
            "--url=https://x.example",
            "--model=m",
            f"--plugins-dir={tmp_path}",
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_guide_spelling_runs_the_same_generator(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "utils/plugin_template.py", *GUIDE_OPTIONS, f"--plugins-dir={tmp_path}"],
        cwd=ROOT,
        env={**os.environ, "ECHO_ENV": "test"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "CustomAiProvider" in result.stdout
    assert (tmp_path / "custom_ai_provider.py").is_file()


async def test_a_plugin_named_like_its_base_class_registers_its_own_class(
    tmp_path: Path,
) -> None:
    # open_ai_provider.py imports OpenAIProvider and defines OpenAiProvider:
    # both match the convention's name when case is ignored.
    call_command(
        "startprovider",
        "--name=open_ai",
        "--display=Open AI clone",
        "--url=https://clone.example/v1",
        "--model=m",
        f"--plugins-dir={tmp_path}",
    )
    registry = ProviderRegistry()
    (result,) = await registry.discover_plugins(tmp_path)
    assert result.status == "registered" and result.class_name == "OpenAiProvider"


@pytest.mark.slow
def test_every_wire_generates_a_test_that_passes_or_waits_for_the_skeleton(
    tmp_path: Path,
) -> None:
    for wire in ("anthropic", "ollama", "blank"):
        call_command(
            "startprovider",
            f"--name=acme_{wire}",
            f"--display=Acme {wire}",
            "--url=https://api.acme.example",
            "--model=acme-1",
            f"--wire={wire}",
            f"--plugins-dir={tmp_path}",
        )
    result = run_pytest(tmp_path / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    # The blank skeleton's chat tests are expected failures until it is written.
    assert "xfailed" in result.stdout
