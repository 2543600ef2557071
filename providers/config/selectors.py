"""Reads of provider configurations and their live state, for the API and the admin.

Selectors only read: the database rows and what this process's registry
knows. Every secret that leaves here is masked.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet

from providers.errors import ProviderError, ProviderNotFoundError
from providers.models import HealthCheck, ModelGroup, ProviderConfig, ProviderConfigChange
from providers.runtime import process as runtime
from providers.secrets.masking import redact
from providers.secrets.values import config_secret_values


def provider_config_list() -> QuerySet[ProviderConfig]:
    """Return every configured provider, by name."""
    return ProviderConfig.objects.order_by("name")


def provider_config_get(*, name: str) -> ProviderConfig:
    """Return the configuration of provider NAME; raise ``ProviderNotFoundError`` (404)."""
    row = ProviderConfig.objects.filter(name=name).first()
    if row is None:
        raise ProviderNotFoundError(f"No provider named {name!r} is configured.", provider=name)
    return row


def timestamp_datetime(timestamp: float | None) -> dt.datetime | None:
    """Return the epoch TIMESTAMP as an aware UTC datetime (None stays None)."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def provider_capabilities(config: ProviderConfig) -> list[str]:
    """Return what provider CONFIG can do, from its plugin's metadata.

    The live instance answers when there is one; otherwise the plugin class
    does, so that a disabled or failing provider still shows its capabilities.
    """
    try:
        if config.name in runtime.registry:
            metadata = runtime.registry.get(config.name).metadata
        else:
            metadata = runtime.registry.plugin(config.plugin).plugin_metadata()
        return metadata.as_dict()["capabilities"]
    except Exception:  # a missing plugin or a plugin bug must not break a listing
        return []


def provider_secret_values(*, name: str, config: ProviderConfig | None = None) -> list[str]:
    """Return the secret values of provider NAME, stored and live, to keep them out of messages.

    The live instance's may be older than the row's. No plugin code runs:
    one that raises must not break a status page, the admin or a health round.
    """
    stored = (config.readable_secrets() or {}) if config else {}
    # Every stored secret is one, whatever the plugin's schema says of its name.
    return config_secret_values(stored, stored) + runtime.registry.secret_values(name)


def _redacted(text: str | None, name: str, config: ProviderConfig | None) -> str | None:
    # Plugins must keep secrets out of their messages; this catches the ones that do not.
    return redact(text, provider_secret_values(name=name, config=config)) if text else text


def provider_live_status(*, name: str, config: ProviderConfig | None = None) -> dict[str, Any]:
    """Return what this process's registry knows of provider NAME, secrets masked.

    ``last_error`` is the last load or reload error (a failed reload leaves
    the previous instance serving, so a provider can be loaded and have one).
    """
    status = runtime.registry.status(name)
    return {
        "loaded": status["loaded"],
        "last_error": _redacted(status["last_error"], name, config),
        "config": status.get("config"),
        "loaded_at": timestamp_datetime(status.get("loaded_at")),
        "generation": status.get("generation"),
        "active_requests": status.get("active_requests", 0),
    }


def provider_last_error(config: ProviderConfig) -> str | None:
    """Return why provider CONFIG is not (or not fully) serving: its load error or disabled reason."""
    error = runtime.registry.last_error(config.name)
    if error:
        return _redacted(error, config.name, config)
    if not config.enabled:
        return config.disabled_reason or "Disabled."
    if config.name not in runtime.registry and config.secrets_error:
        return config.secrets_error
    return None


def plugin_list() -> list[dict[str, str]]:
    """Return the installed plugin classes: name, class path, source and origin."""
    return [
        {
            "name": name,
            "class": f"{entry.cls.__module__}.{entry.cls.__qualname__}",
            "source": entry.source,
            "origin": entry.origin,
        }
        for name, entry in sorted(runtime.registry.plugins().items())
    ]


def provider_instances() -> dict[str, dict[str, Any]]:
    """Return the live provider instances of this process by name, secrets masked."""
    instances = {}
    for name in runtime.registry.names():
        status = runtime.registry.status(name)
        if not status["loaded"]:  # taken out of service since names() was read
            continue
        provider = runtime.registry.get(name)
        instances[name] = {
            "plugin": status["plugin"],
            "class": f"{type(provider).__module__}.{type(provider).__qualname__}",
            "is_default": status["is_default"],
            "fallbacks": status["fallbacks"],
            "config": status["config"],
            "loaded_at": timestamp_datetime(status["loaded_at"]),
            "generation": status["generation"],
            "active_requests": status["active_requests"],
            "last_error": status["last_error"],
        }
    return instances


def provider_metadata_all() -> dict[str, dict[str, Any]]:
    """Return the plugin metadata of every live provider of this process, by name."""
    metadata = {}
    for name in runtime.registry.names():
        try:
            metadata[name] = runtime.registry.metadata(name).as_dict()
        except ProviderError:  # left service while we read, or its plugin raised (recorded)
            continue
    return metadata


def health_check_list(
    *,
    provider: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> QuerySet[HealthCheck]:
    """Return recorded health checks, newest first, filtered by provider name and time."""
    checks = HealthCheck.objects.select_related("provider").order_by("-checked_at", "-pk")
    if provider:
        checks = checks.filter(provider__name=provider)
    if since is not None:
        checks = checks.filter(checked_at__gte=since)
    if until is not None:
        checks = checks.filter(checked_at__lte=until)
    return checks


def provider_history(*, name: str) -> QuerySet[ProviderConfigChange]:
    """Return the audit trail of provider NAME, newest first, also after its deletion.

    Raise ``ProviderNotFoundError`` (404) when NAME is neither configured nor in the trail.
    """
    changes = provider_change_list(provider=name)
    if not changes.exists() and not ProviderConfig.objects.filter(name=name).exists():
        raise ProviderNotFoundError(
            f"No provider named {name!r} is configured or has a history.", provider=name
        )
    return changes


def provider_change_list(
    *,
    provider: str | None = None,
    actor: str | None = None,
    source: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> QuerySet[ProviderConfigChange]:
    """Return audited configuration changes, newest first, filtered by each given value.

    PROVIDER, ACTOR, SOURCE and ACTION match exactly; SINCE and UNTIL bound
    the time, both included. Deleted providers keep their history.
    """
    changes = ProviderConfigChange.objects.order_by("-changed_at", "-id")
    exact = {"provider_name": provider, "actor": actor, "source": source, "action": action}
    changes = changes.filter(**{field: value for field, value in exact.items() if value})
    if since is not None:
        changes = changes.filter(changed_at__gte=since)
    if until is not None:
        changes = changes.filter(changed_at__lte=until)
    return changes


def model_group_list() -> QuerySet[ModelGroup]:
    """Return every model group, by name (disabled ones too)."""
    return ModelGroup.objects.order_by("name")


def model_group_history(*, name: str) -> QuerySet[ProviderConfigChange]:
    """Return the audit trail of model group NAME (``group:<name>``), newest first, also after its deletion.

    Raise ``ProviderNotFoundError`` (404) when NAME is neither a group nor in the trail.
    """
    from providers.config.services import group_audit_name

    changes = provider_change_list(provider=group_audit_name(name))
    if not changes.exists() and not ModelGroup.objects.filter(name=name).exists():
        raise ProviderNotFoundError(f"No model group named {name!r} exists or has a history.")
    return changes


def model_group_serving() -> list[str]:
    """Return the names of the model groups this worker serves now, sorted."""
    return runtime.manager.groups.names()
