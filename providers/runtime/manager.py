"""ModelManager: route a chat request to a provider, retry it, and fail over along its chain.

Routing picks the provider by explicit name, by a ``provider/model`` prefix
on the model, by a model group's name, by a bare model name that the model
catalogue knows (``gpt-4o-mini`` goes to the provider that serves it,
``runtime/model_catalogue.py``), or the default provider. A bare name no
provider is known to serve goes to the default provider (an upstream may
serve more than it lists); when there is none, or it does not know the name
either, the 404 ``model_not_found`` lists the closest names served. The routes to try
are that provider, its fallbacks (each may name its own model:
``anthropic/claude-3-5-haiku-latest``) and then the routing default, each
provider once; for a bare name, the other providers that serve it come
before the fallbacks.

A model group (``runtime/model_groups.py``) is a public name served by
deployments (provider + model); its strategy orders them per request
(weighted, least busy, lowest latency), a deployment whose breaker is open
goes last, and every deployment of the group is tried before the first
deployment's provider-level fallbacks. Retries and breakers apply per
deployment as for any route.

On each route, a retryable failure (rate limit, server error, timeout, lost
connection, broken protocol) is retried after a jittered exponential
backoff, or after the upstream's ``Retry-After``, up to the provider's
``max_retries``; then the request moves on to the next route. The whole
request has one deadline (the first provider's ``deadline_seconds``), and
each attempt may use only the share of what is left that leaves every
untried route an equal part, so that a hanging provider cannot eat its
fallbacks' time. A bad request is neither retried nor failed over: it would
fail everywhere. Nor is a plugin's bug (an exception that is no
``ProviderError``, see ``plugin_failure``): the request would trip it again,
and it says nothing of the upstream's health. Neither counts toward the
circuit breaker, so no client can open it for the others. An authentication
failure is not retried either: it marks the provider misconfigured and fails
over.

Each provider has a circuit breaker: a provider whose breaker is open gets
no traffic and its route is skipped. A stream retries and fails over only
before its first chunk; after that the partial answer stands and the error
reaches the caller.

Answers say who answered and how: ``provider``/``model``, and in the
metadata ``attempts`` (upstream calls made for the request), ``fallback_path``
(the routes given up on, each with its last error and attempts) and
``retries`` (each wait before a retry).

A caller may pass ``allow``, a ``RouteFilter``: a route it refuses (by
provider and the model it would be asked for, the provider's
``default_model`` when the route names none) is skipped without a call, so
that a client key's failover never lands on a model the key may not use.

A request's options are honoured or refused, never dropped
(``runtime/request_options.py``): a first route whose provider does not
support an option the request sets is refused with a 400
(``unsupported_option``), and a fallback that does not is skipped without a
call. A model group's deployments are alternatives: one that cannot honour
the options is skipped, and the 400 comes only when none can.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import httpx

from providers.base import AbstractAIProvider
from providers.errors import (
    AuthenticationError,
    ModelNotFoundError,
    PluginError,
    ProtocolError,
    ProviderDisabledError,
    ProviderError,
    ProviderNotFoundError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from providers.runtime.circuit_breaker import CLOSED, HALF_OPEN, BreakerNews, CircuitBreaker
from providers.runtime.model_catalogue import ModelCatalogue, model_info_names
from providers.runtime.model_groups import Deployment, ModelGroupSpec, ModelGroupTable
from providers.runtime.registry import ProviderRegistry
from providers.runtime.request_options import unsupported_option_error
from providers.runtime.retry_policy import RetryPolicy, routing_setting
from providers.secrets.masking import redact
from providers.secrets.values import instance_secret_values
from providers.types import ChatRequest, ChatResponse, StreamingChunk

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Whether a route may be tried: (provider, model it would be asked for, None: unnamed).
RouteFilter = Callable[[str, str | None], bool]


@dataclass(frozen=True, slots=True)
class OutOfService:
    """A provider configured but not serving: its plugin, and why (as its status says it)."""

    plugin: str
    reason: str


@dataclass(frozen=True, slots=True)
class Route:
    """One provider to try, with the model to ask it for (None: its default).

    GROUP names the model group the route is a deployment of, if it is one.
    """

    provider: str
    model: str | None
    group: str | None = None

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}" if self.model else self.provider


#: One upstream call: (provider, its prepared request, the route, the exit stack
#: that holds what must outlive a successful call) -> the call's result.
Attempt = Callable[[AbstractAIProvider, ChatRequest, Route, AsyncExitStack], Awaitable[T]]


class AttemptTimeoutError(ProviderTimeoutError):
    """An attempt used up its share of the request's deadline: the provider hangs.

    Retrying a provider that hangs would spend the time its fallbacks need,
    so the request fails over at once.
    """


def _lets_through(breaker: CircuitBreaker) -> bool:
    """Return whether BREAKER would let a call through now, without claiming its probe."""
    state = breaker.state
    return state == CLOSED or (state == HALF_OPEN and not breaker.probe_in_flight)


def _names_provider(model: str | None, registry: ProviderRegistry) -> bool:
    """Return whether MODEL is ``provider/model`` with a live provider's name as its prefix."""
    return bool(model) and "/" in model and model.split("/", 1)[0] in registry


def _close(model: str, names: list[str]) -> list[str]:
    """Return the NAMES that look like MODEL, closest first (for a 404's hint)."""
    return difflib.get_close_matches(model, names, n=5, cutoff=0.5)


def plugin_failure(route: Route, exc: Exception) -> ProviderError:
    """Return the typed error for an exception a plugin let escape.

    A timeout or a lost connection the plugin did not wrap is still an
    upstream failure: retryable, and counted by the breaker. Anything else
    is the plugin's bug, most likely tripped by this very request: a
    ``PluginError``, which is neither retried, nor failed over, nor counted,
    so that no client can open a provider's breaker for everyone else. The
    traceback goes to the log, never to the client.
    """
    name = type(exc).__name__
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        logger.warning("provider %s timed out (%s)", route.provider, name)
        return ProviderTimeoutError(
            f"Provider {route.provider!r} timed out ({name}).", provider=route.provider
        )
    if isinstance(exc, ConnectionError | httpx.TransportError):
        logger.warning("provider %s lost its connection (%s)", route.provider, name)
        return ProviderUnavailableError(
            f"Provider {route.provider!r} could not reach its upstream ({name}).",
            provider=route.provider,
        )
    logger.error("provider %s raised %s", route.provider, name, exc_info=exc)
    return PluginError(
        f"Provider {route.provider!r} failed unexpectedly ({name}).", provider=route.provider
    )


@dataclass(slots=True)
class RouteCounters:
    """What the manager did with one provider since the process started."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    retries: int = 0
    failovers: int = 0
    skipped: int = 0


@dataclass(slots=True)
class RequestTrace:
    """What one request did: its deadline, upstream attempts, retries and routes given up on."""

    deadline: float
    attempts: int = 0
    #: Time spent waiting on upstream calls, failed ones included (to the first chunk, for a stream).
    upstream_seconds: float = 0.0
    #: Time spent waiting between attempts (the retries' backoff).
    waited_seconds: float = 0.0
    fallback_path: list[dict[str, Any]] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)

    def give_up(self, route: Route, error: str, attempts: int) -> None:
        """Note that ROUTE was left after ATTEMPTS calls, the last failing with ERROR."""
        self.fallback_path.append({"route": str(route), "error": error, "attempts": attempts})

    def annotate(self, metadata: dict[str, Any]) -> None:
        """Write the trace into an answer's METADATA."""
        metadata["attempts"] = self.attempts
        metadata["upstream_ms"] = round(self.upstream_seconds * 1000, 3)
        if self.waited_seconds:
            metadata["retry_wait_ms"] = round(self.waited_seconds * 1000, 3)
        if self.fallback_path:
            metadata["fallback_path"] = self.fallback_path
        if self.retries:
            metadata["retries"] = self.retries


#: Bare model names whose routes are kept at hand (a client naming many costs only a rebuild).
SERVED_ROUTES_KEPT = 1024


class ModelManager:
    """Route requests over the providers of a registry, with retries, breakers and failover.

    SLEEP (``asyncio.sleep``), RNG (a ``random.Random``) and CLOCK
    (``time.monotonic``, for deadlines and breakers) may be replaced, so
    that tests run fast and the same way every time.
    """

    def __init__(
        self,
        registry: ProviderRegistry,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        # Set while ``providers.runtime.shared_breakers`` shares the breakers through Redis.
        self.shared_breakers: BreakerNews | None = None
        self._counters: dict[str, RouteCounters] = {}
        self._instances: dict[str, weakref.ref[AbstractAIProvider]] = {}
        # Which providers serve a bare model name, and the model groups served (both in memory).
        self.catalogue = ModelCatalogue(registry)
        self.groups = ModelGroupTable()
        # The routes of the bare names served, as of a registry state (``_served_routes``).
        self._served: dict[str, tuple[tuple[int, tuple[str, ...]], tuple[Route, ...]]] = {}
        # Providers configured but not serving, and why (kept by config_sync): a call
        # naming one is told so (409), not that no such provider exists.
        self.out_of_service: dict[str, OutOfService] = {}

    # --- state ------------------------------------------------------------

    def breaker(self, name: str) -> CircuitBreaker:
        """Return the circuit breaker of provider NAME, set to its thresholds when it is live."""
        try:
            provider = self.registry.get(name)
        except ProviderNotFoundError:
            return self._stored_breaker(name)
        return self._breaker_for(name, provider)

    def _stored_breaker(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = CircuitBreaker(
                clock=self._clock, on_transition=functools.partial(self._breaker_moved, name)
            )
        return breaker

    def _breaker_moved(self, name: str, state: str) -> None:
        """Tell the other workers that NAME's breaker went to STATE, when they share breakers."""
        shared = self.shared_breakers
        if shared is not None:
            shared.publish(name, self._breakers[name])

    def counters(self, name: str) -> RouteCounters:
        """Return the request counters of provider NAME (made on first use)."""
        counters = self._counters.get(name)
        if counters is None:
            counters = self._counters[name] = RouteCounters()
        return counters

    def provider_state(self, name: str) -> dict[str, Any]:
        """Return provider NAME's routing state for status pages.

        The breaker's state (``closed``/``open``/``half_open``, failures,
        ``retry_in_seconds``, ``misconfigured`` and its reason), the
        provider's routing settings, and the counters of what requests did.
        """
        try:
            provider = self.registry.get(name)
        except ProviderNotFoundError:
            config: dict[str, Any] = {}
        else:
            self._breaker_for(name, provider)  # its current thresholds and marks
            config = provider.config
        state = self.breaker(name).as_dict()
        policy = RetryPolicy.from_config(config)
        state["max_retries"] = policy.max_retries
        state["retry_max_wait_seconds"] = policy.max_wait
        state["deadline_seconds"] = float(routing_setting(config, "deadline_seconds"))
        state["counters"] = asdict(self.counters(name))
        return state

    def _breaker_for(self, name: str, provider: AbstractAIProvider) -> CircuitBreaker:
        """Return NAME's breaker, set to PROVIDER's thresholds.

        A new instance (the configuration changed) drops the misconfigured
        mark: the new key may work. Failures stay counted, since the outage
        they saw may well go on; the next probe tells.
        """
        breaker = self._stored_breaker(name)
        seen = self._instances.get(name)
        if seen is None or seen() is not provider:
            if seen is not None:
                breaker.clear_misconfigured()
            self._instances[name] = weakref.ref(provider)
        breaker.configure(
            failure_threshold=int(routing_setting(provider.config, "breaker_failure_threshold")),
            cooldown_seconds=float(routing_setting(provider.config, "breaker_cooldown_seconds")),
        )
        return breaker

    # --- routing ----------------------------------------------------------

    def resolve(self, request: ChatRequest, provider_name: str | None = None) -> Route:
        """Return the first route for REQUEST.

        In order: the named provider; a ``provider/model`` prefix naming a
        live provider; a model group's name (its first deployment as the
        group's strategy orders them now); a bare model name, to the best
        provider that serves it; else the default provider. Raise
        ``ProviderNotFoundError`` when the named provider is not live or
        there is no default, and ``ModelNotFoundError`` (404, with close
        matches) for a model no provider serves when there is no default.
        """
        model = request.model
        if provider_name:
            if provider_name not in self.registry:
                self._refuse_if_out_of_service(provider_name, "provider")
                raise ProviderNotFoundError(
                    f"No provider named {provider_name!r}.",
                    provider=provider_name,
                    field="provider",
                )
            return Route(provider_name, model)
        if model and "/" in model:
            prefix, rest = model.split("/", 1)
            if prefix in self.registry:
                return Route(prefix, rest or None)
            self._refuse_if_out_of_service(prefix, "model")
        group = self.groups.get(model)
        if group is not None:
            return self._group_routes(group)[0]
        if model:
            served = self.catalogue.providers_for(model)
            if served:
                return Route(served[0], model)
            self._refuse_if_served_out_of_service(model)
            if self.registry.default_name is None:
                raise self._unknown_model(model)
        default = self.registry.default_name
        if default is None:
            raise ProviderNotFoundError(
                "No provider was named and no default provider is configured.", field="provider"
            )
        return Route(default, model)

    def _refuse_if_out_of_service(self, name: str, field: str) -> None:
        """Raise ``ProviderDisabledError`` (409, with the reason) when NAME is configured but not serving."""
        resting = self.out_of_service.get(name)
        if resting is None:
            return
        raise ProviderDisabledError(
            f"The provider {name!r} is configured but not serving: {resting.reason}",
            provider=name,
            field=field,
        )

    def _refuse_if_served_out_of_service(self, model: str) -> None:
        """Raise ``ProviderDisabledError`` when bare MODEL is a model of a provider configured but not serving.

        ``gpt-4o-mini`` with openai disabled is openai's, not the default
        provider's: the client learns which provider and why, not "Unknown model".
        """
        for name, resting in sorted(self.out_of_service.items()):
            known = set(model_info_names().get(resting.plugin, ()))
            try:
                known.update(self.registry.plugin(resting.plugin).metadata.models)
            except ProviderError:
                pass  # its plugin is not installed: model_info.yaml's names still count
            if model in known:
                raise ProviderDisabledError(
                    f"The model {model!r} is served by {name!r}, which is configured but not "
                    f"serving: {resting.reason}",
                    provider=name,
                    field="model",
                )

    def routes(self, request: ChatRequest, provider_name: str | None = None) -> list[Route]:
        """Return every route to try for REQUEST, in order (see ``resolve`` and ``chain``).

        A model group's deployments, ordered by its strategy, come first;
        then the provider-level fallbacks of its first deployment. A bare
        name's best provider is followed by the other providers serving it.
        """
        if not provider_name and not _names_provider(request.model, self.registry):
            group = self.groups.get(request.model)
            if group is not None:
                return self._with_fallbacks(self._group_routes(group))
            served = self.catalogue.providers_for(request.model) if request.model else ()
            if served:
                return self._served_routes(request.model, served)
        return self.chain(self.resolve(request, provider_name))

    def _served_routes(self, model: str, served: tuple[str, ...]) -> list[Route]:
        """Return the routes of bare MODEL, which SERVED serve: worked out once per model and state.

        They depend on SERVED and on the live providers (their fallbacks, the
        default): the same until either changes. At most ``SERVED_ROUTES_KEPT``
        names are kept, all forgotten past that.
        """
        stamp = (self.registry.changes, served)
        kept = self._served.get(model)
        if kept is not None and kept[0] == stamp:
            return list(kept[1])
        routes = self._with_fallbacks([Route(name, model) for name in served])
        if len(self._served) >= SERVED_ROUTES_KEPT:
            self._served.clear()
        self._served[model] = (stamp, tuple(routes))
        return routes

    def _group_routes(self, group: ModelGroupSpec) -> list[Route]:
        """Return GROUP's deployments as routes, in the order its strategy gives them now."""

        def usable(deployment: Deployment) -> bool:
            return deployment.provider in self.registry and _lets_through(
                self.breaker(deployment.provider)
            )

        ordered = self.groups.order(group, usable, self._rng)
        return [Route(d.provider, d.model, group.name) for d in ordered]

    def _with_fallbacks(self, first: list[Route]) -> list[Route]:
        """Return FIRST's routes, then the fallbacks of its first live provider that are not in FIRST."""
        routes = list(first)
        seen = {route.provider for route in first}
        lead = next((route for route in first if route.provider in self.registry), None)
        if lead is None:
            return routes  # none in service: the loop says so, naming the first
        for route in self.chain(lead)[1:]:
            if route.provider not in seen:
                seen.add(route.provider)
                routes.append(route)
        return routes

    def _unknown_model(self, model: str) -> ModelNotFoundError:
        """Return the 404 for bare MODEL, which no live provider serves, with the closest names served."""
        shown = model if len(model) <= 80 else model[:77] + "..."
        return ModelNotFoundError(
            f"No provider serves the model {shown!r}. {self._model_hint(model)}", field="model"
        )

    def _model_hint(self, model: str) -> str:
        """Return a hint for MODEL, a name nobody is known to serve: up to five close names served."""
        matches = self.catalogue.close_matches(model)
        groups = [name for name in self.groups.names() if name not in matches]
        matches += [m for m in _close(model, groups) if m not in matches]
        if matches:
            return "Did you mean: " + ", ".join(matches[:5]) + "?"
        return "Name it as 'provider/model', or see GET /v1/models."

    def _hint_unknown_model(
        self, exc: ModelNotFoundError, request: ChatRequest, provider_name: str | None
    ) -> None:
        """Add close matches to EXC, the default provider's 404 for a bare name nobody else serves.

        A bare name that no provider is known to serve goes to the default
        provider (an upstream may serve more than it lists); when that one
        does not know it either, the client learns what is served instead.
        """
        model = request.model
        if provider_name or not model or _names_provider(model, self.registry):
            return
        if model in self.groups or self.catalogue.lists(model):
            return
        hint = self._model_hint(model)
        if hint not in exc.message:
            exc.message = f"{exc.message.rstrip()} {hint}"
            exc.args = (exc.message,)
        exc.field = exc.field or "model"

    def public_model_groups(self, allows: RouteFilter | None = None) -> list[str]:
        """Return the names of the model groups a caller may call, sorted (for ``GET /v1/models``).

        A group is listed when ALLOWS (a key's route filter; None: every
        route) allows at least one of its deployments: a call then goes only
        to the deployments it allows.
        """
        names = []
        for name in self.groups.names():
            group = self.groups.get(name)
            if group is None:
                continue
            if allows is None or any(allows(d.provider, d.model) for d in group.deployments):
                names.append(name)
        return names

    def group_allows(self, model: str | None, allow: RouteFilter) -> bool | None:
        """Return whether ALLOW lets a caller use model group MODEL; None when MODEL is no group served.

        A group is allowed when ALLOW allows one of its deployments (the
        route filter then keeps each call on those), so that a key's access
        to a group does not depend on which deployment the strategy draws.
        """
        group = self.groups.get(model)
        if group is None:
            return None
        return any(allow(d.provider, d.model) for d in group.deployments)

    def chain(self, first: Route) -> list[Route]:
        """Return FIRST, its live fallbacks, then the routing default: each provider once.

        The default is asked for its own default model: the request's model
        was meant for FIRST.
        """
        routes = [first]
        seen = {first.provider}
        for entry in self.registry.spec(first.provider).fallbacks:
            name, _, model = entry.partition("/")
            if name in seen or name not in self.registry:
                continue
            seen.add(name)
            routes.append(Route(name, model or None))
        default = self.registry.default_name
        if default is not None and default not in seen:
            routes.append(Route(default, None))
        return routes

    def _deadline_seconds(self, name: str) -> float:
        try:
            config = self.registry.get(name).config
        except ProviderNotFoundError:
            config = {}
        return float(routing_setting(config, "deadline_seconds"))

    async def _run(
        self,
        request: ChatRequest,
        provider_name: str | None,
        attempt: Attempt[T],
        keep: AsyncExitStack | None,
        allow: RouteFilter | None = None,
    ) -> tuple[T, AbstractAIProvider, Route, RequestTrace]:
        """Call ATTEMPT along REQUEST's routes until one succeeds; return its result and how.

        What a successful attempt put on its exit stack (the lease, an open
        stream) moves to KEEP; with no KEEP (an answer whole, nothing left open),
        it is let go as the attempt returns. Raise the error that ended the request: a
        bad request at once, else the last failure once every route is
        spent or the deadline has passed.
        """
        routes = self.routes(request, provider_name)
        first = routes[0]
        attempt = self._measured(attempt)
        trace = RequestTrace(deadline=self._clock() + self._deadline_seconds(first.provider))
        last_error: ProviderError | None = None
        first_refusal: ProviderError | None = None
        open_breakers: list[CircuitBreaker] = []
        for index, route in enumerate(routes):
            try:
                live = self.registry.get(route.provider)
            except ProviderNotFoundError:
                # Taken out of service since the chain was built.
                trace.give_up(route, "provider_not_found", 0)
                continue
            if allow is not None and not allow(
                route.provider, route.model or live.config.get("default_model")
            ):
                continue  # the caller may not use it: skipped, never called
            refusal = unsupported_option_error(request, live, route.provider)
            if refusal is not None:
                if index == 0 and route.group is None:
                    raise refusal  # the client's choice of provider: say what it lacks
                # A fallback (or another deployment of the group) that would drop
                # an option is skipped, never called.
                first_refusal = first_refusal or refusal
                trace.give_up(route, refusal.kind, 0)
                continue
            breaker = self._breaker_for(route.provider, live)
            counters = self.counters(route.provider)
            tries = retry = 0
            while True:
                remaining = trace.deadline - self._clock()
                if remaining <= 0:
                    if tries:
                        trace.give_up(route, last_error.kind if last_error else "timeout", tries)
                    raise last_error or ProviderTimeoutError(
                        f"No provider answered within the request's deadline "
                        f"({self._deadline_seconds(first.provider):g}s).",
                        provider=first.provider,
                    )
                probe = breaker.state == HALF_OPEN
                if not breaker.allow():
                    if tries:  # this request's own failures opened it
                        counters.failovers += 1
                    else:
                        counters.skipped += 1
                    open_breakers.append(breaker)
                    error = last_error.kind if tries and last_error else "circuit_open"
                    trace.give_up(route, error, tries)
                    logger.info("provider %s skipped: its circuit breaker is open", route.provider)
                    break
                # Each route still to try, this one included, keeps an equal share.
                budget = remaining / (len(routes) - index)
                settled = False
                try:
                    async with AsyncExitStack() as stack:
                        try:
                            provider = await stack.enter_async_context(
                                self.registry.lease(route.provider)
                            )
                        except ProviderNotFoundError:
                            # Taken out of service while this request waited to retry.
                            if probe:
                                breaker.release_probe()
                            settled = True
                            trace.give_up(route, "provider_not_found", tries)
                            break
                        tries += 1
                        trace.attempts += 1
                        counters.attempts += 1
                        called = self._clock()
                        try:
                            result = await self._call(
                                attempt, provider, request, route, stack, budget
                            )
                        finally:
                            trace.upstream_seconds += self._clock() - called
                        if keep is not None:
                            await keep.enter_async_context(stack.pop_all())
                    breaker.record_success()
                    counters.successes += 1
                    settled = True
                    return result, provider, route, trace
                except ProviderError as exc:
                    settled = True
                    exc.provider = exc.provider or route.provider
                    last_error = exc
                    self._note_failure(exc, live, breaker, probe=probe)  # re-raises a bad request
                    counters.failures += 1
                    wait = None
                    if not isinstance(exc, AuthenticationError | AttemptTimeoutError):
                        remaining = trace.deadline - self._clock()
                        # Read when a call fails: a call that succeeds needs no retry policy.
                        policy = RetryPolicy.from_config(live.config)
                        wait = policy.wait_before_retry(retry, exc, remaining, self._rng)
                    if wait is None:
                        counters.failovers += 1
                        trace.give_up(route, exc.kind, tries)
                        logger.warning(
                            "provider %s failed (%s) after %d attempt(s); failing over",
                            route.provider,
                            exc.kind,
                            tries,
                        )
                        break
                    retry += 1
                    counters.retries += 1
                    trace.retries.append(
                        {"route": str(route), "error": exc.kind, "wait_seconds": round(wait, 3)}
                    )
                    logger.info(
                        "provider %s failed (%s); retry %d in %.3fs",
                        route.provider,
                        exc.kind,
                        retry,
                        wait,
                    )
                    slept = self._clock()
                    try:
                        await self._sleep(wait)
                    finally:
                        trace.waited_seconds += self._clock() - slept
                finally:
                    # Cancelled (the client left) or a plugin's BaseException: the
                    # probe proved nothing, and another caller may take it.
                    if not settled and probe:
                        breaker.release_probe()
        if last_error is not None:
            raise last_error
        if first_refusal is not None and not open_breakers:
            raise first_refusal  # no route could honour the request's options
        resting = [self.out_of_service.get(route.provider) for route in routes]
        if first.group is not None and all(resting):
            reasons = "; ".join(
                f"{route.provider}: {state.reason}"
                for route, state in zip(routes, resting, strict=True)
                if state is not None
            )
            raise ProviderDisabledError(
                f"No deployment of the model group {first.group!r} is serving ({reasons}).",
                provider=first.provider,
                field="model",
            )
        if not open_breakers:
            raise ProviderUnavailableError(
                f"No provider of {first.provider!r}'s chain is in service.",
                provider=first.provider,
            )
        retry_in = min(b.retry_in() for b in open_breakers)
        raise ProviderUnavailableError(
            f"Provider {first.provider!r} and its fallbacks are paused after repeated "
            f"failures (circuit breaker open); try again in {retry_in:.0f}s.",
            provider=first.provider,
            retry_after=retry_in,
        )

    def _measured(self, attempt: Attempt[T]) -> Attempt[T]:
        """Return ATTEMPT, counting a group deployment's requests in flight and timing its successes.

        The in-flight count is held on the attempt's exit stack, which a
        successful attempt hands to the caller: a stream counts until it ends.
        A stream's latency is its time to the first chunk.
        """

        async def measured(
            provider: AbstractAIProvider, prepared: ChatRequest, route: Route, stack: AsyncExitStack
        ) -> T:
            if route.group is None:
                return await attempt(provider, prepared, route, stack)
            deployment = Deployment(route.provider, route.model or "")
            stack.enter_context(self.groups.serving(deployment))
            started = self._clock()
            result = await attempt(provider, prepared, route, stack)
            self.groups.record_latency(deployment, self._clock() - started)
            return result

        return measured

    def _note_failure(
        self,
        exc: ProviderError,
        provider: AbstractAIProvider,
        breaker: CircuitBreaker,
        *,
        probe: bool,
    ) -> None:
        """Feed failure EXC of PROVIDER to its BREAKER; re-raise EXC when it is the caller's fault.

        An authentication failure also marks the provider misconfigured (its
        message kept with the secrets masked). A bad request or a plugin's
        bug says nothing of the upstream's health: it is not counted, and a
        PROBE it took is given back.
        """
        if isinstance(exc, AuthenticationError):
            breaker.record_failure(exc.kind)
            breaker.mark_misconfigured(redact(exc.message, instance_secret_values(provider)))
        elif exc.retryable:
            breaker.record_failure(exc.kind)
        else:
            if probe:
                breaker.release_probe()
            raise exc

    async def _call(
        self,
        attempt: Attempt[T],
        provider: AbstractAIProvider,
        request: ChatRequest,
        route: Route,
        stack: AsyncExitStack,
        budget: float,
    ) -> T:
        """Make one ATTEMPT on PROVIDER within BUDGET seconds; raise only ``ProviderError``."""
        timer = asyncio.timeout(budget)
        try:
            async with timer:
                prepared = provider.prepare_request(request.with_model(route.model))
                return await attempt(provider, prepared, route, stack)
        except ProviderError:
            raise
        except TimeoutError as exc:
            if timer.expired():
                raise AttemptTimeoutError(
                    f"Provider {route.provider!r} did not answer within {budget:.3g}s, "
                    "its share of the request's deadline.",
                    provider=route.provider,
                ) from None
            raise plugin_failure(route, exc) from exc
        except Exception as unexpected:
            raise plugin_failure(route, unexpected) from unexpected

    # --- chat -------------------------------------------------------------

    async def chat_completion(
        self,
        request: ChatRequest,
        provider_name: str | None = None,
        *,
        allow: RouteFilter | None = None,
    ) -> ChatResponse:
        """Answer REQUEST, retrying and failing over as the module docstring says.

        The response's ``provider`` and ``model`` say who answered; its
        metadata holds ``attempts`` and, when there were any,
        ``fallback_path`` and ``retries``.
        """

        async def complete(
            provider: AbstractAIProvider, prepared: ChatRequest, route: Route, _: AsyncExitStack
        ) -> ChatResponse:
            return await provider.chat_completion(prepared)

        try:
            # The answer is whole: the lease is given back as the attempt returns.
            response, _, route, trace = await self._run(
                request, provider_name, complete, None, allow
            )
        except ModelNotFoundError as exc:
            self._hint_unknown_model(exc, request, provider_name)
            raise
        response.provider = route.provider
        trace.annotate(response.metadata)
        if route.group is not None:
            response.metadata["model_group"] = route.group
        return response

    async def chat_completion_stream(
        self,
        request: ChatRequest,
        provider_name: str | None = None,
        *,
        allow: RouteFilter | None = None,
    ) -> AsyncIterator[StreamingChunk]:
        """Stream the answer to REQUEST.

        Every chunk's metadata names the ``provider`` and ``model``
        answering; the final chunk's also holds the request's trace (as in
        ``chat_completion``). Failures before the first chunk are retried and
        failed over; one after it is raised to the caller, who keeps the
        partial text, and no other provider is called.
        """

        async def open_stream(
            provider: AbstractAIProvider,
            prepared: ChatRequest,
            route: Route,
            stack: AsyncExitStack,
        ) -> tuple[AsyncIterator[StreamingChunk], StreamingChunk]:
            stream = provider.chat_completion_stream(prepared)
            stack.push_async_callback(stream.aclose)
            first = await anext(stream, None)
            if first is None:
                raise ProtocolError(
                    f"Provider {route.provider!r} ended its stream before the first chunk.",
                    provider=route.provider,
                )
            return stream, first

        async with AsyncExitStack() as keep:
            try:
                (stream, first), provider, route, trace = await self._run(
                    request, provider_name, open_stream, keep, allow
                )
            except ModelNotFoundError as exc:
                self._hint_unknown_model(exc, request, provider_name)
                raise
            model = route.model or provider.config.get("default_model")
            chunk: StreamingChunk | None = first
            try:
                while chunk is not None:
                    chunk.metadata["provider"] = route.provider
                    chunk.metadata["model"] = chunk.model or model
                    if route.group is not None:
                        chunk.metadata["model_group"] = route.group
                    if chunk.is_final:
                        trace.annotate(chunk.metadata)
                    yield chunk
                    chunk = await anext(stream, None)
            except ProviderError as exc:
                exc.provider = exc.provider or route.provider
                self._stream_broke(route, exc)
                raise
            except Exception as unexpected:
                error = plugin_failure(route, unexpected)
                self._stream_broke(route, error)
                raise error from unexpected

    def _stream_broke(self, route: Route, exc: ProviderError) -> None:
        """Count a failure after the first chunk: there is no failover either way.

        Only the upstream's failures count toward the breaker; a bad request
        or a plugin's bug (``PluginError``) is logged and left uncounted.
        """
        if exc.retryable or isinstance(exc, AuthenticationError):
            self.breaker(route.provider).record_failure(exc.kind)
            self.counters(route.provider).failures += 1
        logger.warning("provider %s failed mid-stream (%s)", route.provider, exc.kind)
