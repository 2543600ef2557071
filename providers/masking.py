"""The one way Echo shows a secret: masked, never whole."""

from __future__ import annotations

from typing import Any

MASK = "****"


def mask_secret(value: Any) -> str:
    """Return VALUE masked like ``sk-...f3a9``; short or empty values show no characters."""
    if value in (None, ""):
        return ""
    text = str(value)
    if len(text) < 12:
        return MASK
    return f"{text[:3]}...{text[-4:]}"


def mask_config(config: dict[str, Any], secret_names: set[str]) -> dict[str, Any]:
    """Return CONFIG with the values of SECRET_NAMES masked."""
    return {k: (mask_secret(v) if k in secret_names else v) for k, v in config.items()}


def redact(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """Return TEXT with every occurrence of each secret replaced by its mask."""
    for secret in secrets:
        if secret and len(str(secret)) >= 4:
            text = text.replace(str(secret), mask_secret(secret))
    return text
