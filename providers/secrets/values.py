"""The one rule for which of a provider's values are secrets, the strings that ``redact`` masks.

A setting is secret when the plugin's schema marks it, or when its name says
so (``providers.base.secret_fields``: ``writeOnly``, ``format: password``, a
name ending in ``api_key``, ``token``, ``secret`` or ``password``). When the
schema is unknown, or the plugin raises while giving it (a plugin bug), every
string setting counts: a masked model name costs less than a leaked key.

Each value counts stripped of the whitespace around it: a key pasted with a
trailing newline makes an invalid header, and the HTTP library quotes that
header with the newline escaped, so only the bare key matches what a message
shows (``redact`` still finds it inside the padded or escaped copy). A value
shorter than ``masking.SHORTEST_SECRET`` once stripped is dropped, as
``redact`` would ignore it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from providers.base import secret_fields
from providers.secrets.masking import SHORTEST_SECRET

if TYPE_CHECKING:
    from providers.base import AbstractAIProvider

# What plugin code may raise; SystemExit too, so that a plugin cannot end a worker.
_PLUGIN_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit)


def schema_secret_names(read_schema: Callable[[], Any]) -> frozenset[str] | None:
    """Return the secret setting names of the schema READ_SCHEMA returns; None when it fails.

    None (the schema is unknown) when READ_SCHEMA raises or returns something
    other than a JSON Schema object: ``config_secret_values`` then counts
    every string setting.
    """
    try:
        schema = read_schema()
        return frozenset(secret_fields(schema)) if isinstance(schema, dict) else None
    except _PLUGIN_FAILURES:
        return None


def config_secret_values(config: Any, names: Iterable[str] | None) -> list[str]:
    """Return the secret values of the settings CONFIG, stripped and each once; never raises.

    NAMES are the settings the schema marks secret (``schema_secret_names``);
    settings whose names say they are secret count too. With NAMES None (no
    schema) every string setting counts.
    """
    if not isinstance(config, dict):
        return []
    if names is None:
        candidates = [value for value in config.values() if isinstance(value, str)]
    else:
        keys = {key: {} for key in config if isinstance(key, str)}
        secret = set(names) | secret_fields({"properties": keys})
        candidates = [value for key, value in config.items() if key in secret]
    values: list[str] = []
    for value in candidates:
        text = "" if value is None else str(value).strip()
        if len(text) >= SHORTEST_SECRET and text not in values:
            values.append(text)
    return values


def instance_secret_values(provider: AbstractAIProvider) -> list[str]:
    """Return the secret values provider instance PROVIDER is configured with; never raises.

    The plugin is asked for its schema here; code that must not call plugin
    code again uses the names the registry read at build time
    (``ProviderRegistry.secret_values``).
    """
    return config_secret_values(
        getattr(provider, "config", None), schema_secret_names(provider.get_config_schema)
    )
