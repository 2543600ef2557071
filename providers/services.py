"""Writes to provider configurations: the one path for the admin, the API and the import.

Each service validates first and changes nothing when the input is bad
(``ProviderConfigError`` names every bad field); on success it saves inside a
transaction, and the post-save signal reloads the provider once committed.

Stored secrets that no key in ECHO_ENCRYPTION_KEYS decrypts are never merged
with: a change that sends secrets replaces them all, one that sends none
keeps the ciphertext as it is (a key added back may still open it), and a
change that would leave the provider enabled without sending secrets is
refused, naming ``secrets``: it could not serve.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from providers.audit import SYSTEM, Actor, record_change, snapshot
from providers.base import secret_fields
from providers.errors import ProviderConfigError, ProviderError, ProviderNotFoundError
from providers.masking import redact
from providers.models import ProviderConfig
from providers.registry import ProviderSpec
from providers.runtime import registry, run_in_serving_loop
from providers.secret_box import DECRYPTION_FAILED
from providers.upstream_policy import base_url_problem

FALLBACK_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}(/.+)?$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REQUIRED_MESSAGE = "This field is required."
# Words the management API uses after /plugins/: a provider so named could not be reached there.
RESERVED_NAMES = frozenset({"health", "metadata", "instances", "discover"})


def plugin_schema(plugin: str) -> dict[str, Any]:
    """Return the normalized config schema of PLUGIN; raise ``ProviderNotFoundError``."""
    return registry.plugin(plugin).config_schema()


def split_config(plugin: str, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat CONFIG into (settings, secrets) by PLUGIN's schema."""
    secret_names = secret_fields(plugin_schema(plugin))
    settings = {k: v for k, v in config.items() if k not in secret_names}
    secrets = {k: v for k, v in config.items() if k in secret_names}
    return settings, secrets


# Error reports show none of these locals: they hold plaintext secrets, new ones
# included (neither live nor stored yet, so no redaction would know them).
@sensitive_variables("secrets", "merged")
def provider_config_errors(
    *,
    plugin: str,
    settings: dict[str, Any],
    secrets: dict[str, Any],
    fallbacks: list[str] | tuple[str, ...] = (),
    name: str | None = None,
    enabled: bool = True,
) -> dict[str, list[str]]:
    """Return every problem with a provider configuration, per field (empty when valid).

    A disabled provider may lack required settings (its key's variable is
    unset, say); they are required again the moment it is enabled.
    """
    errors: dict[str, list[str]] = {}
    if name is not None and not NAME_PATTERN.match(name):
        errors["name"] = [
            "Use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit."
        ]
    elif name in RESERVED_NAMES:
        errors["name"] = [f"{name!r} is reserved by the API; choose another name."]
    if not isinstance(fallbacks, (list, tuple)) or not all(isinstance(f, str) for f in fallbacks):
        errors["fallbacks"] = ["Must be a list of provider names ('name' or 'name/model')."]
    else:
        bad = [f for f in fallbacks if not FALLBACK_PATTERN.match(f)]
        if bad:
            errors["fallbacks"] = [f"Not a provider name or 'name/model': {', '.join(bad)}."]
        elif name is not None and any(f.split("/", 1)[0] == name for f in fallbacks):
            errors["fallbacks"] = ["A provider cannot fall back to itself."]
    if not isinstance(settings, dict):
        errors["settings"] = ["Must be an object."]
    if not isinstance(secrets, dict):
        errors["secrets"] = ["Must be an object."]
    if "settings" in errors or "secrets" in errors:
        return errors
    try:
        cls = registry.plugin(plugin)
    except ProviderNotFoundError as exc:
        errors["plugin"] = [exc.message]
        return errors
    schema = cls.config_schema()
    secret_names = secret_fields(schema)
    misplaced = sorted(k for k in settings if k in secret_names)
    for key in misplaced:
        errors[key] = ["This is a secret: send it in 'secrets', not 'settings'."]
    merged = {k: v for k, v in {**settings, **secrets}.items() if v is not None}
    for field, messages in cls.__new__(cls).get_config_errors(merged).items():
        if not enabled and messages == [REQUIRED_MESSAGE]:
            continue
        errors[field] = messages
    # Every plugin's upstream URLs obey the policy, not only HTTPProvider's
    # (which checks base_url itself, and each connection it opens).
    for field in url_settings(schema, merged):
        problem = None if field in errors else base_url_problem(merged[field])
        if problem:
            errors[field] = [problem]
    return errors


def url_settings(schema: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Return the keys of CONFIG that name an upstream URL: ``base_url``, ``*_url``, or ``format: uri``."""
    properties = schema.get("properties") or {}
    return [
        key
        for key, value in config.items()
        if isinstance(value, str)
        and (
            key == "base_url"
            or key.endswith("_url")
            or (properties.get(key) or {}).get("format") == "uri"
        )
    ]


def _raise_if(errors: dict[str, list[str]]) -> None:
    if errors:
        summary = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items())
        raise ProviderConfigError(f"Invalid provider configuration: {summary}", errors=errors)


def _new_secrets(config: ProviderConfig, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Return CONFIG's secrets after CHANGES; None when they stay as stored, unreadable.

    Raise ``ProviderConfigError`` naming ``secrets`` when they cannot be read
    and the change would leave the provider enabled without new ones.
    """
    partial = changes.get("secrets") or {}
    stored = config.readable_secrets()
    if stored is not None:
        return merge_partial(stored, partial if isinstance(partial, dict) else {})
    if isinstance(partial, dict) and partial:
        return merge_partial({}, partial)  # the unreadable ones are replaced, not merged
    if bool(changes.get("enabled", config.enabled)):
        _raise_if(
            {
                "secrets": [
                    f"{DECRYPTION_FAILED} Send the secrets again (they replace the stored "
                    "ones), or disable the provider."
                ]
            }
        )
    return None


def merge_partial(current: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    """Return CURRENT updated by PARTIAL, where a None value removes the key."""
    merged = dict(current)
    for key, value in partial.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


@transaction.atomic
def provider_config_create(
    *,
    name: str,
    plugin: str,
    settings: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
    enabled: bool = True,
    is_default: bool = False,
    fallbacks: list[str] | None = None,
    disabled_reason: str = "",
    actor: Actor = SYSTEM,
) -> ProviderConfig:
    """Create provider NAME; raise ``ProviderConfigError`` naming each bad field.

    ACTOR (who, through what) goes into the audit trail with the change.
    """
    settings, secrets, fallbacks = dict(settings or {}), dict(secrets or {}), list(fallbacks or [])
    errors = provider_config_errors(
        plugin=plugin,
        settings=settings,
        secrets=secrets,
        fallbacks=fallbacks,
        name=name,
        enabled=enabled,
    )
    if ProviderConfig.objects.filter(name=name).exists():
        errors.setdefault("name", []).append(f"A provider named {name!r} already exists.")
    _raise_if(errors)
    if is_default:
        _take_default_from_others(name, actor)
    config = ProviderConfig.objects.create(
        name=name,
        plugin=plugin,
        settings=settings,
        secrets=secrets,
        enabled=enabled,
        is_default=is_default,
        fallbacks=fallbacks,
        disabled_reason="" if enabled else disabled_reason,
    )
    record_change(name=name, before=None, after=snapshot(config), actor=actor)
    return config


def _take_default_from_others(name: str, actor: Actor) -> None:
    """Clear the default flag of every other provider, auditing each."""
    for other in (
        ProviderConfig.objects.select_for_update().filter(is_default=True).exclude(name=name)
    ):
        before = snapshot(other)
        ProviderConfig.objects.filter(pk=other.pk).update(is_default=False)
        record_change(
            name=other.name, before=before, after={**before, "is_default": False}, actor=actor
        )


UPDATABLE = {
    "plugin",
    "enabled",
    "is_default",
    "fallbacks",
    "settings",
    "secrets",
    "disabled_reason",
}


@transaction.atomic
def provider_config_update(
    *, config: ProviderConfig, changes: dict[str, Any], actor: Actor = SYSTEM
) -> ProviderConfig:
    """Apply CHANGES to CONFIG and save it.

    ``settings`` and ``secrets`` in CHANGES are partial: their keys are merged
    into the stored ones, and a None value removes a key. Raise
    ``ProviderConfigError`` and change nothing when the result is invalid.
    """
    unknown = sorted(set(changes) - UPDATABLE)
    if unknown:
        _raise_if({field: ["Unknown field."] for field in unknown})
    config = ProviderConfig.objects.select_for_update().get(pk=config.pk)
    before = snapshot(config)
    for key in ("settings", "secrets"):
        if key in changes and not isinstance(changes[key], dict):
            _raise_if({key: ["Must be an object."]})
    plugin = changes.get("plugin", config.plugin)
    settings = merge_partial(config.settings, changes.get("settings") or {})
    secrets = _new_secrets(config, changes)
    fallbacks = changes.get("fallbacks", config.fallbacks)
    enabled = bool(changes.get("enabled", config.enabled))
    _raise_if(
        provider_config_errors(
            plugin=plugin,
            settings=settings,
            # Unreadable secrets kept as they are belong to a disabled provider:
            # required ones are not asked for.
            secrets=secrets if secrets is not None else {},
            fallbacks=fallbacks,
            name=config.name,
            enabled=enabled,
        )
    )
    if changes.get("is_default"):
        _take_default_from_others(config.name, actor)
    config.plugin = plugin
    config.settings = settings
    if secrets is not None:
        config.secrets = secrets
    config.fallbacks = list(fallbacks)
    if "enabled" in changes:
        config.enabled = bool(changes["enabled"])
    if "is_default" in changes:
        config.is_default = bool(changes["is_default"])
    if config.enabled:
        config.disabled_reason = ""
    elif "disabled_reason" in changes:
        config.disabled_reason = changes["disabled_reason"]
    config.save()
    record_change(name=config.name, before=before, after=snapshot(config), actor=actor)
    return config


@sensitive_variables("secrets", "spec", "changes")
def provider_config_update_live(
    *, config: ProviderConfig, changes: dict[str, Any], actor: Actor = SYSTEM
) -> ProviderConfig:
    """Apply CHANGES to CONFIG, but only once the new instance has started.

    The new instance is validated, built and initialized before anything is
    saved, so a configuration that fails validation (``ProviderConfigError``)
    or initialization (``ProviderInitializationError``) changes neither the
    database nor the serving instance. The save's signal then reloads the
    provider once more from the committed row, here and in the other workers.
    """
    settings = merge_partial(config.settings, changes.get("settings") or {})
    secrets = _new_secrets(config, changes) or {}
    fallbacks = changes.get("fallbacks", config.fallbacks)
    enabled = bool(changes.get("enabled", config.enabled))
    _raise_if(
        provider_config_errors(
            plugin=config.plugin,
            settings=settings,
            secrets=secrets,
            fallbacks=fallbacks,
            name=config.name,
            enabled=enabled,
        )
    )
    if enabled:
        spec = ProviderSpec(
            name=config.name,
            plugin=config.plugin,
            config={**settings, **secrets},
            fallbacks=tuple(fallbacks or ()),
            is_default=bool(changes.get("is_default", config.is_default)),
        )
        try:
            run_in_serving_loop(registry.apply, spec)
        except ProviderError as exc:
            # The serving instance cannot strip secrets it never had: the new ones.
            exc.message = redact(exc.message, [str(v) for v in secrets.values() if v])
            raise
    return provider_config_update(config=config, changes=changes, actor=actor)


@transaction.atomic
def provider_config_delete(*, config: ProviderConfig, actor: Actor = SYSTEM) -> None:
    """Delete CONFIG; the provider leaves service once the deletion commits."""
    before = snapshot(config)
    name = config.name
    config.delete()
    record_change(name=name, before=before, after=None, actor=actor)
