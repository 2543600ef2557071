"""``manage.py check_providers``: a line per provider, rows recorded, an honest exit status.

The command runs its ORM calls on asgiref's worker thread, so these tests
commit their rows (``transactional_db``) for it to see them.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from providers.base import AbstractAIProvider, PluginMetadata
from providers.config.services import provider_config_create
from providers.models import HealthCheck
from providers.runtime import process as runtime
from providers.testing.fake_openai import FakeOpenAI
from providers.types import ChatRequest, ChatResponse, HealthStatus
from tests.server_processes import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-check-0123456789-secret"


class FlakyProvider(AbstractAIProvider):
    """A provider that is down when its settings say so, with the key in its message."""

    @property
    def metadata(self) -> PluginMetadata:
        return PluginMetadata(name="Flaky", version="0.1")

    def get_config_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "api_key": {"type": "string", "writeOnly": True},
                "down": {"type": "boolean", "default": False},
                "delay": {"type": "number", "minimum": 0, "default": 0},
            },
        }

    async def initialize(self) -> None:
        pass

    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="ok", model="flaky-1", provider=self.name)

    async def health_check(self) -> HealthStatus:
        await asyncio.sleep(self.config["delay"])
        if self.config["down"]:
            return HealthStatus(available=False, error=f"key {self.config.get('api_key')} refused")
        return HealthStatus(available=True, models=["flaky-1"])

    async def list_models(self) -> list[str]:
        return ["flaky-1"]


@pytest.fixture
def providers(transactional_db) -> None:
    """Echo (up), flaky (down, its key in its error) and a disabled one."""
    runtime.registry.register(FlakyProvider, "flaky")
    provider_config_create(name="echo", plugin="echo", is_default=True)
    provider_config_create(
        name="flaky", plugin="flaky", settings={"down": True}, secrets={"api_key": SECRET}
    )
    provider_config_create(
        name="paused", plugin="echo", enabled=False, disabled_reason="Paused for billing."
    )


def run(*args: str) -> tuple[str, str, int]:
    """Run the command; return its stdout, stderr and exit status."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("check_providers", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), f"{err.getvalue()}{exc}", exc.returncode
    return out.getvalue(), err.getvalue(), 0


def lines_by_name(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line and line[0] != "-"}


def test_one_round_prints_each_provider_records_and_fails_when_one_is_down(providers):
    out, err, status = run()

    assert status == 1
    assert "Unavailable: flaky." in err
    lines = lines_by_name(out)
    assert sorted(lines) == ["echo", "flaky", "paused"]
    assert " up " in lines["echo"] and "ms" in lines["echo"] and "1 model" in lines["echo"]
    assert " DOWN " in lines["flaky"]
    assert "error: key sk-...cret refused" in lines["flaky"]  # masked, as everywhere
    assert lines["paused"].endswith("skipped (disabled: Paused for billing.)")
    assert SECRET not in out + err
    recorded = sorted(HealthCheck.objects.values_list("provider__name", "available"))
    assert recorded == [("echo", True), ("flaky", False)]


def test_every_checked_provider_up_exits_zero(providers):
    out, _, status = run("--provider", "echo")
    assert status == 0
    assert list(lines_by_name(out)) == ["echo"]
    assert HealthCheck.objects.get().provider.name == "echo"


def test_an_unknown_provider_is_a_usage_error(providers):
    out, err, status = run("--provider", "echo", "ghost")
    assert status == 2
    assert "No provider named 'ghost' is configured." in err
    assert not HealthCheck.objects.exists()


def test_a_slow_provider_is_down_after_the_timeout(providers):
    provider_config_create(name="slow", plugin="flaky", settings={"delay": 5})
    out, _, status = run("--provider", "slow", "--timeout", "0.2")
    assert status == 1
    assert "timed out after 0.2s" in lines_by_name(out)["slow"]


def test_watch_checks_each_interval_and_follows_edits(providers):
    out, _, status = run("--watch", "--interval", "0.2", "--rounds", "2", "--provider", "echo")
    assert status == 0
    assert out.count("-- ") == 2  # a timestamp per round
    assert out.count("echo  up") == 2
    assert HealthCheck.objects.filter(provider__name="echo").count() == 2


def test_checks_never_spend_tokens(transactional_db):
    with FakeOpenAI() as fake:
        provider_config_create(
            name="openai",
            plugin="openai",
            settings={"base_url": fake.base_url},
            secrets={"api_key": "sk-fake-check-000000000"},
        )
        out, _, status = run()
    assert status == 0, out
    assert " up " in lines_by_name(out)["openai"]
    assert fake.usage.completions == 0
    assert fake.usage.prompt_tokens == fake.usage.completion_tokens == 0
    assert not fake.requests_to("/v1/chat/completions")


@pytest.mark.slow
def test_the_exit_status_reaches_the_shell(tmp_path):
    """As cron sees it: a real process, a real database file."""
    env = {
        **os.environ,
        "ECHO_ENV": "test",
        "ECHO_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'echo.sqlite3'}",
    }
    env.pop("REDIS_URL", None)

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert manage("migrate", "--noinput").returncode == 0
    setup = (
        "from providers.config.services import provider_config_create as create;"
        "create(name='echo', plugin='echo');"
        "create(name='gone', plugin='openai',"
        f" settings={{'base_url': 'http://127.0.0.1:{free_port()}'}},"
        " secrets={'api_key': 'sk-nothing-listens-0000'})"
    )
    assert manage("shell", "-c", setup).returncode == 0

    down = manage("check_providers", "--timeout", "2")
    up = manage("check_providers", "--provider", "echo")

    assert down.returncode == 1, down.stderr
    assert "echo  up" in down.stdout and "gone  DOWN" in down.stdout
    assert "Unavailable: gone." in down.stderr
    assert up.returncode == 0, up.stderr
