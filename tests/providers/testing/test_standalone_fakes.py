"""The fakes as commands: they serve until Ctrl-C or SIGTERM, and exit 0 when told to stop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
AUTH = {"Authorization": "Bearer sk-standalone"}


def _ignore_sigint() -> None:
    """What a shell does for a job it starts in the background: the child inherits it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "stop"),
    [
        (["providers.testing.fake_openai", "--port", "0"], signal.SIGINT),
        (["providers.testing.fake_anthropic", "--port", "0"], signal.SIGINT),
        (["providers.testing.fake_ollama", "--port", "0"], signal.SIGTERM),
        (["providers.testing.fake_upstreams", "--openai", "0", "--ollama", "0"], signal.SIGINT),
    ],
    ids=["openai", "anthropic", "ollama", "upstreams"],
)
def test_it_runs_standalone_until_interrupted(command: list[str], stop: signal.Signals) -> None:
    # Started with SIGINT ignored, as from a shell's background job: Ctrl-C must still stop it.
    process = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint,
    )
    try:
        line = process.stdout.readline()
        base_url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        answer = httpx.get(f"{base_url}/v1/models", headers=AUTH, timeout=5)
        assert answer.status_code < 500
        process.send_signal(stop)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
