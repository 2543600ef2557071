"""The providers the chat page offers: this process's live ones, their models and health.

Read-only and in memory (registry, latest health checks, circuit breakers):
no upstream is called to fill a picker. The models are the plugin
metadata's, those the last health check listed (``list_models``) and the
configured default model.
"""

from __future__ import annotations

from typing import Any

from providers.errors import ProviderError, ProviderNotFoundError
from providers.runtime import process as runtime


def _models(name: str, health_models: list[str]) -> tuple[list[str], str | None]:
    """Return provider NAME's models (its default first) and its default model.

    Its metadata comes through the registry's guard: a plugin that raises
    there has the error recorded as its status and offers no listed models.
    """
    default = runtime.registry.get(name).config.get("default_model") or None
    try:
        listed = list(runtime.registry.metadata(name).models)
    except ProviderError as exc:
        if isinstance(exc, ProviderNotFoundError):
            raise
        listed = []
    models: list[str] = []
    for model in [default, *listed, *health_models]:
        if model and isinstance(model, str) and model not in models:
            models.append(model)
    return models, default


def chat_provider_list() -> list[dict[str, Any]]:
    """Return the live providers for the picker, by name.

    Each: ``name``, ``plugin``, ``is_default``, ``models`` (default first),
    ``default_model``, ``health`` (``available`` true/false, or null when not
    checked yet; ``checked_at``) and ``breaker`` (``closed``, ``open``,
    ``half_open``).
    """
    latest = runtime.monitor.latest()
    providers = []
    for name in runtime.registry.names():
        try:
            spec = runtime.registry.spec(name)
            health = latest.get(name)
            models, default = _models(name, list(health.models) if health else [])
        except ProviderNotFoundError:  # taken out of service while we read
            continue
        except Exception:  # a plugin's broken metadata must not empty the picker
            models, default = [], None
        providers.append(
            {
                "name": name,
                "plugin": spec.plugin,
                "is_default": spec.is_default,
                "models": models,
                "default_model": default,
                "health": {
                    "available": health.available if health else None,
                    "checked_at": health.checked_at.isoformat()
                    if health and health.checked_at
                    else None,
                },
                "breaker": runtime.manager.breaker(name).state,
            }
        )
    return providers
