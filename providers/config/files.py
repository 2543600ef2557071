"""Read ``config/{ECHO_ENV}.yaml``: the ``ai_providers``, ``routing`` and ``model_groups`` sections.

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
    """One provider as the YAML file describes it, variables expanded.

    UNSET_KEYS are the settings left out because their value refers to an
    unset variable (named in MISSING_VARIABLES): the import may excuse a
    "required" error on exactly those keys for a provider it adds disabled.
    """

    name: str
    plugin: str
    config: dict[str, Any]
    enabled: bool = True
    is_default: bool = False
    fallbacks: list[str] = field(default_factory=list)
    missing_variables: list[str] = field(default_factory=list)
    unset_keys: list[str] = field(default_factory=list)


def config_path(config_dir: Path | str, environment: str) -> Path:
    """Return the YAML file for ENVIRONMENT."""
    return Path(config_dir) / f"{environment}.yaml"


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


def read_config_document(path: Path) -> dict[str, Any]:
    """Return the top-level mapping of the YAML file PATH; raise ``ConfigFileError`` naming the problem."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: file not found.") from None
    except (OSError, UnicodeDecodeError) as exc:
        # A directory, an unreadable or a binary file: the system check calls
        # this on every manage.py command, so it must not raise anything else.
        raise ConfigFileError(f"{path}: cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping.")
    return document


def load_provider_entries(
    path: Path | str, environ: dict[str, str] | None = None
) -> list[ProviderEntry]:
    """Read PATH and return its providers; raise ``ConfigFileError`` naming the problem."""
    path = Path(path)
    environ = dict(os.environ if environ is None else environ)
    document = read_config_document(path)
    providers = document.get("ai_providers") or {}
    routing = document.get("routing") or {}
    if not isinstance(providers, dict):
        raise ConfigFileError(f"{path}: 'ai_providers' must be a mapping of provider names.")
    if not isinstance(routing, dict):
        raise ConfigFileError(f"{path}: 'routing' must be a mapping.")
    routing_fallbacks = routing.get("fallbacks") or {}
    if not isinstance(routing_fallbacks, dict):
        raise ConfigFileError(f"{path}: 'routing.fallbacks' must map provider names to lists.")
    unknown = sorted(str(name) for name in routing_fallbacks if name not in providers)
    if unknown:
        raise ConfigFileError(
            f"{path}: routing.fallbacks names {', '.join(map(repr, unknown))}, "
            "which is not in ai_providers."
        )
    default = routing.get("default")
    if default is not None and (not isinstance(default, str) or default not in providers):
        raise ConfigFileError(
            f"{path}: routing.default names {default!r}, which is not in ai_providers."
        )
    entries = []
    for name, raw in providers.items():
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigFileError(f"{path}: ai_providers.{name} must be a mapping of settings.")
        # Expand key by key, so that a key whose value refers to an unset
        # variable is left out whole: half a URL or an empty key is never
        # right, and the plugin's default (or a "required" error) is.
        # ``${VAR:-}`` is not unset: its empty default is meant.
        expanded: dict[str, Any] = {}
        missing: list[str] = []
        unset_keys: list[str] = []
        for key, value in raw.items():
            missing_here: list[str] = []
            result = expand(value, environ, missing_here)
            if missing_here:
                missing.extend(missing_here)
                unset_keys.append(str(key))
            else:
                expanded[key] = result
        config = {k: v for k, v in expanded.items() if k not in RESERVED_KEYS}
        fallbacks = expanded.get("fallbacks", routing_fallbacks.get(name, []))
        if not isinstance(fallbacks, list):
            raise ConfigFileError(f"{path}: fallbacks of {name!r} must be a list.")
        entries.append(
            ProviderEntry(
                name=str(name),
                plugin=str(expanded.get("plugin", name)),
                config=config,
                enabled=_flag(
                    expanded.get("enabled", True), f"{path}: ai_providers.{name}.enabled"
                ),
                is_default=(default == name)
                or _flag(expanded.get("default", False), f"{path}: ai_providers.{name}.default"),
                fallbacks=[str(f) for f in fallbacks],
                missing_variables=sorted(set(missing)),
                unset_keys=[k for k in unset_keys if k not in RESERVED_KEYS],
            )
        )
    defaults = [entry.name for entry in entries if entry.is_default]
    if len(defaults) > 1:
        raise ConfigFileError(
            f"{path}: more than one default provider ({', '.join(defaults)}); "
            "name one in routing.default."
        )
    return entries


def _flag(value: Any, where: str) -> bool:
    """Return VALUE read as a boolean; a string comes from ``${VAR}`` and is parsed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        # bool("false") is True: a flag read from the environment must be parsed.
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
    raise ConfigFileError(f"{where} must be true or false, got {value!r}.")


GROUP_KEYS = frozenset({"strategy", "deployments", "enabled"})


@dataclass(frozen=True, slots=True)
class ModelGroupEntry:
    """One model group as the YAML file describes it, variables expanded."""

    name: str
    strategy: Any
    deployments: Any
    enabled: Any = True
    missing_variables: list[str] = field(default_factory=list)


def load_model_group_entries(
    path: Path | str, environ: dict[str, str] | None = None
) -> list[ModelGroupEntry]:
    """Read the ``model_groups:`` section of PATH; raise ``ConfigFileError`` naming the problem.

    The shapes are checked here (a mapping of names to mappings with only
    ``strategy``, ``deployments`` and ``enabled``); the values are checked by
    the services when imported, as for every other write.
    """
    path = Path(path)
    environ = dict(os.environ if environ is None else environ)
    document = read_config_document(path)
    groups = document.get("model_groups") or {}
    if not isinstance(groups, dict):
        raise ConfigFileError(f"{path}: 'model_groups' must be a mapping of model group names.")
    entries = []
    for name, raw in groups.items():
        raw = raw or {}
        if not isinstance(raw, dict):
            raise ConfigFileError(f"{path}: model_groups.{name} must be a mapping.")
        unknown = sorted(str(key) for key in raw if key not in GROUP_KEYS)
        if unknown:
            raise ConfigFileError(
                f"{path}: model_groups.{name} has {', '.join(map(repr, unknown))}; "
                "a group has 'strategy', 'deployments' and 'enabled'."
            )
        missing: list[str] = []
        expanded = expand(raw, environ, missing)
        enabled = expanded.get("enabled", True)
        if isinstance(enabled, str):
            lowered = enabled.strip().lower()
            enabled = True if lowered in {"1", "true", "yes", "on"} else enabled
            enabled = False if lowered in {"0", "false", "no", "off"} else enabled
        entries.append(
            ModelGroupEntry(
                name=str(name),
                strategy=expanded.get("strategy", "weighted"),
                deployments=_yaml_deployments(expanded.get("deployments")),
                enabled=enabled,
                missing_variables=sorted(set(missing)),
            )
        )
    return entries


def _yaml_deployments(value: Any) -> Any:
    """Return VALUE's deployments with a weight written as digits (from ``${VAR}``) as a number."""
    if not isinstance(value, list):
        return value
    fixed = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("weight"), str):
            text = item["weight"].strip()
            item = {**item, "weight": int(text) if text.isdigit() else item["weight"]}
        fixed.append(item)
    return fixed
