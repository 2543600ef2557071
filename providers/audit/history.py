"""The audit trail of provider configuration: who changed what, when and from where.

The services call ``record_change`` inside the transaction of the change.
Entries hold a field-by-field diff; secrets appear only as masks, flagged
``"secret": true``, so that neither the trail nor its exports leak a key.
Every caller names its ``Actor``: the admin and the API build it with
``actor_for_request`` (sources ``admin``, ``api``, ``plugins-api``), the
YAML import is ``yaml-import``, other management commands ``command``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from providers.models import ProviderConfig, ProviderConfigChange
from providers.secrets.box import SecretDecryptionError
from providers.secrets.masking import mask_secret

UNREADABLE = "(cannot be decrypted)"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change, through what, from which address."""

    name: str
    source: str
    remote_addr: str | None = None


# Where a change came from (``ProviderConfigChange.source``).
SOURCE_ADMIN = "admin"
SOURCE_API = "api"  # /api/providers/
SOURCE_PLUGINS_API = "plugins-api"  # the guide's /plugins/ management API
SOURCE_YAML_IMPORT = "yaml-import"
SOURCE_COMMAND = "command"
SOURCE_SYSTEM = "system"

SYSTEM = Actor(name="system", source=SOURCE_SYSTEM)


def actor_for_request(request: Any, source: str) -> Actor:
    """Return the Actor behind REQUEST (a Django or DRF request) for changes from SOURCE.

    The name is the user's username, or ``key:<key name>`` for an API client
    authenticated by a key (its request user names itself so). The address
    is ``REMOTE_ADDR``: behind a proxy that is the proxy's, unless the
    deployment rewrites it, since a forwarded header could be forged.
    """
    user = getattr(request, "user", None)
    name = ""
    if user is not None and user.is_authenticated:
        name = user.get_username()
    return Actor(name=name or "anonymous", source=source, remote_addr=_address(request))


def _address(request: Any) -> str | None:
    value = (getattr(request, "META", None) or {}).get("REMOTE_ADDR")
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None  # the column holds addresses only; a test client may send anything


def snapshot(config: ProviderConfig) -> dict[str, Any]:
    """Return the audited state of CONFIG (secrets decrypted, for diffing only)."""
    try:
        secrets: dict[str, Any] | None = dict(config.secrets)
    except SecretDecryptionError:
        secrets = None
    return {
        "plugin": config.plugin,
        "enabled": config.enabled,
        "is_default": config.is_default,
        "fallbacks": list(config.fallbacks or []),
        "disabled_reason": config.disabled_reason,
        "routing_priority": config.routing_priority,
        "settings": dict(config.settings or {}),
        "secrets": secrets,
    }


def _secret_entries(before: dict | None, after: dict | None) -> list[dict[str, Any]]:
    if before is None and after is None:
        return []
    if before is None or after is None:
        readable = after if before is None else before
        return [
            {
                "field": f"secrets.{key}",
                "before": UNREADABLE if before is None else mask_secret(before[key]),
                "after": UNREADABLE if after is None else mask_secret(after[key]),
                "secret": True,
                "changed": True,
            }
            for key in sorted(readable)
        ]
    entries = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key):
            continue
        entries.append(
            {
                "field": f"secrets.{key}",
                "before": mask_secret(before[key]) if key in before else None,
                "after": mask_secret(after[key]) if key in after else None,
                "secret": True,
                "changed": True,
            }
        )
    return entries


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Return the field-by-field changes from BEFORE to AFTER (either may be None)."""
    old, new = before or {}, after or {}
    entries = []
    for field in (
        "plugin",
        "enabled",
        "is_default",
        "fallbacks",
        "disabled_reason",
        "routing_priority",
    ):
        if old.get(field) != new.get(field) and (field in old or field in new):
            entries.append({"field": field, "before": old.get(field), "after": new.get(field)})
    old_settings, new_settings = old.get("settings") or {}, new.get("settings") or {}
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key) or (key in old_settings) != (
            key in new_settings
        ):
            entries.append(
                {
                    "field": f"settings.{key}",
                    "before": old_settings.get(key),
                    "after": new_settings.get(key),
                }
            )
    entries += _secret_entries(
        old.get("secrets", {}) if before is not None else {},
        new.get("secrets", {}) if after is not None else {},
    )
    return entries


def _action(before: dict | None, after: dict | None) -> str:
    if before is None:
        return "created"
    if after is None:
        return "deleted"
    if before["enabled"] != after["enabled"]:
        return "enabled" if after["enabled"] else "disabled"
    return "updated"


def record_change(
    *, name: str, before: dict[str, Any] | None, after: dict[str, Any] | None, actor: Actor
) -> ProviderConfigChange | None:
    """Write the audit entry for provider NAME going from BEFORE to AFTER; None if nothing changed."""
    changes = diff(before, after)
    if not changes and before is not None and after is not None:
        return None
    return ProviderConfigChange.objects.create(
        provider_name=name,
        action=_action(before, after),
        actor=actor.name[:150],
        source=actor.source,
        remote_addr=actor.remote_addr,
        changes=changes,
    )
