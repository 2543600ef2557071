"""Model groups as one worker serves them: public names, their deployments, and how one is picked.

A model group maps a public model name (``fast``, ``gpt-4o``) to deployments
(provider, the model it is asked for, a weight). ``ModelGroupTable`` holds
the enabled groups this worker serves, replaced whole by
``providers.runtime.config_sync`` when the database's groups change, and
what this worker saw of each deployment: its requests in flight and an
EWMA of its recent successful calls' latency. Nothing here reads the
database, so resolving a group name costs a dict lookup.

``order`` puts a group's deployments in the order to try them. The
strategy picks the first among the USABLE ones (their provider is live and
its breaker lets traffic through); the rest follow as the same strategy
ranks them, so that a failure moves to the group's next deployment, and
the unusable ones come last (the manager records them as skipped):

- ``weighted``: random in proportion to the weights (drawn without
  replacement, so the order after the first is weighted too);
- ``least_busy``: fewest requests in flight in this worker, ties at random;
- ``lowest_latency``: a deployment with no successful call yet first (it
  must be tried to be known), then the lowest recent latency.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

WEIGHTED = "weighted"
LEAST_BUSY = "least_busy"
LOWEST_LATENCY = "lowest_latency"
STRATEGIES = (WEIGHTED, LEAST_BUSY, LOWEST_LATENCY)

#: Weight of the newest sample in a deployment's latency average.
LATENCY_EWMA_ALPHA = 0.3


@dataclass(frozen=True, slots=True)
class Deployment:
    """One way to serve a group: PROVIDER asked for MODEL, with WEIGHT (a positive integer)."""

    provider: str
    model: str
    weight: int = 1

    @property
    def key(self) -> tuple[str, str]:
        """Return what this worker's statistics are kept by: (provider, model)."""
        return (self.provider, self.model)


@dataclass(frozen=True, slots=True)
class ModelGroupSpec:
    """A group as served: its public NAME, STRATEGY and DEPLOYMENTS (valid, by the write service)."""

    name: str
    strategy: str
    deployments: tuple[Deployment, ...]

    @classmethod
    def from_row(cls, row: object) -> ModelGroupSpec:
        """Return the spec of ROW (a ``ModelGroup``), skipping deployments that are not well formed.

        The write service validated the row; a row edited in SQL may not be,
        and one bad entry must not take the group (or the worker) down.
        """
        deployments = []
        for entry in getattr(row, "deployments", None) or []:
            if not isinstance(entry, dict):
                continue
            provider, model, weight = (
                entry.get("provider"),
                entry.get("model"),
                entry.get("weight", 1),
            )
            if not (isinstance(provider, str) and provider and isinstance(model, str) and model):
                continue
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                continue
            deployments.append(Deployment(provider, model, weight))
        strategy = getattr(row, "strategy", WEIGHTED)
        return cls(
            name=str(getattr(row, "name", "")),
            strategy=strategy if strategy in STRATEGIES else WEIGHTED,
            deployments=tuple(deployments),
        )


class ModelGroupTable:
    """The model groups one worker serves, by name, and what it saw of their deployments."""

    def __init__(self) -> None:
        self._groups: dict[str, ModelGroupSpec] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, str], float] = {}

    # --- the table ----------------------------------------------------------

    def replace(self, groups: Iterable[ModelGroupSpec]) -> None:
        """Serve GROUPS from now on, in place of the groups served so far.

        Statistics of deployments that no group names any more are dropped,
        so that they stay bounded by the table; those of deployments still
        named are kept (a reload does not forget what a deployment costs).
        """
        table = {group.name: group for group in groups if group.deployments}
        keys = {d.key for group in table.values() for d in group.deployments}
        self._groups = table
        for key in set(self._latency) - keys:
            del self._latency[key]
        for key in [k for k, v in self._in_flight.items() if k not in keys and v <= 0]:
            del self._in_flight[key]

    def get(self, name: str | None) -> ModelGroupSpec | None:
        """Return the group served under NAME, or None."""
        if not name:
            return None
        return self._groups.get(name)

    def names(self) -> list[str]:
        """Return the names of the groups served, sorted."""
        return sorted(self._groups)

    def __contains__(self, name: object) -> bool:
        return name in self._groups

    def __len__(self) -> int:
        return len(self._groups)

    # --- what this worker saw -----------------------------------------------

    def in_flight(self, deployment: Deployment) -> int:
        """Return how many requests DEPLOYMENT is serving in this worker now."""
        return self._in_flight.get(deployment.key, 0)

    def latency(self, deployment: Deployment) -> float | None:
        """Return DEPLOYMENT's recent latency in seconds (an EWMA), or None before its first success."""
        return self._latency.get(deployment.key)

    @contextmanager
    def serving(self, deployment: Deployment) -> Iterator[None]:
        """Count DEPLOYMENT as serving one more request while the block runs."""
        key = deployment.key
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._in_flight.get(key, 1) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

    def record_latency(self, deployment: Deployment, seconds: float) -> None:
        """Fold a successful call of SECONDS into DEPLOYMENT's latency average."""
        if seconds < 0:
            return
        key = deployment.key
        previous = self._latency.get(key)
        self._latency[key] = (
            seconds
            if previous is None
            else LATENCY_EWMA_ALPHA * seconds + (1 - LATENCY_EWMA_ALPHA) * previous
        )

    # --- picking --------------------------------------------------------------

    def order(
        self,
        group: ModelGroupSpec,
        usable: Callable[[Deployment], bool],
        rng: random.Random,
    ) -> list[Deployment]:
        """Return GROUP's deployments in the order to try them (see the module docstring)."""
        ready = [d for d in group.deployments if usable(d)]
        held = [d for d in group.deployments if not usable(d)]
        return self._ranked(group.strategy, ready, rng) + held

    def _ranked(
        self, strategy: str, deployments: list[Deployment], rng: random.Random
    ) -> list[Deployment]:
        if strategy == LEAST_BUSY:
            shuffled = list(deployments)
            rng.shuffle(shuffled)  # ties broken at random: the sort below is stable
            return sorted(shuffled, key=self.in_flight)
        if strategy == LOWEST_LATENCY:
            shuffled = list(deployments)
            rng.shuffle(shuffled)
            unknown = [d for d in shuffled if self.latency(d) is None]
            known = sorted(
                (d for d in shuffled if self.latency(d) is not None),
                key=lambda d: self.latency(d) or 0.0,
            )
            return unknown + known
        return weighted_order(deployments, rng)


def weighted_order(deployments: list[Deployment], rng: random.Random) -> list[Deployment]:
    """Return DEPLOYMENTS drawn one by one at random in proportion to their weights."""
    left = list(deployments)
    ordered = []
    while left:
        total = sum(d.weight for d in left)
        point = rng.random() * total
        for index, deployment in enumerate(left):
            point -= deployment.weight
            if point < 0 or index == len(left) - 1:
                ordered.append(left.pop(index))
                break
    return ordered
