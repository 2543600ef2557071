"""HTTPProvider: the one HTTP layer under every provider that talks to an upstream API.

A provider built on it is mostly its wire format: it says how to
authenticate, how to read an upstream's error body, and how to build and
parse its requests. This module owns the rest, once: a pooled
``UpstreamSession`` per instance (per event loop: aiohttp's connection pool,
``providers.upstream.session``), timeouts from settings, every new
connection checked against the upstream policy after DNS
(``providers.upstream.connections``), no redirects and no retries of its own
(the ModelManager owns retries), the SSE and NDJSON stream readers, and the
mapping of every failure to a typed ``ProviderError`` with secrets stripped.

That mapping is one table from an upstream status to an error kind, used
for HTTP answers (``HTTPProvider.error_for_status``) and for what a wire
format raises (``HTTPProvider.wire_call``): a wire format is pure functions
that raise ``WireFormatError`` when the upstream's data breaks it,
``UpstreamErrorEvent`` when the upstream reports an error inside an answer
that began with 200 (mid-stream), and ``BadRequestError`` or
``UnsupportedCapabilityError`` for a request it cannot express.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson

from providers.base import AbstractAIProvider
from providers.errors import (
    AuthenticationError,
    BadRequestError,
    ModelNotFoundError,
    ProtocolError,
    ProviderConfigError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from providers.runtime.retry_policy import parse_retry_after
from providers.secrets.masking import redact
from providers.secrets.values import instance_secret_values
from providers.types import HealthStatus
from providers.upstream.connections import resolved_problem
from providers.upstream.policy import base_url_problem
from providers.upstream.session import (
    BrokenConnection,
    RefusedByPolicy,
    TransportFailure,
    TransportTimeout,
    UpstreamAnswer,
    UpstreamSession,
)

# Settings every HTTP provider shares; a plugin adds its own properties to these.
HTTP_SETTINGS_SCHEMA: dict[str, dict[str, Any]] = {
    "temperature": {
        "type": "number",
        "title": "Default temperature",
        "description": "Sampling temperature used when a request sets none.",
        "minimum": 0,
        "maximum": 2,
    },
    "timeout": {
        "type": "number",
        "title": "Read timeout (seconds)",
        "description": "How long to wait for the upstream to send the next bytes.",
        "default": 60,
        # Below a tenth of a second no upstream can answer: a typo, not a setting.
        "minimum": 0.1,
        "maximum": 3600,
    },
    "connect_timeout": {
        "type": "number",
        "title": "Connect timeout (seconds)",
        "description": "How long to wait to open a connection to the upstream.",
        "default": 5,
        "minimum": 0.1,
        "maximum": 300,
    },
    "max_connections": {
        "type": "integer",
        "title": "Connection pool size",
        "description": (
            "Most connections open to the upstream at once, per worker: each streamed answer "
            "holds one for as long as it streams, so this bounds a worker's concurrent streams."
        ),
        "default": 1000,
        "minimum": 1,
        "maximum": 10000,
    },
}


class WireFormatError(ProtocolError):
    """What a wire format raises when the upstream's data breaks it.

    The message is what the upstream did, to follow its name: "sent a model
    list without data." ``HTTPProvider.wire_call`` makes it this provider's
    ``ProtocolError``, "OpenAI sent a model list without data."
    """


class UpstreamErrorEvent(Exception):
    """What a wire format raises for an error the upstream reports inside an answer begun with 200.

    An ``error`` event in a stream, or an error object in place of the
    answer. BODY is the error as the upstream sent it, read like an error
    answer's body (``HTTPProvider.upstream_error_message``); STATUS is the
    HTTP status the error stands for, which the wire format knows from the
    error's type, so that it gets the kind its HTTP twin gets.
    """

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"upstream error {status}")
        self.status = status
        self.body = body


def status_named_in(text: str, statuses: dict[str, int], otherwise: int = 500) -> int:
    """Return the status of the first word of STATUSES that TEXT holds, else OTHERWISE.

    For a wire format that knows an error sent inside an answer only by its
    words (its type, its code, its message).
    """
    return next((status for word, status in statuses.items() if word in text), otherwise)


def default_model_setting(
    default: str, description: str = "Model used when a request names none."
) -> dict[str, Any]:
    """Return the ``default_model`` setting, DEFAULT unless configured."""
    return {
        "type": "string",
        "title": "Default model",
        "description": description,
        "default": default,
        "minLength": 1,
    }


def keyed_api_schema(
    title: str, *, api_key_description: str, properties: dict[str, Any]
) -> dict[str, Any]:
    """Return the config schema of an API that needs a key.

    Its settings: a required secret ``api_key``, PROPERTIES, and the HTTP
    settings; no other.
    """
    return {
        "type": "object",
        "title": title,
        "properties": {
            "api_key": {
                "type": "string",
                "title": "API key",
                "description": api_key_description,
                "writeOnly": True,
                "minLength": 1,
            },
            **properties,
            **HTTP_SETTINGS_SCHEMA,
        },
        "required": ["api_key"],
        "additionalProperties": False,
    }


T = TypeVar("T")


@dataclass(slots=True)
class SSEEvent:
    """One Server-Sent Event as the upstream sent it."""

    event: str
    data: str


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def encode_json(value: Any) -> bytes:
    """Return VALUE as compact UTF-8 JSON (orjson: a tenth of ``json``'s time on a chat body).

    What orjson cannot write (a key that is not a string, an integer beyond 64
    bits) is written by ``json``, which refuses NaN and infinities as orjson
    does not: none reaches here from a client (``bounded_json`` refuses them).
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()


def decode_json(body: bytes | str) -> Any:
    """Return the JSON document BODY; raise ``ValueError`` if it is not one (NaN is not)."""
    return orjson.loads(body)


@cache
def shared_ssl_context() -> ssl.SSLContext:
    """Return one TLS context for every provider client.

    Building one loads the CA bundle, which takes a tenth of a second or
    more: paid once per process rather than on every hot swap, on the loop.
    """
    return httpx.create_ssl_context()


class StreamedAnswer:
    """``async with StreamedAnswer(provider, path, body, headers) as answer``: a POST read as it arrives.

    Entering sends BODY (as JSON) through PROVIDER's session and raises the
    provider's error for a status of 300 or more (its body read first); a
    transport failure, on entering or while the answer is read inside the
    block, becomes the provider's typed error. Leaving gives the connection
    back, or closes it when the answer was not read to its end. A class
    rather than a generator of the answer's lines: a stream's reader steps
    through one generator fewer for every event.
    """

    __slots__ = ("_exchange", "_provider")

    def __init__(
        self, provider: HTTPProvider, path: str, body: Any, headers: dict[str, str] | None
    ) -> None:
        self._provider = provider
        self._exchange = provider._session_for_loop().request(
            "POST", path, body=encode_json(body), headers=headers
        )

    async def __aenter__(self) -> UpstreamAnswer:
        try:
            answer = await self._exchange.__aenter__()
            if answer.status < 300:
                return answer
            try:
                failure = self._provider._error_from_response(answer, await answer.read())
            finally:
                await self._exchange.__aexit__(None, None, None)
        except TransportFailure as exc:
            raise self._provider._transport_error(exc) from None
        raise failure

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exchange.__aexit__(exc_type, exc, tb)
        if isinstance(exc, TransportFailure):
            raise self._provider._transport_error(exc) from None


class HTTPProvider(AbstractAIProvider):
    """Base class of providers that call an HTTP API.

    Subclasses set ``display_name`` and implement ``auth_headers`` and the
    chat methods with ``post_json`` / ``stream_sse`` / ``stream_ndjson``,
    calling their wire format through ``wire_call``; they may override
    ``upstream_error_message`` to read their error body and
    ``error_for_status`` to refine the mapping.
    """

    display_name = "Upstream"

    def __init__(self, config: dict[str, Any] | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._session: UpstreamSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    # --- what subclasses provide ---------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """Return the headers that authenticate a request."""
        return {}

    def default_headers(self) -> dict[str, str]:
        """Return headers sent with every request, authentication included."""
        return {"Accept": "application/json", **self.auth_headers()}

    def upstream_error_message(self, body: Any) -> str | None:
        """Return the human message inside an upstream error BODY (parsed JSON), if any."""
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return error["message"]
            if isinstance(error, str):
                return error
            if isinstance(body.get("message"), str):
                return body["message"]
        return None

    # --- lifecycle -----------------------------------------------------

    @property
    def base_url(self) -> str:
        return str(self.config["base_url"]).rstrip("/")

    def get_config_errors(self, config: dict[str, Any]) -> dict[str, list[str]]:
        """Return schema errors plus the upstream URL policy's verdict on ``base_url``."""
        errors = super().get_config_errors(config)
        url = config.get("base_url")
        if url is None:  # the schema's default applies
            url = (self.config_schema().get("properties", {}).get("base_url") or {}).get("default")
        if isinstance(url, str) and "base_url" not in errors:
            problem = base_url_problem(url)
            if problem:
                errors["base_url"] = [problem]
        return errors

    async def initialize(self) -> None:
        problem = base_url_problem(self.base_url) or await resolved_problem(self.base_url)
        if problem:
            raise ProviderConfigError(
                f"base_url: {problem}", errors={"base_url": [problem]}, provider=self.name
            )
        self._session_for_loop()

    async def shutdown(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._session_loop is asyncio.get_running_loop():
            await session.aclose()

    def _session_for_loop(self) -> UpstreamSession:
        """Return this instance's pooled session, made anew if the event loop changed.

        A connection pool belongs to the loop that opened it; a provider built
        on one loop (a management command) and used on another (a server)
        gets a fresh pool instead of a broken one.
        """
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop:
            self._session = UpstreamSession(
                self.base_url,
                headers=self.default_headers(),
                read_timeout=float(self.config["timeout"]),
                connect_timeout=float(self.config["connect_timeout"]),
                max_connections=int(self.config["max_connections"]),
                ssl_context=shared_ssl_context(),
            )
            self._session_loop = loop
        return self._session

    # --- errors --------------------------------------------------------

    def secret_values(self) -> list[str]:
        """Return the configured secret values, by the one rule of ``providers.secrets.values``."""
        return instance_secret_values(self)

    def _error(self, cls: type[ProviderError], message: str, **kwargs: Any) -> ProviderError:
        return cls(redact(message, self.secret_values()), provider=self.name, **kwargs)

    def error_for_status(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> ProviderError:
        """Return the typed error for an upstream answer with STATUS."""
        if 300 <= status < 400:
            # Never followed (it could lead to an internal address); say where it
            # pointed, host only: a redirect's query may carry a token.
            target = urlsplit((headers or {}).get("location", ""))
            where = f" to {target.scheme}://{target.netloc}" if target.netloc else ""
            return self._error(
                ProtocolError,
                f"{self.display_name} answered {status}, a redirect{where}; Echo does not "
                "follow redirects: check base_url.",
                status_code=status,
            )
        return self._error_of_status(
            status, f"{self.display_name} answered {status}: {message}", headers
        )

    def _error_of_status(
        self, status: int, text: str, headers: Mapping[str, str] | None = None
    ) -> ProviderError:
        """Return the error kind an upstream error with STATUS stands for, saying TEXT."""
        retry_after = parse_retry_after(headers) if headers is not None else None
        if status in (401, 403):
            return self._error(AuthenticationError, text, status_code=status)
        if status == 404:
            return self._error(ModelNotFoundError, text, status_code=status)
        if status == 429:
            return self._error(RateLimitError, text, status_code=status, retry_after=retry_after)
        if status == 408:
            return self._error(ProviderTimeoutError, text, status_code=status)
        if 400 <= status < 500:
            return self._error(BadRequestError, text, status_code=status)
        return self._error(
            ProviderUnavailableError, text, status_code=status, retry_after=retry_after
        )

    def wire_call(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Return STEP(*ARGS, **KWARGS), a call into the wire format, its errors made this provider's.

        An ``UpstreamErrorEvent`` gets the kind of its status, like an HTTP
        answer; a ``WireFormatError`` becomes a ``ProtocolError`` naming the
        upstream; any other ``ProviderError`` (a request the wire format
        cannot express) is kept. Each carries this provider's name.
        """
        try:
            return step(*args, **kwargs)
        except UpstreamErrorEvent as event:
            message = self.upstream_error_message(event.body) or "unknown error"
            text = f"{self.display_name} failed mid-stream: {message}"
            raise self._error_of_status(event.status, text) from None
        except WireFormatError as exc:
            raise self._error(ProtocolError, f"{self.display_name} {exc.message}") from None
        except ProviderError as exc:
            exc.provider = exc.provider or self.name
            raise

    def _error_from_response(self, answer: UpstreamAnswer, body: bytes) -> ProviderError:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        message = self.upstream_error_message(parsed)
        if message is None:
            message = body[:200].decode("utf-8", "replace").strip() or answer.reason
        return self.error_for_status(answer.status, message, answer.headers)

    def _transport_error(self, exc: TransportFailure) -> ProviderError:
        if isinstance(exc, RefusedByPolicy):
            return self._error(
                ProviderUnavailableError, f"Echo refused to connect to {self.display_name}: {exc}"
            )
        if isinstance(exc, TransportTimeout):
            return self._error(ProviderTimeoutError, f"{self.display_name} timed out ({exc}).")
        if isinstance(exc, BrokenConnection):
            return self._error(ProtocolError, f"{self.display_name} broke the connection: {exc}")
        return self._error(ProviderUnavailableError, f"Cannot reach {self.display_name}: {exc}")

    # --- health --------------------------------------------------------

    async def health_check(self) -> HealthStatus:
        """Check the upstream by listing its models: it proves the key works and spends no tokens.

        A failure is reported in the status (with its typed message), not raised.
        """
        started = time.perf_counter()
        try:
            models = await self.list_models()
        except ProviderError as exc:
            return HealthStatus(
                available=False, error=exc.message, response_time_ms=_elapsed_ms(started)
            )
        return HealthStatus(available=True, models=models, response_time_ms=_elapsed_ms(started))

    # --- requests ------------------------------------------------------

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send one request and return its JSON body; raise a typed error on any failure."""
        session = self._session_for_loop()
        content = None if json_body is None else encode_json(json_body)
        try:
            async with session.request(method, path, body=content, headers=headers) as answer:
                body = await answer.read()
        except TransportFailure as exc:
            raise self._transport_error(exc) from None
        if answer.status >= 300:
            raise self._error_from_response(answer, body)
        try:
            return decode_json(body)
        except ValueError:
            raise self._error(
                ProtocolError, f"{self.display_name} sent a body that is not JSON."
            ) from None

    async def post_json(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        """POST BODY as JSON to PATH and return the JSON answer."""
        return await self.request_json("POST", path, json_body=body, headers=headers)

    async def stream_lines(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> AsyncIterator[str]:
        """POST BODY and yield the answer's lines as they arrive."""
        async with StreamedAnswer(self, path, body, headers) as answer:
            async for batch in answer.line_batches():
                for line in batch:
                    yield line

    async def stream_sse(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> AsyncIterator[SSEEvent]:
        """POST BODY and yield the Server-Sent Events of the answer as they arrive.

        Read a network read's lines at a time (an event is usually one read).
        """
        event, data = "", []
        async with StreamedAnswer(self, path, body, headers) as answer:
            async for batch in answer.line_batches():
                for line in batch:
                    if line[:5] == "data:":  # most lines: the field, and its value after one space
                        data.append(line[6:] if line[5:6] == " " else line[5:])
                    elif line == "":
                        if data:
                            yield SSEEvent(event or "message", "\n".join(data))
                        event, data = "", []
                    elif line.startswith(":"):
                        continue  # an SSE comment (keep-alive)
                    else:
                        field, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "event":
                            event = value
                        elif field == "data":
                            data.append(value)
        if data:
            yield SSEEvent(event or "message", "\n".join(data))

    async def stream_ndjson(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """POST BODY and yield each JSON object of a newline-delimited JSON answer."""
        async for line in self.stream_lines(path, body, headers):
            if not line.strip():
                continue
            yield self.parse_json_text(line)

    def parse_json_text(self, text: str) -> Any:
        """Return TEXT parsed as JSON, or raise ``ProtocolError``."""
        try:
            return decode_json(text)
        except ValueError:
            raise self._error(
                ProtocolError, f"{self.display_name} sent malformed JSON in its stream."
            ) from None
