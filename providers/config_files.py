"""Read ``config/{ECHO_ENV}.yaml``: the ``ai_providers`` and ``routing`` sections.

``${VAR}`` (and ``${VAR:-default}``) in any string is replaced from the
environment. A provider that refers to an unset variable is returned with
the names of those variables, so the import can add it disabled and say why,
instead of failing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
RESERVED_KEYS = {"plugin", "enabled", "default", "fallbacks"}


class ConfigFileError(ValueError):
    """The YAML file cannot be read as Echo configuration; the message says where."""


@dataclass(slots=True)
class ProviderEntry:
    """One provider as the YAML file describes it, variables expanded."""

    name: str
    plugin: str
    config: dict[str, Any]
    enabled: bool = True
    is_default: bool = False
    fallbacks: list[str] = field(default_factory=list)
    missing_variables: list[str] = field(default_factory=list)


def config_path(config_dir: Path, environment: str) -> Path:
    """Return the YAML file for ENVIRONMENT."""
    return config_dir / f"{environment}.yaml"


def expand(value: Any, environ: dict[str, str], missing: list[str]) -> Any:
    """Return VALUE with ``${VAR}`` expanded in every string; unset names go to MISSING."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if environ.get(name, "") != "":
                return environ[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        return VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [expand(v, environ, missing) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, environ, missing) for k, v in value.items()}
    return value


def load_provider_entries(path: Path, environ: dict[str, str] | None = None) -> list[ProviderEntry]:
    """Read PATH and return its providers; raise ``ConfigFileError`` naming the problem."""
    environ = dict(os.environ if environ is None else environ)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: file not found.") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping.")
    providers = document.get("ai_providers") or {}
    routing = document.get("routing") or {}
    if not isinstance(providers, dict):
        raise ConfigFileError(f"{path}: 'ai_providers' must be a mapping of provider names.")
    if not isinstance(routing, dict):
        raise ConfigFileError(f"{path}: 'routing' must be a mapping.")
    routing_fallbacks = routing.get("fallbacks") or {}
    if not isinstance(routing_fallbacks, dict):
        raise ConfigFileError(f"{path}: 'routing.fallbacks' must map provider names to lists.")
    default = routing.get("default")
    if default is not None and default not in providers:
        raise ConfigFileError(
            f"{path}: routing.default names {default!r}, which is not in ai_providers."
        )
    entries = []
    for name, raw in providers.items():
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigFileError(f"{path}: ai_providers.{name} must be a mapping of settings.")
        missing: list[str] = []
        expanded = expand(raw, environ, missing)
        config = {k: v for k, v in expanded.items() if k not in RESERVED_KEYS}
        # An unset variable leaves its key out rather than an empty string.
        for key, value in list(config.items()):
            if value == "" and isinstance(raw.get(key), str) and VARIABLE.search(raw[key]):
                del config[key]
        fallbacks = expanded.get("fallbacks", routing_fallbacks.get(name, []))
        if not isinstance(fallbacks, list):
            raise ConfigFileError(f"{path}: fallbacks of {name!r} must be a list.")
        entries.append(
            ProviderEntry(
                name=str(name),
                plugin=str(expanded.get("plugin", name)),
                config=config,
                enabled=bool(expanded.get("enabled", True)),
                is_default=(default == name) or bool(expanded.get("default", False)),
                fallbacks=[str(f) for f in fallbacks],
                missing_variables=sorted(set(missing)),
            )
        )
    return entries
