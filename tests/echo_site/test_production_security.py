"""Production transport security: secure cookies, HSTS, the HTTPS redirect, ``check --deploy``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.echo_site.test_settings import settings_of

ROOT = Path(__file__).resolve().parents[2]
# A strong key: check --deploy rightly warns about a short or repetitive one.
PRODUCTION = {
    "ECHO_ENV": "production",
    "SECRET_KEY": "u7Zq-3vKx9_LmP2rTb8WnYc4HdE6JfGsAq1oRt5VyBiXkMzNw0Ce",
    "ECHO_ENCRYPTION_KEYS": "ZWNoby10ZXN0LWVuY3J5cHRpb24ta2V5LTMyYnl0ZXM=",
    "ALLOWED_HOSTS": "echo.example.com",
}
SHOWN = (
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
)


def security_settings(tmp_path: Path, **env: str) -> dict[str, str]:
    """Return the security settings a fresh interpreter reads from ENV, as text."""
    code = (
        "from django.conf import settings as s;"
        f"[print(name, repr(getattr(s, name, None))) for name in {SHOWN!r}]"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {*PRODUCTION, "REDIS_URL"}}
    result = subprocess.run(
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
    assert result.returncode == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def check_deploy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {*PRODUCTION, "REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean, "ECHO_VAR_DIR": str(tmp_path), **PRODUCTION, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_production_turns_every_protection_on(tmp_path: Path) -> None:
    shown = security_settings(tmp_path, **PRODUCTION)
    assert shown["SESSION_COOKIE_SECURE"] == "True"
    assert shown["CSRF_COOKIE_SECURE"] == "True"
    assert shown["SECURE_SSL_REDIRECT"] == "True"
    assert int(shown["SECURE_HSTS_SECONDS"]) >= 365 * 24 * 3600
    assert shown["SECURE_HSTS_INCLUDE_SUBDOMAINS"] == "True"
    assert shown["SECURE_HSTS_PRELOAD"] == "True"
    # Not trusted unless the deployment says a proxy sets it: a client could forge it.
    assert shown["SECURE_PROXY_SSL_HEADER"] == "None"


@pytest.mark.slow
def test_development_keeps_plain_http_working(tmp_path: Path) -> None:
    shown = security_settings(tmp_path, ECHO_ENV="development")
    assert shown["SESSION_COOKIE_SECURE"] == "False"
    assert shown["SECURE_SSL_REDIRECT"] == "False"
    assert shown["SECURE_HSTS_SECONDS"] == "0"


@pytest.mark.slow
def test_each_protection_is_configurable(tmp_path: Path) -> None:
    shown = security_settings(
        tmp_path,
        **PRODUCTION,
        SECURE_SSL_REDIRECT="false",
        SECURE_HSTS_SECONDS="3600",
        SECURE_HSTS_PRELOAD="false",
        ECHO_PROXY_SETS_X_FORWARDED_PROTO="true",
    )
    assert shown["SECURE_SSL_REDIRECT"] == "False"
    assert shown["SECURE_HSTS_SECONDS"] == "3600"
    assert shown["SECURE_HSTS_PRELOAD"] == "False"
    assert shown["SECURE_PROXY_SSL_HEADER"] == "('HTTP_X_FORWARDED_PROTO', 'https')"


@pytest.mark.slow
def test_a_bad_value_names_its_variable(tmp_path: Path) -> None:
    result = settings_of(tmp_path, ECHO_ENV="test", SECURE_HSTS_SECONDS="-1")
    assert result.returncode != 0
    assert "SECURE_HSTS_SECONDS" in result.stderr
    result = settings_of(tmp_path, ECHO_ENV="test", ECHO_LOGIN_FAILURES_PER_USERNAME="0")
    assert result.returncode != 0
    assert "ECHO_LOGIN_FAILURES_PER_USERNAME" in result.stderr


@pytest.mark.slow
def test_check_deploy_is_clean_in_production(tmp_path: Path) -> None:
    result = check_deploy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow
def test_check_deploy_still_sees_the_browser_middleware(tmp_path: Path) -> None:
    """Django's own middleware checks are silenced (BrowserMiddleware runs it); Echo's are not."""
    result = check_deploy(tmp_path, SECURE_SSL_REDIRECT="false", SECURE_HSTS_SECONDS="0")
    assert result.returncode != 0
    assert "echo_site.W004" in result.stderr + result.stdout
    assert "echo_site.W008" in result.stderr + result.stdout


@pytest.fixture
def https_only(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SESSION_COOKIE_SECURE = True


def test_plain_http_pages_are_redirected_to_https(https_only, db) -> None:
    response = Client().get("/accounts/login/")
    assert response.status_code == 301
    assert response["Location"].startswith("https://")


def test_a_forged_forwarded_proto_is_not_trusted_without_the_setting(https_only, db) -> None:
    response = Client().get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 301


def test_behind_a_declared_proxy_https_pages_get_hsts(https_only, settings, db) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    response = Client().get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert response["Strict-Transport-Security"].startswith("max-age=3600")


def test_load_balancer_probes_over_plain_http_are_not_redirected(https_only, db) -> None:
    assert Client().get("/health").status_code in (200, 503)
