"""ModelManager: route a chat request to a provider and fail over along its chain.

Routing picks the provider by explicit name, by a ``provider/model`` prefix
on the model, or the default provider. When the chosen provider fails with a
retryable error, the request goes to each fallback in turn; a fallback may
name its own model (``anthropic/claude-3-5-haiku-latest``). A stream fails
over only before its first chunk: after that the partial answer stands and
the error reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from providers.circuit_breaker import CircuitBreaker
from providers.errors import ProviderError, ProviderNotFoundError, ProviderUnavailableError
from providers.registry import ProviderRegistry
from providers.types import ChatRequest, ChatResponse, StreamingChunk

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """One provider to try, with the model to ask it for (None: its default)."""

    provider: str
    model: str | None

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}" if self.model else self.provider


def plugin_failure(route: Route, exc: Exception) -> ProviderError:
    """Return a plugin's unexpected exception as a retryable provider error.

    A bug in one plugin must not reach the client as a bare 500, and another
    provider may well answer; the traceback goes to the log, not the client.
    """
    logger.error("provider %s raised %s", route.provider, type(exc).__name__, exc_info=exc)
    return ProviderUnavailableError(
        f"Provider {route.provider!r} failed unexpectedly ({type(exc).__name__}).",
        provider=route.provider,
    )


class ModelManager:
    """Route requests over the providers of a registry."""

    def __init__(self, registry: ProviderRegistry) -> None:
        self.registry = registry
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, name: str) -> CircuitBreaker:
        """Return the circuit breaker of provider NAME (made on first use)."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = CircuitBreaker()
        return breaker

    def resolve(self, request: ChatRequest, provider_name: str | None = None) -> Route:
        """Return the first route for REQUEST.

        Raise ``ProviderNotFoundError`` when the named provider is not live or
        there is no default.
        """
        model = request.model
        if provider_name:
            if provider_name not in self.registry:
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
        default = self.registry.default_name
        if default is None:
            raise ProviderNotFoundError(
                "No provider was named and no default provider is configured.", field="provider"
            )
        return Route(default, model)

    def chain(self, first: Route) -> list[Route]:
        """Return FIRST followed by its live fallbacks, each provider once."""
        routes = [first]
        seen = {first.provider}
        for entry in self.registry.spec(first.provider).fallbacks:
            name, _, model = entry.partition("/")
            if name in seen or name not in self.registry:
                continue
            seen.add(name)
            routes.append(Route(name, model or None))
        return routes

    async def chat_completion(
        self, request: ChatRequest, provider_name: str | None = None
    ) -> ChatResponse:
        """Answer REQUEST, failing over on retryable errors.

        The response's ``provider`` and ``model`` say who answered, and
        ``metadata["fallback_path"]`` lists the routes that failed first.
        """
        failures: list[dict[str, str]] = []
        routes = self.chain(self.resolve(request, provider_name))
        for index, route in enumerate(routes):
            try:
                try:
                    async with self.registry.lease(route.provider) as provider:
                        response = await provider.chat_completion(
                            provider.prepare_request(request.with_model(route.model))
                        )
                except ProviderError:
                    raise
                except Exception as unexpected:
                    raise plugin_failure(route, unexpected) from unexpected
            except ProviderError as exc:
                exc.provider = exc.provider or route.provider
                if not exc.retryable or index == len(routes) - 1:
                    raise
                failures.append({"route": str(route), "error": exc.kind})
                logger.warning("provider %s failed (%s); failing over", route.provider, exc.kind)
                continue
            response.provider = route.provider
            if failures:
                response.metadata["fallback_path"] = failures
            return response
        raise AssertionError("unreachable: the last route either returns or raises")

    async def chat_completion_stream(
        self, request: ChatRequest, provider_name: str | None = None
    ) -> AsyncIterator[StreamingChunk]:
        """Stream the answer to REQUEST.

        Every chunk's metadata names the ``provider`` and ``model`` answering.
        A retryable failure before the first chunk fails over; one after it is
        raised to the caller, who keeps the partial text.
        """
        routes = self.chain(self.resolve(request, provider_name))
        failures: list[dict[str, str]] = []
        for index, route in enumerate(routes):
            started = False
            try:
                async with self.registry.lease(route.provider) as provider:
                    model = route.model or provider.config.get("default_model")
                    stream = provider.chat_completion_stream(
                        provider.prepare_request(request.with_model(route.model))
                    )
                    try:
                        async for chunk in stream:
                            started = True
                            chunk.metadata["provider"] = route.provider
                            chunk.metadata["model"] = chunk.model or model
                            if failures and chunk.is_final:
                                chunk.metadata["fallback_path"] = failures
                            yield chunk
                    except ProviderError:
                        raise
                    except Exception as unexpected:
                        raise plugin_failure(route, unexpected) from unexpected
                    finally:
                        await stream.aclose()
                return
            except ProviderError as exc:
                exc.provider = exc.provider or route.provider
                if started or not exc.retryable or index == len(routes) - 1:
                    raise
                failures.append({"route": str(route), "error": exc.kind})
                logger.warning(
                    "provider %s failed before streaming (%s); failing over",
                    route.provider,
                    exc.kind,
                )
