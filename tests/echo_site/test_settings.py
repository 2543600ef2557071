"""Settings come from the environment, with laptop defaults and loud mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.server_processes import free_port, manage

# Slow: every test imports the settings in a fresh interpreter.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def clean_environment() -> dict[str, str]:
    """Return this process's environment without the variables the settings' tests set themselves."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in {"ECHO_ENV", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ECHO_ENCRYPTION_KEYS"}
    }


def settings_of(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter with ENV; print a few of them."""
    clean = clean_environment()
    code = (
        "from django.conf import settings as s;"
        "print(s.ECHO_ENV, s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'],"
        " s.HOST, s.PORT, ','.join(s.ALLOWED_HOSTS))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "echo_site.settings",
            "ECHO_VAR_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_development_defaults_work_on_a_laptop(tmp_path: Path) -> None:
    result = settings_of(tmp_path, ECHO_ENV="development")
    assert result.returncode == 0, result.stderr
    env, engine, layer, host, port, hosts = result.stdout.split()
    assert (env, engine, host, port) == (
        "development",
        "django.db.backends.sqlite3",
        "127.0.0.1",
        "8000",
    )
    assert layer.endswith("InMemoryChannelLayer")
    # The development secret key is generated once and kept.
    key_file = tmp_path / "secret_key"
    first = key_file.read_text()
    settings_of(tmp_path, ECHO_ENV="development")
    assert key_file.read_text() == first
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = settings_of(tmp_path, ECHO_ENV="production")
    assert result.returncode != 0
    assert "SECRET_KEY is required when ECHO_ENV=production" in result.stderr


def test_scale_out_settings_come_from_urls(tmp_path: Path) -> None:
    result = settings_of(
        tmp_path,
        ECHO_ENV="production",
        SECRET_KEY="x" * 50,
        ECHO_ENCRYPTION_KEYS="ZWNoby10ZXN0LWVuY3J5cHRpb24ta2V5LTMyYnl0ZXM=",
        DATABASE_URL="postgresql://echo@127.0.0.1:5432/echo",
        REDIS_URL="redis://127.0.0.1:6379/0",
        ALLOWED_HOSTS="echo.example.com",
        PORT="9000",
    )
    assert result.returncode == 0, result.stderr
    _, engine, layer, _, port, hosts = result.stdout.split()
    assert engine == "django.db.backends.postgresql"
    assert layer == "channels_redis.core.RedisChannelLayer"
    assert (port, hosts) == ("9000", "echo.example.com")


def test_production_refuses_to_start_without_an_encryption_key(tmp_path: Path) -> None:
    result = settings_of(tmp_path, ECHO_ENV="production", SECRET_KEY="x" * 50)
    assert result.returncode != 0
    assert "ECHO_ENCRYPTION_KEYS is required when ECHO_ENV=production" in result.stderr
    result = settings_of(
        tmp_path, ECHO_ENV="production", SECRET_KEY="x" * 50, ECHO_ENCRYPTION_KEYS="not-a-key"
    )
    assert "ECHO_ENCRYPTION_KEYS: key 1 is not a Fernet key" in result.stderr


def test_development_generates_its_encryption_key_once(tmp_path: Path) -> None:
    settings_of(tmp_path, ECHO_ENV="development")
    key = (tmp_path / "encryption_key").read_text()
    settings_of(tmp_path, ECHO_ENV="development")
    assert (tmp_path / "encryption_key").read_text() == key
    assert oct((tmp_path / "encryption_key").stat().st_mode & 0o777) == "0o600"


def test_a_wrong_value_names_its_variable(tmp_path: Path) -> None:
    result = settings_of(tmp_path, ECHO_ENV="staging")
    assert "ECHO_ENV must be one of development, production, test" in result.stderr
    result = settings_of(tmp_path, ECHO_ENV="test", PORT="eighty")
    assert "PORT must be an integer" in result.stderr


def _development_env(tmp_path: Path) -> dict[str, str]:
    return {**clean_environment(), "ECHO_ENV": "development", "ECHO_VAR_DIR": str(tmp_path)}


def test_only_runserver_loads_daphne_and_twisted(tmp_path: Path) -> None:
    env = _development_env(tmp_path)
    code = (
        "import sys; from django.conf import settings;"
        "print('daphne' in settings.INSTALLED_APPS, 'twisted' in sys.modules)"
    )
    # A management command (as each uvicorn worker) imports neither.
    shell = manage(env, "shell", "-c", code)
    assert shell.split()[-2:] == ["False", "False"], shell
    # runserver is daphne's: the ASGI one, with its own options.
    assert "--noasgi" in manage(env, "runserver", "--help")


def test_runserver_serves_the_chat_socket(tmp_path: Path) -> None:
    """``manage.py runserver`` is an ASGI server: a client key opens the chat socket."""
    env = _development_env(tmp_path)
    manage(env, "migrate", "--noinput", "-v0")
    key = manage(env, "issue_api_key", "runserver-test", "--scope", "chat").strip()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with connect(
                    f"ws://127.0.0.1:{port}/ws/chat/",
                    additional_headers={"Authorization": f"Bearer {key}"},
                    open_timeout=5,
                ) as chat:
                    first = json.loads(chat.recv(timeout=10))
                break
            except OSError:  # not listening yet
                assert server.poll() is None, "runserver stopped"
                assert time.monotonic() < deadline, "runserver did not listen within 60 s"
                time.sleep(0.2)
        assert first["type"], first
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode(errors="replace")
    assert "ASGI/Daphne" in output, output
    assert key not in output
