"""Django system checks for Echo's provider configuration files."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from providers.config.files import (
    ConfigFileError,
    config_path,
    load_model_group_entries,
    load_provider_entries,
)


def check_provider_yaml(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report a YAML file for this ECHO_ENV that cannot be read (providers.E001)."""
    path = config_path(settings.ECHO_CONFIG_DIR, settings.ECHO_ENV)
    if not path.exists():
        return [
            checks.Warning(
                f"No provider configuration file at {path}.",
                hint="Create it with an 'ai_providers:' mapping, or set ECHO_CONFIG_DIR.",
                id="providers.W001",
            )
        ]
    try:
        load_provider_entries(path)
        load_model_group_entries(path)
    except ConfigFileError as exc:
        return [
            checks.Error(
                str(exc),
                hint="Fix the file; 'manage.py sync_providers --dry-run' shows what it would import.",
                id="providers.E001",
            )
        ]
    return []
