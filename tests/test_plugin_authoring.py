"""Plugin authoring end to end: generate, test, discover on a live server, chat, edit, rediscover.

Everything is generated into the test's own directory (ECHO_PLUGIN_DIRS is
pointed there), never into the repository's ``plugins/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command

from providers.config.services import provider_config_create
from providers.runtime import process as runtime
from providers.runtime.registry import ENTRY_POINT_GROUP
from providers.testing.fake_openai import FakeOpenAI
from tests.conftest import IN_CI

# Slow: it generates a plugin, runs its tests in a pytest of their own and serves it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def plugins_dir(tmp_path: Path, settings) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    settings.ECHO_PLUGIN_DIRS = [directory]
    return directory


def run_pytest(path: Path) -> subprocess.CompletedProcess[str]:
    """Run pytest on PATH in a process of its own, with the project's configuration."""
    env = {**os.environ, "ECHO_ENV": "test", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            # The file is outside the project: name its configuration, or pytest finds none.
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            str(path),
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def discover(url: str, key: str) -> dict[str, dict]:
    answer = httpx.post(
        f"{url}/plugins/discover", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return {result["name"]: result for result in answer.json()["results"]}


def chat(url: str, key: str, provider: str, prompt: str = "Hello") -> dict:
    answer = httpx.post(
        f"{url}/chat",
        headers={"Authorization": f"Bearer {key}"},
        json={"prompt": prompt, "provider": provider},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_generated_plugin_is_tested_discovered_served_and_hot_reloaded(
    plugins_dir: Path, live_echo, admin_key, chat_key
) -> None:
    call_command(
        "startprovider",
        "--name=acme",
        "--display=Acme AI",
        "--url=https://api.acme.example/v1",
        "--model=acme-1",
    )
    plugin_file = plugins_dir / "acme_provider.py"
    assert plugin_file.is_file()

    tested = run_pytest(plugins_dir / "tests" / "test_acme_provider.py")
    assert tested.returncode == 0, tested.stdout + tested.stderr

    report = discover(live_echo.url, admin_key[1])
    assert report["acme"]["status"] == "registered"
    assert report["acme"]["class"] == "AcmeProvider"

    with FakeOpenAI(models=["acme-1"]) as fake:
        provider_config_create(
            name="acme",
            plugin="acme",
            settings={"base_url": fake.base_url},
            secrets={"api_key": "sk-acme-test-000000"},
        )
        answer = chat(live_echo.url, chat_key[1], "acme")
        assert answer["content"] == "You said: Hello"
        assert answer["provider"] == "acme" and answer["model"] == "acme-1"

        # The author edits the plugin: a reply transform, as new code would be.
        plugin_file.write_text(
            plugin_file.read_text() + "\n    async def chat_completion(self, request):\n"
            "        response = await super().chat_completion(request)\n"
            "        response.content = response.content.upper()\n"
            "        return response\n"
        )
        assert discover(live_echo.url, admin_key[1])["acme"]["status"] == "updated"
        assert chat(live_echo.url, chat_key[1], "acme")["content"] == "YOU SAID: HELLO"
        assert discover(live_echo.url, admin_key[1])["acme"]["status"] == "unchanged"


BROKEN_PLUGINS = {
    "syntax": ("def nope(:\n", "Syntax error at line 1"),
    "importfail": ("import no_such_module_anywhere\n", "ModuleNotFoundError"),
    "incomplete": (
        "from providers.base import AbstractAIProvider\n\n\n"
        "class IncompleteProvider(AbstractAIProvider):\n    pass\n",
        "does not implement",
    ),
    "wrongname": ("class SomethingElse:\n    pass\n", "no class WrongnameProvider"),
    "exiting": ("import sys\n\nsys.exit(3)\n", "SystemExit"),
    "openai": (
        "from providers.plugins.openai_provider import OpenAIProvider\n\n\n"
        "class OpenaiProvider(OpenAIProvider):\n    pass\n",
        "taken by a built-in",
    ),
}


def test_broken_plugins_are_reported_and_every_provider_keeps_serving(
    plugins_dir: Path, live_echo, admin_key, chat_key
) -> None:
    call_command(
        "startprovider",
        "--name=acme",
        "--display=Acme AI",
        "--url=https://api.acme.example/v1",
        "--model=acme-1",
    )
    assert discover(live_echo.url, admin_key[1])["acme"]["status"] == "registered"
    with FakeOpenAI(models=["acme-1"]) as fake:
        provider_config_create(name="echo", plugin="echo", is_default=True)
        provider_config_create(
            name="acme",
            plugin="acme",
            settings={"base_url": fake.base_url},
            secrets={"api_key": "sk-acme-test-000000"},
        )
        for name, (source, _) in BROKEN_PLUGINS.items():
            (plugins_dir / f"{name}_provider.py").write_text(source)
        # A working plugin broken by an edit keeps serving its last good code.
        (plugins_dir / "acme_provider.py").write_text("def broken(:\n")

        report = discover(live_echo.url, admin_key[1])

        for name, (_, reason) in BROKEN_PLUGINS.items():
            assert report[name]["status"] == "failed", name
            assert reason in report[name]["error"], (name, report[name]["error"])
        assert report["acme"]["status"] == "failed"
        assert chat(live_echo.url, chat_key[1], "echo")["content"] == "Echo: Hello"
        assert chat(live_echo.url, chat_key[1], "acme")["content"] == "You said: Hello"


def test_discover_plugins_command_reports_and_fails_on_a_broken_plugin(
    plugins_dir: Path, capsys
) -> None:
    call_command(
        "startprovider", "--name=acme", "--display=Acme", "--url=https://a.example", "--model=m"
    )
    call_command("discover_plugins")
    assert "registered acme" in capsys.readouterr().out

    (plugins_dir / "broken_provider.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(SystemExit) as exited:
        call_command("discover_plugins")
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "broken" in out and "ModuleNotFoundError" in out
    assert "unchanged  acme" in out


async def test_the_example_package_is_discovered_through_its_entry_point() -> None:
    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if "shout" not in names:
        message = "examples/echo-shout-plugin is not installed (make install installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    report = {r.name: r for r in await runtime.registry.discover_entry_points()}
    assert report["shout"].status == "registered"
    assert report["shout"].class_name == "ShoutProvider"
    from providers.runtime.registry import ProviderSpec
    from providers.types import ChatMessage, ChatRequest

    provider = await runtime.registry.apply(ProviderSpec("shout", "shout", {}))
    answer = await provider.chat_completion(
        ChatRequest(messages=[ChatMessage(role="user", content="quiet please")])
    )
    assert answer.content == "QUIET PLEASE!"
    await runtime.registry.shutdown_all()
