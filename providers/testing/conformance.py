"""The provider conformance kit: the tests every provider plugin must pass.

Subclass ``ProviderConformance`` in a pytest module, name the plugin class,
the fake upstream that speaks its wire protocol, and how to configure the
plugin to reach that fake::

    from providers.testing.conformance import ProviderConformance
    from providers.testing.fake_openai import FakeOpenAI
    from plugins.acme_provider import AcmeProvider

    class TestAcme(ProviderConformance):
        plugin_class = AcmeProvider
        fake_class = FakeOpenAI

        def make_config(self, fake):
            return {"base_url": fake.base_url, "api_key": self.secret}

The kit checks the contract of ``providers.base.AbstractAIProvider``:
metadata and config schema (read from the class too), per-field config errors, chat and streaming
with usage, health checks that spend no tokens, and that every upstream
failure (auth, rate limit with Retry-After, server errors, timeouts, a cut or
malformed stream, a dropped connection) arrives as the right typed
``ProviderError`` with the key nowhere in its message. A plugin that does not
talk HTTP sets ``fake_class = None`` and the fault tests are skipped with a
reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from jsonschema import Draft202012Validator

from providers.base import (
    AbstractAIProvider,
    PluginCapability,
    PluginMetadata,
    normalize_config_schema,
    secret_fields,
)
from providers.errors import (
    AuthenticationError,
    BadRequestError,
    ProtocolError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from providers.http_provider import HTTPProvider
from providers.runtime.registry import ProviderRegistry, ProviderSpec
from providers.testing.fake_server import FakeUpstream
from providers.types import ChatMessage, ChatRequest, ChatResponse, HealthStatus, StreamingChunk

STREAM_FAULT_ERRORS = (ProtocolError, ProviderUnavailableError)


class ProviderConformance:
    """Tests any provider plugin must pass; see the module docstring for use."""

    plugin_class: ClassVar[type[AbstractAIProvider]]
    fake_class: ClassVar[type[FakeUpstream] | None] = None
    #: A distinctive secret, so that a leak into a message is easy to spot.
    secret: ClassVar[str] = "sk-conformance-0123456789abcdef-SECRET"
    #: The model to ask for; None uses the plugin's default model.
    model: ClassVar[str | None] = None
    prompt: ClassVar[str] = "Hello there conformance kit"

    def make_config(self, fake: FakeUpstream | None) -> dict[str, Any]:
        """Return the plugin's configuration for reaching FAKE."""
        return {"base_url": fake.base_url} if fake is not None else {}

    # --- fixtures --------------------------------------------------------

    @pytest.fixture
    def fake(self) -> Iterator[FakeUpstream | None]:
        if self.fake_class is None:
            yield None
            return
        fake = self.fake_class().start()
        try:
            yield fake
        finally:
            fake.stop()

    @pytest.fixture
    async def provider(self, fake: FakeUpstream | None) -> AsyncIterator[AbstractAIProvider]:
        provider = self.plugin_class(self.make_config(fake), name="conformance")
        await provider.initialize()
        try:
            yield provider
        finally:
            await provider.shutdown()

    def request(self, *, stream: bool = False) -> ChatRequest:
        return ChatRequest(
            messages=[ChatMessage(role="user", content=self.prompt)],
            model=self.model,
            stream=stream,
        )

    def need_fake(self, fake: FakeUpstream | None) -> FakeUpstream:
        if fake is None:
            pytest.skip("the plugin declares no fake upstream (fake_class = None)")
        return fake

    async def failure(self, provider: AbstractAIProvider, *, stream: bool = False) -> ProviderError:
        """Return the typed error a chat call raises (the call must fail)."""
        with pytest.raises(ProviderError) as caught:
            if stream:
                async for _ in provider.chat_completion_stream(self.request(stream=True)):
                    pass
            else:
                await provider.chat_completion(self.request())
        assert self.secret not in str(caught.value), "the secret leaked into an error message"
        return caught.value

    # --- identity and configuration ----------------------------------------

    def test_metadata_is_complete(self, provider: AbstractAIProvider) -> None:
        metadata = provider.metadata
        assert isinstance(metadata, PluginMetadata)
        assert metadata.name and metadata.version
        assert all(isinstance(c, PluginCapability) for c in metadata.capabilities)
        metadata.as_dict()  # must be JSON-ready

    def test_metadata_and_schema_read_from_the_class(self, provider: AbstractAIProvider) -> None:
        # The admin, the API and validation before a save have no configured instance.
        declared = self.plugin_class.plugin_metadata()
        assert isinstance(declared, PluginMetadata)
        live = provider.metadata
        assert (declared.name, declared.version) == (live.name, live.version)
        assert declared.capabilities == live.capabilities
        assert self.plugin_class.config_schema() == normalize_config_schema(
            provider.get_config_schema()
        )

    def test_config_schema_is_valid_json_schema(self) -> None:
        schema = self.plugin_class.config_schema()
        Draft202012Validator.check_schema(schema)
        assert schema.get("type") == "object"

    def test_every_setting_is_documented(self) -> None:
        schema = self.plugin_class.config_schema()
        for name, prop in schema.get("properties", {}).items():
            assert prop.get("title") or prop.get("description"), f"setting {name!r} is undocumented"

    def test_its_own_config_is_valid(self, fake: FakeUpstream | None) -> None:
        provider = self.plugin_class(self.make_config(fake), name="conformance")
        assert provider.get_config_errors(self.make_config(fake)) == {}

    def test_bad_settings_are_named_field_by_field(self, fake: FakeUpstream | None) -> None:
        schema = self.plugin_class.config_schema()
        typed = {
            name: prop
            for name, prop in schema.get("properties", {}).items()
            if prop.get("type") in ("integer", "number", "string")
        }
        if not typed:
            pytest.skip("the plugin has no typed settings to get wrong")
        name, prop = next(iter(typed.items()))
        wrong: Any = "not a number" if prop["type"] in ("integer", "number") else 12345
        config = {**self.make_config(fake), name: wrong}
        provider = self.plugin_class(self.make_config(fake), name="conformance")
        assert name in provider.get_config_errors(config)
        assert provider.validate_config(config) is False

    def test_secrets_are_marked(self) -> None:
        schema = self.plugin_class.config_schema()
        for name in schema.get("properties", {}):
            if name.endswith(("key", "token", "secret", "password", "credentials")):
                assert name in secret_fields(schema), f"{name!r} looks secret but is not marked"

    # --- chat ------------------------------------------------------------

    async def test_chat_completion_answers_with_usage(self, provider: AbstractAIProvider) -> None:
        response = await provider.chat_completion(self.request())
        assert isinstance(response, ChatResponse)
        assert response.content
        assert response.model
        assert response.finish_reason
        assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0

    async def test_stream_ends_with_one_final_chunk(self, provider: AbstractAIProvider) -> None:
        chunks = [c async for c in provider.chat_completion_stream(self.request(stream=True))]
        assert chunks and all(isinstance(c, StreamingChunk) for c in chunks)
        assert chunks[-1].is_final
        assert [c for c in chunks if c.is_final] == [chunks[-1]]
        assert chunks[-1].finish_reason

    async def test_stream_says_what_the_whole_answer_says(
        self, provider: AbstractAIProvider
    ) -> None:
        whole = await provider.chat_completion(self.request())
        streamed = [c async for c in provider.chat_completion_stream(self.request(stream=True))]
        assert "".join(c.content for c in streamed) == whole.content
        if provider.supports(PluginCapability.STREAMING):
            assert len([c for c in streamed if c.content]) > 1, "STREAMING declared, one chunk sent"
            usage = streamed[-1].usage
            assert usage is not None, "a streamed answer must report usage"
            assert usage.total_tokens == whole.usage.total_tokens

    async def test_models_are_listed(self, provider: AbstractAIProvider) -> None:
        models = await provider.list_models()
        assert models and all(isinstance(m, str) for m in models)

    async def test_health_check_spends_no_tokens(
        self, provider: AbstractAIProvider, fake: FakeUpstream | None
    ) -> None:
        spent = fake.usage.completions if fake else 0
        status = await provider.health_check()
        assert isinstance(status, HealthStatus)
        assert status.available and status.models
        assert status.response_time_ms is not None
        if fake is not None:
            assert fake.usage.completions == spent, "the health check ran a completion"

    async def test_embeddings_when_declared(self, provider: AbstractAIProvider) -> None:
        if not provider.supports(PluginCapability.EMBEDDINGS):
            pytest.skip("the plugin does not declare EMBEDDINGS")
        vectors = await provider.embeddings(["one", "two"])
        assert len(vectors) == 2 and all(len(v) > 0 for v in vectors)

    # --- failures ----------------------------------------------------------

    async def test_auth_failure_is_typed(self, provider, fake) -> None:
        # An upstream that quotes the key back must not get it past the
        # provider; a keyless plugin has no secret to hide.
        keyed = bool(secret_fields(self.plugin_class.config_schema()))
        message = f"Incorrect API key {self.secret}" if keyed else "Unauthorized."
        self.need_fake(fake).inject(status=401, message=message)
        assert isinstance(await self.failure(provider), AuthenticationError)

    async def test_rate_limit_carries_retry_after(self, provider, fake) -> None:
        self.need_fake(fake).inject(status=429, retry_after=3)
        error = await self.failure(provider)
        assert isinstance(error, RateLimitError) and error.retryable
        assert error.retry_after == pytest.approx(3)

    @pytest.mark.parametrize("status", [500, 502, 503])
    async def test_server_errors_are_unavailable(self, provider, fake, status: int) -> None:
        self.need_fake(fake).inject(status=status)
        error = await self.failure(provider)
        assert isinstance(error, ProviderUnavailableError) and error.retryable

    async def test_bad_request_is_not_retryable(self, provider, fake) -> None:
        self.need_fake(fake).inject(status=400, message="messages: invalid")
        error = await self.failure(provider)
        assert isinstance(error, BadRequestError) and not error.retryable

    async def test_slow_upstream_times_out(self, fake) -> None:
        fake = self.need_fake(fake)
        provider = self.plugin_class({**self.make_config(fake), "timeout": 0.2}, name="conformance")
        await provider.initialize()
        try:
            fake.inject(delay=1.0)
            assert isinstance(await self.failure(provider), ProviderTimeoutError)
        finally:
            await provider.shutdown()

    async def test_cut_stream_is_an_error_not_a_short_answer(self, provider, fake) -> None:
        self.need_fake(fake).inject(truncate_after=2)
        assert isinstance(await self.failure(provider, stream=True), STREAM_FAULT_ERRORS)

    async def test_malformed_stream_is_a_protocol_error(self, provider, fake) -> None:
        self.need_fake(fake).inject(malformed=True)
        assert isinstance(await self.failure(provider, stream=True), ProtocolError)

    async def test_dropped_connection_is_retryable(self, provider, fake) -> None:
        self.need_fake(fake).inject(drop=True)
        error = await self.failure(provider)
        assert error.retryable

    async def test_it_recovers_after_a_failure(self, provider, fake) -> None:
        self.need_fake(fake).inject(status=503)
        await self.failure(provider)
        assert (await provider.chat_completion(self.request())).content

    async def test_shutdown_closes_connections_and_is_idempotent(self, fake) -> None:
        provider = self.plugin_class(self.make_config(fake), name="conformance")
        await provider.initialize()
        await provider.chat_completion(self.request())
        client = getattr(provider, "_client", None) if isinstance(provider, HTTPProvider) else None
        await provider.shutdown()
        if client is not None:
            assert client.is_closed, "shutdown() left the HTTP connection pool open"
        await asyncio.wait_for(provider.shutdown(), 5)

    # --- hot reload ----------------------------------------------------------

    async def test_hot_reload_keeps_a_stream_in_flight(self, fake: FakeUpstream | None) -> None:
        registry = ProviderRegistry()
        registry.register(self.plugin_class, "conformance")
        config = self.make_config(fake)
        await registry.apply(ProviderSpec("conformance", "conformance", config))
        old = registry.get("conformance")
        async with registry.lease("conformance") as provider:
            stream = provider.chat_completion_stream(self.request(stream=True))
            first = await anext(stream)
            await registry.reload("conformance", dict(config))
            assert registry.get("conformance") is not old
            rest = [chunk async for chunk in stream]
        assert rest[-1].is_final if rest else first.is_final
        answer = await registry.get("conformance").chat_completion(self.request())
        assert answer.content
        await registry.shutdown_all()
