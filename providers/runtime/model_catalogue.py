"""The model catalogue: which live providers serve a model named without a provider.

Clients write ``model="gpt-4o-mini"`` or ``"claude-3-5-haiku-latest"``, not
``openai/gpt-4o-mini``. The catalogue maps each such bare name to the live
providers that serve it, best first:

- what a provider serves is its upstream's own model list when this worker
  has fetched it (``providers.runtime.model_lists``), else the models its
  instance declares (``metadata.models``: the plugin's well-known models,
  or the ``models`` setting) and those ``providers/usage/model_info.yaml``
  knows for its plugin; its ``default_model`` always;
- a name several providers serve goes to the lowest ``routing_priority``
  (``ProviderConfig.routing_priority``, handed over by config sync), then to
  the default provider, then by provider name;
- a dated or tagged name (``gpt-4o-2024-08-06``, ``llama3:8b``) that is not
  listed goes to the providers that serve the longest listed name it starts
  with, followed by a tag (``:`` or ``@`` and anything) or by ``-`` or ``.``
  and a digit (a date, a version): ``gpt-4o-mni`` is a typo, not a variant;
- a name nobody serves gets ``close_matches``: the names served that look
  most like it (``difflib``), for the 404's hint.

The index lives in this worker's memory and is rebuilt on the first lookup
after something changed: a provider applied, replaced or removed, the
default moved, a priority set, or a model list fetched (each lookup compares
the registry's and the model lists' change counts to tell). A lookup reads no
database and calls no provider: an upstream's own list joins once this worker has fetched it
(``GET /v1/models`` does, kept ``ECHO_MODEL_LIST_CACHE_SECONDS``); until
then a name only the upstream knows goes to the default provider, as the
manager routes any name no provider lists.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from functools import cache
from typing import Any

import yaml

from providers.errors import ProviderError
from providers.runtime import process_module
from providers.runtime.registry import ProviderRegistry
from providers.usage.model_info import MODEL_INFO_FILE

logger = logging.getLogger(__name__)

#: A provider's routing priority unless an admin set one (lower answers first).
DEFAULT_ROUTING_PRIORITY = 100
#: How many close matches a 404 lists.
CLOSE_MATCHES = 5
#: What may follow a listed name in a tagged variant of it (``llama3:8b``).
TAG_SEPARATORS = ":@"
#: What may follow a listed name before a digit in a dated or versioned variant (``-2024-08-06``).
VERSION_SEPARATORS = "-."


@cache
def model_info_names() -> dict[str, tuple[str, ...]]:
    """Return the model names ``model_info.yaml`` knows, by plugin."""
    try:
        data = yaml.safe_load(MODEL_INFO_FILE.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        logger.exception("%s cannot be read; the catalogue goes without it", MODEL_INFO_FILE)
        return {}
    return {
        str(plugin): tuple(str(name) for name in models)
        for plugin, models in data.items()
        if isinstance(models, dict)
    }


class ModelCatalogue:
    """The bare model names REGISTRY's live providers serve, kept in step with it."""

    def __init__(self, registry: ProviderRegistry) -> None:
        self._registry = registry
        self._priorities: dict[str, int] = {}
        self._index: dict[str, tuple[str, ...]] | None = None
        self._seen: tuple[Any, ...] = ()

    # --- what changes it ------------------------------------------------------

    def set_priority(self, name: str, priority: int | None) -> None:
        """Set provider NAME's routing priority (None: forget it, the provider is gone)."""
        before = self.priority(name)
        if priority is None:
            self._priorities.pop(name, None)
        else:
            self._priorities[name] = int(priority)
        changed = self.priority(name) != before
        if changed:
            self._index = None

    def priority(self, name: str) -> int:
        """Return provider NAME's routing priority (the default one when none was set)."""
        return self._priorities.get(name, DEFAULT_ROUTING_PRIORITY)

    # --- lookups --------------------------------------------------------------

    def providers_for(self, model: str) -> tuple[str, ...]:
        """Return the live providers that serve bare MODEL, best first (empty: none)."""
        index = self._current_index()
        found = index.get(model)
        if found:
            return found
        return self._variant_providers(index, model)

    def names(self) -> list[str]:
        """Return every bare model name served, sorted."""
        return sorted(self._current_index())

    def close_matches(self, model: str, limit: int = CLOSE_MATCHES) -> list[str]:
        """Return up to LIMIT served names that look like MODEL, closest first."""
        return difflib.get_close_matches(model, self._current_index(), n=limit, cutoff=0.5)

    def _variant_providers(self, index: dict[str, tuple[str, ...]], model: str) -> tuple[str, ...]:
        for cut in range(len(model) - 1, 0, -1):  # the longest listed prefix first
            separator, rest = model[cut], model[cut + 1 :]
            variant = separator in TAG_SEPARATORS or (
                separator in VERSION_SEPARATORS and rest[:1].isdigit()
            )
            if variant and model[:cut] in index:
                return index[model[:cut]]
        return ()

    def lists(self, model: str) -> bool:
        """Return whether some live provider lists MODEL itself (not a variant of a listed name)."""
        return model in self._current_index()

    # --- the index ------------------------------------------------------------

    def _current_index(self) -> dict[str, tuple[str, ...]]:
        """Return the index, rebuilt first if a provider, the default or a model list changed."""
        lists = self._model_lists()
        seen = (self._registry.changes, id(lists), lists.changes if lists is not None else 0)
        if self._index is None or seen != self._seen:
            self._seen = seen
            self._index = self._build(lists.held_lists() if lists is not None else {})
        return self._index

    def _build(self, lists: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        """Return the index of the live providers' models, each name's providers best first."""
        default = self._registry.default_name
        servers: dict[str, list[str]] = {}
        for name in self._registry.names():
            for model in self._models_of(name, lists.get(name)):
                servers.setdefault(model, []).append(name)

        def rank(provider: str) -> tuple[int, int, str]:
            return (self.priority(provider), 0 if provider == default else 1, provider)

        return {model: tuple(sorted(names, key=rank)) for model, names in servers.items()}

    def _models_of(self, name: str, listed: Any) -> Iterable[str]:
        """Return the models live provider NAME serves, its upstream's list when this worker has it."""
        from providers.runtime.model_lists import instance_key

        try:
            provider = self._registry.get(name)
            plugin = self._registry.spec(name).plugin
        except ProviderError:
            return ()
        models: list[str] = []
        config = provider.config if isinstance(provider.config, dict) else {}
        default_model = config.get("default_model")
        if isinstance(default_model, str) and default_model:
            models.append(default_model)
        current = listed is not None and listed.instance == instance_key(self._registry, name)
        if current and listed.from_upstream:
            models.extend(listed.models)
        else:
            try:
                models.extend(self._registry.metadata(name).models)
            except ProviderError:
                pass  # the plugin's bug, recorded as its last error; its other names still count
            models.extend(model_info_names().get(plugin, ()))
            if current:
                models.extend(listed.models)
        return dict.fromkeys(m for m in models if isinstance(m, str) and m)

    # --- the upstream lists -----------------------------------------------------

    def _model_lists(self) -> Any:
        """Return this process's model-list cache when it lists this catalogue's registry."""
        try:
            current = process_module().current()
        except Exception:  # no runtime yet (import time): no lists
            return None
        if current.registry is not self._registry:
            return None
        return current.model_lists
