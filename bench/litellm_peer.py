"""LiteLLM's proxy as the peer: install it in its own virtual environment, configure and start it.

The environment (``var/bench/litellm-venv``) is built from
``bench/litellm-requirements.txt`` and reused while that file is unchanged.
The proxy runs with one worker, no retries, no callbacks and no database,
against the same fake upstream as everything else.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("litellm-requirements.txt")
MODEL = "gpt-4o-mini"


def ensure_installed(venv: Path, *, timeout: float = 1200) -> tuple[Path | None, str]:
    """Return the ``litellm`` program in VENV (installing it first if needed) and a note.

    On failure return None and what went wrong (the pip output's tail).
    """
    program = venv / "bin" / "litellm"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    marker = venv / ".bench-requirements"
    if program.exists() and marker.exists() and marker.read_text() == digest:
        return program, "reused"
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not install LiteLLM: {type(exc).__name__}: {exc}"
    if done.returncode != 0 or not program.exists():
        tail = (done.stderr or done.stdout)[-600:]
        return None, f"pip could not install LiteLLM (exit {done.returncode}): {tail}"
    marker.write_text(digest)
    return program, "installed"


def version(venv: Path) -> str | None:
    """Return the LiteLLM version installed in VENV, or None."""
    try:
        done = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def write_config(path: Path, upstream_base: str) -> Path:
    """Write a proxy config to PATH: one model on UPSTREAM_BASE, no retries, callbacks or database."""
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": upstream_base,
                    "api_key": "sk-bench-0000000000",
                    "max_retries": 0,
                },
            }
        ],
        "litellm_settings": {
            "num_retries": 0,
            "request_timeout": 600,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "set_verbose": False,
            "json_logs": False,
        },
        "router_settings": {"num_retries": 0, "retry_after": 0},
        "general_settings": {"disable_spend_logs": True, "disable_reset_budget": True},
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def command(program: Path, config: Path, port: int) -> list[str]:
    """Return the proxy's command line: one worker on loopback PORT."""
    return [
        str(program),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def environment(base: dict[str, str]) -> dict[str, str]:
    """Return BASE without a database or Redis, with LiteLLM kept off the internet."""
    env = {k: v for k, v in base.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        {
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            # Without it the proxy fetches a price list from the internet at start-up.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
        }
    )
    return env
