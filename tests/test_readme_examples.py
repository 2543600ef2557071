"""The README's curl examples run, as written, against a live Echo.

Echo serves over real HTTP with the echo provider and an ``openai`` provider
pointed at the fake OpenAI upstream, as the README's offline demo sets up.
Each example must exit 0 with a 2xx answer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from providers.config.services import provider_config_create
from providers.testing.fake_anthropic import FakeAnthropic
from providers.testing.fake_openai import FakeOpenAI

# Slow: a live server, and curl for every README example.
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


def curl_examples() -> list[str]:
    """Return every curl command in the README's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [
            line.split("  #")[0].strip()
            for line in joined.splitlines()
            if line.strip().startswith("curl ")
        ]
    return commands


def test_the_readme_has_the_guide_examples() -> None:
    text = " ".join(curl_examples())
    for endpoint in (
        "/plugins/ ",
        "/status",
        "/reload",
        "/config",
        "/plugins/discover",
        "/plugins/health",
        "/plugins/metadata",
        "/config-schema",
        "/chat",
    ):
        assert endpoint in text, endpoint


@pytest.fixture
def demo(live_echo, chat_key, admin_key):
    with FakeOpenAI() as openai, FakeAnthropic() as anthropic:
        provider_config_create(name="echo", plugin="echo", is_default=True)
        for name, fake in (("openai", openai), ("anthropic", anthropic)):
            provider_config_create(
                name=name,
                plugin=name,
                settings={"base_url": fake.base_url},
                secrets={"api_key": "sk-fake-readme-000000"},
            )
        yield {
            **os.environ,
            "ECHO": live_echo.url,
            "ECHO_KEY": admin_key[1],
            "CHAT_KEY": chat_key[1],
        }


@pytest.mark.skipif(
    shutil.which("curl") is None and os.environ.get("CI") != "true", reason="curl is not installed"
)
@pytest.mark.parametrize("command", curl_examples())
def test_readme_example_runs(demo, command: str) -> None:
    strict = command.replace("curl ", "curl -sS --fail-with-body --max-time 10 ", 1)
    result = subprocess.run(
        ["bash", "-c", strict], env=demo, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
