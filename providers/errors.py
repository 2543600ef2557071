"""The typed errors of Echo's provider layer.

Every upstream failure becomes one of these. Each kind says whether trying
again (later, or on another provider) can help: ``retryable`` drives the
ModelManager's failover, and ``http_status`` is the honest status the API
answers with. Messages must never contain a secret.
"""

from __future__ import annotations

from typing import Any


class ProviderError(Exception):
    """An upstream or provider failure.

    KIND names the failure for clients and logs; RETRYABLE says whether the
    same request may succeed on a retry or another provider.
    """

    kind = "provider_error"
    retryable = False
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.retry_after = retry_after
        self.field = field

    def as_dict(self) -> dict[str, Any]:
        """Return the error in Echo's JSON error shape (without the outer key)."""
        data: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.field:
            data["field"] = self.field
        if self.provider:
            data["provider"] = self.provider
        return data


class AuthenticationError(ProviderError):
    """The upstream refused the credentials (401/403): the provider is misconfigured."""

    kind = "authentication_error"
    http_status = 502


class RateLimitError(ProviderError):
    """The upstream asked us to slow down (429); RETRY_AFTER is in seconds."""

    kind = "rate_limited"
    retryable = True
    http_status = 429


class ProviderTimeoutError(ProviderError):
    """The upstream did not answer in time."""

    kind = "timeout"
    retryable = True
    http_status = 504


class ProviderUnavailableError(ProviderError):
    """The upstream is down, overloaded or unreachable (5xx, connection errors)."""

    kind = "unavailable"
    retryable = True
    http_status = 503


class ProtocolError(ProviderError):
    """The upstream answered with something that is not its protocol (bad JSON, cut stream)."""

    kind = "protocol_error"
    retryable = True
    http_status = 502


class BadRequestError(ProviderError):
    """The upstream rejected the request itself (400/422): it would fail anywhere."""

    kind = "bad_request"
    http_status = 422


class ModelNotFoundError(BadRequestError):
    """The provider does not know the requested model."""

    kind = "model_not_found"
    http_status = 404


class UnsupportedCapabilityError(ProviderError):
    """The provider lacks a capability the request needs (embeddings, tools, ...)."""

    kind = "unsupported_capability"
    http_status = 400


class PluginError(ProviderError):
    """A provider plugin raised something that is not a ProviderError: a bug in its code.

    Not retryable, and never counted by the circuit breaker: the same code
    fails the same way on a retry, and one request that trips a plugin's bug
    must not take the provider away from every other client. The status is
    502: the request passed Echo's validation, so the gateway's plugin, not
    the client, is at fault.
    """

    kind = "plugin_error"
    http_status = 502


class ProviderNotFoundError(ProviderError):
    """No live provider has that name."""

    kind = "provider_not_found"
    http_status = 404


class ProviderDisabledError(ProviderError):
    """The provider is configured but does not serve: disabled, or it cannot start (the message says why)."""

    kind = "provider_disabled"
    http_status = 409


class ProviderConfigError(ProviderError):
    """A configuration failed validation; ERRORS maps each field to its messages."""

    kind = "invalid_config"
    http_status = 400

    def __init__(self, message: str, *, errors: dict[str, list[str]], **kwargs: Any) -> None:
        field = next(iter(errors), None)
        super().__init__(message, field=kwargs.pop("field", field), **kwargs)
        self.errors = errors

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data["errors"] = self.errors
        return data


class ProviderInitializationError(ProviderError):
    """A provider could not start with its configuration; the old instance keeps serving."""

    kind = "initialization_failed"
    http_status = 409


class PluginLoadError(ProviderError):
    """A plugin file or class could not be loaded."""

    kind = "plugin_load_error"
    http_status = 400
