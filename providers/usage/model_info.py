"""Known models' facts (context length, prices per token), kept as data in ``model_info.yaml``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

MODEL_INFO_FILE = Path(__file__).with_name("model_info.yaml")


@cache
def _catalogue() -> dict[str, dict[str, dict[str, Any]]]:
    return yaml.safe_load(MODEL_INFO_FILE.read_text()) or {}


def known_model_info(plugin: str, model: str) -> dict[str, Any] | None:
    """Return the facts known about MODEL of PLUGIN, or None.

    A dated model name (``gpt-4o-2024-08-06``, ``claude-3-5-haiku-20241022``)
    falls back to the longest known name it starts with.
    """
    models = _catalogue().get(plugin, {})
    if model in models:
        return dict(models[model])
    prefixes = [name for name in models if model.startswith(name)]
    if not prefixes:
        return None
    return dict(models[max(prefixes, key=len)])
