"""Read Echo's settings from the environment through small typed readers.

Each reader fails loudly with ``ImproperlyConfigured`` naming the variable, so a
typo in a deployment shows up at start-up rather than as odd behaviour later.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

ENVIRONMENTS = ("development", "production", "test")


def env_str(name: str, default: str | None = None) -> str | None:
    """Return the variable NAME, or DEFAULT when it is unset or empty."""
    value = os.environ.get(name, "")
    return value if value != "" else default


def env_bool(name: str, default: bool) -> bool:
    """Return NAME read as a boolean (1/0, true/false, yes/no, on/off)."""
    value = env_str(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}.")


def env_int(name: str, default: int, *, minimum: int | None = None, unit: str = "") -> int:
    """Return NAME read as an integer, refusing one below MINIMUM (UNIT explains the number)."""
    value = env_str(name)
    if value is None:
        number = default
    else:
        try:
            number = int(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}{unit}.")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """Return NAME read as a comma-separated list."""
    value = env_str(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def echo_env() -> str:
    """Return ECHO_ENV, one of development, production or test."""
    value = env_str("ECHO_ENV", "development")
    if value not in ENVIRONMENTS:
        raise ImproperlyConfigured(
            f"ECHO_ENV must be one of {', '.join(ENVIRONMENTS)}, got {value!r}."
        )
    return value


def secret_key(environment: str, var_dir: Path) -> str:
    """Return SECRET_KEY; in development generate one once and keep it under var/."""
    value = env_str("SECRET_KEY")
    if value:
        return value
    if environment == "production":
        raise ImproperlyConfigured(
            "SECRET_KEY is required when ECHO_ENV=production. "
            'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(50))"'
        )
    if environment == "test":
        return "echo-test-secret-key-not-for-production"
    key_file = var_dir / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


# A fixed key for the test suite only: test databases hold no real secrets.
TEST_ENCRYPTION_KEY = "ZWNoby10ZXN0LWVuY3J5cHRpb24ta2V5LTMyYnl0ZXM="


def encryption_keys(environment: str, var_dir: Path) -> list[str]:
    """Return ECHO_ENCRYPTION_KEYS; in development generate one once and keep it under var/."""
    from cryptography.fernet import Fernet

    keys = env_list("ECHO_ENCRYPTION_KEYS", [])
    if not keys:
        if environment == "production":
            raise ImproperlyConfigured(
                "ECHO_ENCRYPTION_KEYS is required when ECHO_ENV=production (it encrypts provider "
                "keys at rest). Generate one with: python -c "
                '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
            )
        if environment == "test":
            return [TEST_ENCRYPTION_KEY]
        key_file = var_dir / "encryption_key"
        if not key_file.exists():
            var_dir.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.write_text(Fernet.generate_key().decode())
        keys = [key_file.read_text().strip()]
    for index, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            raise ImproperlyConfigured(
                f"ECHO_ENCRYPTION_KEYS: key {index} is not a Fernet key "
                "(32 url-safe base64-encoded bytes)."
            ) from None
    return keys
