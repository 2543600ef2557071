"""Label values for Echo's metrics, drawn from bounded sets.

Each distinct label value is a time series that Prometheus' client keeps for
the life of the process, and a client chooses the provider and model names it
sends. So a value becomes a label only when Echo knows it: a provider the live
registry serves, a model its provider knows (its configured default and
models, its ``metadata`` and ``get_model_info``, the models its last health
check listed), an error kind a ``ProviderError`` class declares. Everything
else is ``other``. Known models are admitted per provider up to
``ECHO_METRICS_MODELS_PER_PROVIDER``, because ``get_model_info`` matches
prefixes (``gpt-4o`` knows ``gpt-4o<anything>``) and an upstream may echo any
model name back.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from django.conf import settings

from providers.errors import ProviderError

if TYPE_CHECKING:
    from providers.health.monitor import HealthMonitor
    from providers.runtime.registry import ProviderRegistry

logger = logging.getLogger(__name__)

OTHER = "other"
NONE = "none"
MAX_LABEL_LENGTH = 100
OUTCOMES = frozenset({"ok", "error", "cancelled"})
# Names already found unknown, per provider: a bounded memo so that a stream of
# random names costs a set lookup, not a plugin call, each.
UNKNOWN_MEMO_SIZE = 1024


class _ProviderModels:
    """What the labels know of one provider's models."""

    __slots__ = ("admitted", "instance", "unknown")

    def __init__(self) -> None:
        # Kept across reloads: these series exist already, and the cap must hold
        # for the provider name however often it is reloaded.
        self.admitted: set[str] = set()
        self.instance: weakref.ReferenceType[Any] | None = None
        self.unknown: set[str] = set()


class MetricLabels:
    """Turn recorded names into label values from bounded sets; cheap per request.

    A provider is known when REGISTRY serves it; a model also when MONITOR's
    last check of its provider listed it.
    """

    def __init__(self, registry: ProviderRegistry, monitor: HealthMonitor) -> None:
        self._registry = registry
        self._monitor = monitor
        self._models: dict[str, _ProviderModels] = {}
        self._kinds: frozenset[str] = frozenset()

    def provider(self, name: object) -> str:
        """Return NAME if it is a live provider, ``none`` when empty, else ``other``."""
        if not name:
            return NONE
        if isinstance(name, str) and len(name) <= MAX_LABEL_LENGTH and name in self._registry:
            return name
        return OTHER

    def model(self, provider: str, model: object) -> str:
        """Return the label of MODEL served by PROVIDER (a label from ``provider``)."""
        if not model:
            return NONE
        if provider in (OTHER, NONE) or not isinstance(model, str) or len(model) > MAX_LABEL_LENGTH:
            return OTHER
        state = self._models.get(provider)
        if state is None:
            state = self._models.setdefault(provider, _ProviderModels())
        if model in state.admitted:
            return model
        instance = self._live_instance(provider, state)
        if instance is None or model in state.unknown:
            return OTHER
        if len(state.admitted) >= settings.ECHO_METRICS_MODELS_PER_PROVIDER:
            return OTHER
        if not self._is_known(instance, provider, model):
            if len(state.unknown) >= UNKNOWN_MEMO_SIZE:
                state.unknown.clear()
            state.unknown.add(model)
            return OTHER
        state.admitted.add(model)
        return model

    def kind(self, kind: object) -> str:
        """Return KIND if a ``ProviderError`` class declares it, ``none`` when empty, else ``other``."""
        if not kind:
            return NONE
        if not isinstance(kind, str) or len(kind) > MAX_LABEL_LENGTH:
            return OTHER
        if kind not in self._kinds:
            # Plugins may bring their own error classes: look again before refusing.
            self._kinds = frozenset(_declared_kinds(ProviderError))
        return kind if kind in self._kinds else OTHER

    @staticmethod
    def outcome(outcome: object) -> str:
        """Return OUTCOME if it is one the recorder knows, else ``other``."""
        return outcome if outcome in OUTCOMES else OTHER  # type: ignore[return-value]

    @staticmethod
    def endpoint(endpoint: object) -> str:
        """Return ENDPOINT (named by Echo's code, not by clients), length-capped."""
        if not endpoint or not isinstance(endpoint, str):
            return NONE
        return endpoint[:MAX_LABEL_LENGTH]

    def _live_instance(self, provider: str, state: _ProviderModels) -> Any | None:
        """Return PROVIDER's live instance; forget STATE's unknown names when it was replaced."""
        try:
            instance = self._registry.get(provider)
        except ProviderError:
            return None
        if state.instance is None or state.instance() is not instance:
            # A reload may have configured new models: what was unknown may not be now.
            state.unknown.clear()
            state.instance = weakref.ref(instance)
        return instance

    def _is_known(self, instance: Any, provider: str, model: str) -> bool:
        config = getattr(instance, "config", None) or {}
        if model == config.get("default_model") or model == config.get("embedding_model"):
            return True
        configured = config.get("models")
        if isinstance(configured, list | tuple) and model in configured:
            return True
        try:
            # Plugin code: any failure only means "not known".
            if model in instance.metadata.models or instance.get_model_info(model) is not None:
                return True
        except Exception:
            logger.debug("provider %s could not describe a model", provider, exc_info=True)
        return model in self._listed_models(provider)

    def _listed_models(self, provider: str) -> list[str]:
        """Return the models PROVIDER's last health check in this process listed."""
        health = self._monitor.latest().get(provider)
        return health.models if health is not None else []


def _declared_kinds(cls: type[ProviderError]) -> set[str]:
    kinds = {cls.kind} if isinstance(cls.kind, str) and len(cls.kind) <= MAX_LABEL_LENGTH else set()
    for sub in cls.__subclasses__():
        kinds |= _declared_kinds(sub)
    return kinds
