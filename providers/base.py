"""The provider plugin contract: AbstractAIProvider and its metadata.

A plugin subclasses ``AbstractAIProvider``, declares its ``metadata`` and the
JSON Schema of its configuration (``config_json_schema``) as class attributes,
and implements the async chat methods. Echo reads both from the class, with
``plugin_metadata()`` and ``config_schema()``, wherever it has no configured
instance (the admin's forms, the schema endpoint, validation before a save);
the guide's form, a ``metadata`` property and a ``get_config_schema`` method,
works too. The base class gives what every plugin would otherwise write again:
schema defaults and per-field validation (``jsonschema``), a streaming
fallback for providers with no native streaming, and the guide's ``reload``
lifecycle.

Error contract: provider methods raise ``providers.errors.ProviderError``
kinds on failure and never put a secret in a message.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, TypeVar

from jsonschema import Draft202012Validator

from providers.errors import (
    PluginError,
    ProviderConfigError,
    ProviderError,
    UnsupportedCapabilityError,
)
from providers.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    HealthStatus,
    StreamingChunk,
    Usage,
)


class PluginCapability(str, Enum):
    """What a provider can do beyond plain chat."""

    STREAMING = "streaming"
    FUNCTION_CALLING = "function_calling"
    VISION = "vision"
    EMBEDDINGS = "embeddings"
    FINE_TUNING = "fine_tuning"
    BATCH_PROCESSING = "batch_processing"
    MULTIMODAL = "multimodal"


@dataclass(slots=True)
class PluginMetadata:
    """Who a plugin is and what it offers."""

    name: str
    version: str
    description: str = ""
    author: str = ""
    capabilities: list[PluginCapability] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    homepage: str = ""
    requires_api_key: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "author": self.author,
            "capabilities": [PluginCapability(c).value for c in self.capabilities],
            "models": list(self.models),
            "homepage": self.homepage,
            "requires_api_key": self.requires_api_key,
        }

    def configured(self, config: dict[str, Any]) -> PluginMetadata:
        """Return this metadata as a provider configured with CONFIG shows it.

        Its models are the ``models`` setting when CONFIG has that list, or
        else the declared models with the ``default_model`` setting first.
        """
        models = config.get("models")
        if isinstance(models, list) and all(isinstance(m, str) for m in models):
            return dataclasses.replace(self, models=list(models))
        default = config.get("default_model")
        if not isinstance(default, str) or not default:
            return self
        return dataclasses.replace(
            self, models=[default, *(m for m in self.models if m != default)]
        )


# Settings every provider has, whatever its plugin: how the ModelManager
# retries, fails over and breaks the circuit for it. normalize_config_schema
# adds them to each plugin's schema, so that validation, defaults, the admin
# form and the API see them like the plugin's own settings.
ROUTING_SETTINGS_SCHEMA: dict[str, dict[str, Any]] = {
    "max_retries": {
        "type": "integer",
        "title": "Retries before failover",
        "description": "How many times a retryable failure (rate limit, server error, "
        "timeout, lost connection) is retried on this provider before the request "
        "moves on to the next provider of the fallback chain.",
        "default": 2,
        "minimum": 0,
        "maximum": 10,
    },
    "retry_max_wait_seconds": {
        "type": "number",
        "title": "Longest wait before a retry (seconds)",
        "description": "Cap on one wait between retries, Retry-After included. When the "
        "upstream asks for a longer wait, the request fails over at once instead.",
        "default": 20,
        "minimum": 0,
        "maximum": 3600,
    },
    "breaker_failure_threshold": {
        "type": "integer",
        "title": "Circuit breaker: failures to open",
        "description": "Consecutive failures after which the provider gets no traffic "
        "for the cooldown.",
        "default": 5,
        "minimum": 1,
        "maximum": 1000,
    },
    "breaker_cooldown_seconds": {
        "type": "number",
        "title": "Circuit breaker: cooldown (seconds)",
        "description": "How long an open breaker keeps traffic away before it lets one "
        "probe request through.",
        "default": 30,
        # Under a second the breaker would let a failing provider be hammered.
        "minimum": 1,
        "maximum": 3600,
    },
    "deadline_seconds": {
        "type": "number",
        "title": "Request deadline (seconds)",
        "description": "Overall time for a request that starts at this provider, across "
        "retries and failover. Each provider still to try keeps an equal share, so that "
        "a hanging provider leaves time for its fallbacks. For a stream it bounds the "
        "wait for the first chunk.",
        "default": 120,
        "minimum": 0.1,
        "maximum": 3600,
    },
}


def normalize_config_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Return SCHEMA as valid JSON Schema, with the routing settings added.

    The plugin guide marks a required property with ``"required": True``
    inside the property itself (the draft-3 spelling). That is moved into the
    object's ``required`` list so that modern validators accept the schema.
    The settings of ``ROUTING_SETTINGS_SCHEMA`` are added to an object schema
    that lacks them (a plugin's own definition of one of those names wins),
    so that a closed schema (``additionalProperties: false``) accepts them too.
    """
    schema = copy.deepcopy(schema)
    if schema.get("type", "object") == "object":
        if not isinstance(schema.get("properties"), dict):
            schema["properties"] = {}
        properties = schema["properties"]
        for name, prop in ROUTING_SETTINGS_SCHEMA.items():
            properties.setdefault(name, copy.deepcopy(prop))
    properties = schema.get("properties") or {}
    required = list(schema.get("required") or [])
    for name, prop in properties.items():
        if isinstance(prop, dict) and isinstance(prop.get("required"), bool):
            if prop.pop("required") and name not in required:
                required.append(name)
    if required:
        schema["required"] = required
    return schema


def secret_fields(schema: dict[str, Any]) -> set[str]:
    """Return the names of the properties of SCHEMA that hold secrets.

    A property is a secret when it says ``"writeOnly": true`` or
    ``"format": "password"``, or when its name ends in ``api_key``, ``token``,
    ``secret`` or ``password``, so that a plugin author who forgets the
    marker still gets a masked, write-only field.
    """
    names = set()
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        if (
            prop.get("writeOnly")
            or prop.get("format") == "password"
            or name.endswith(("api_key", "token", "secret", "password"))
        ):
            names.add(name)
    return names


# C0 (NUL, TAB, CR, LF, ...), DEL and C1: none belongs in a key or a header,
# and CR/LF in a header value is a request-splitting attempt.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
CONTROL_CHARACTER_MESSAGE = (
    "Must not contain control characters (CR, LF, NUL, TAB, DEL or C1): "
    "remove any line break pasted with it."
)
# A property marked so is sent as an HTTP header value (or, for an object, as
# headers): plugins should mark such settings; the names below are caught
# even when they do not (organization, anthropic_version, extra_headers ...).
HEADER_MARKER = "x-echo-header"
HEADER_NAME = re.compile(r"(^|_)(headers?|organization|org|project|version|user_agent)$")


def header_fields(schema: dict[str, Any]) -> set[str]:
    """Return the names of the properties of SCHEMA whose values go into HTTP headers."""
    names = set()
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        if prop.get(HEADER_MARKER) or HEADER_NAME.search(name):
            names.add(name)
    return names


def has_control_characters(value: Any) -> bool:
    """Return whether VALUE (a string, or the keys and values inside lists and objects) holds one."""
    if isinstance(value, str):
        return CONTROL_CHARACTERS.search(value) is not None
    if isinstance(value, dict):
        return any(has_control_characters(k) or has_control_characters(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_control_characters(item) for item in value)
    return False


def control_character_errors(
    schema: dict[str, Any], config: dict[str, Any]
) -> dict[str, list[str]]:
    """Return an error for each secret or header-bound setting of CONFIG holding a control character."""
    guarded = secret_fields(schema) | header_fields(schema)
    return {
        name: [CONTROL_CHARACTER_MESSAGE]
        for name, value in (config.items() if isinstance(config, dict) else ())
        if name in guarded and has_control_characters(value)
    }


def config_errors(schema: dict[str, Any], config: dict[str, Any]) -> dict[str, list[str]]:
    """Validate CONFIG against SCHEMA; return a message list per field (empty when valid).

    Fields are named by their dotted path; an error about the whole object is
    filed under the field it concerns (a missing or unknown property) or under
    ``"config"``. Secrets and header-bound settings must hold no control
    character (see ``control_character_errors``).
    """
    schema = normalize_config_schema(schema)
    errors: dict[str, list[str]] = control_character_errors(schema, config)
    validator = Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            for missing in error.validator_value:
                if missing not in error.instance:
                    key = f"{path}.{missing}" if path else missing
                    errors.setdefault(key, []).append("This field is required.")
            continue
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set((error.schema.get("properties") or {}).keys())
            for extra in error.instance:
                if extra not in allowed:
                    key = f"{path}.{extra}" if path else extra
                    errors.setdefault(key, []).append("Unknown setting.")
            continue
        errors.setdefault(path or "config", []).append(_readable(error))
    for path, value in _numbers(config):
        # NaN passes every minimum and maximum (each comparison is false), and
        # JSON bodies and YAML files can both spell it (NaN, .nan, .inf).
        if not math.isfinite(value):
            errors.setdefault(path or "config", []).append("Must be a finite number.")
    return errors


def _numbers(value: Any) -> list[tuple[str, float]]:
    """Return (dotted path, value) for every float inside VALUE."""
    found: list[tuple[str, float]] = []
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            found.append((path, item))
        elif isinstance(item, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(item))
    return found


def _readable(error: Any) -> str:
    """Return a jsonschema error as a sentence that does not echo a secret back."""
    validator = error.validator
    value = error.validator_value
    if validator == "type":
        return f"Must be of type {value if isinstance(value, str) else ' or '.join(value)}."
    if validator == "minimum":
        return f"Must be at least {value}."
    if validator == "maximum":
        return f"Must be at most {value}."
    if validator == "exclusiveMinimum":
        return f"Must be greater than {value}."
    if validator == "exclusiveMaximum":
        return f"Must be less than {value}."
    if validator == "enum":
        return "Must be one of: " + ", ".join(repr(v) for v in value) + "."
    if validator == "minLength":
        return f"Must be at least {value} characters long."
    if validator == "maxLength":
        return f"Must be at most {value} characters long."
    if validator == "pattern":
        return f"Must match the pattern {value}."
    if validator == "format":
        return f"Must be a valid {value}."
    if validator in {"minItems", "maxItems"}:
        bound = "least" if validator == "minItems" else "most"
        return f"Must have at {bound} {value} items."
    return f"Fails the schema rule {validator!r}."


def apply_schema_defaults(schema: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Return CONFIG with the schema's top-level defaults filled in where unset."""
    merged = dict(config)
    for name, prop in (schema.get("properties") or {}).items():
        if isinstance(prop, dict) and "default" in prop and name not in merged:
            merged[name] = copy.deepcopy(prop["default"])
    return merged


def derive_config_schema(
    schema: dict[str, Any], *, title: str | None = None, **properties: dict[str, Any]
) -> dict[str, Any]:
    """Return a copy of SCHEMA with another TITLE and changed or added PROPERTIES.

    Each keyword names a property; its keys replace that property's keys
    (``base_url={"default": "https://..."}``), or make a new property. For a
    plugin that builds on another's schema at class level.
    """
    derived = copy.deepcopy(schema)
    if title is not None:
        derived["title"] = title
    own = derived.setdefault("properties", {})
    for name, changes in properties.items():
        own[name] = {**own.get(name, {}), **copy.deepcopy(changes)}
    return derived


T = TypeVar("T")


def _read_plugin(cls: type, member: str, read: Callable[[], T]) -> T:
    """Return READ(), a read of MEMBER of plugin CLS; what the plugin raises becomes a ``PluginError``."""
    try:
        return read()
    except ProviderError:
        raise
    except Exception as exc:  # the plugin's bug, named, never a bare traceback
        text = str(exc)
        raise PluginError(
            f"{cls.__name__}.{member} failed: {type(exc).__name__}" + (f": {text}" if text else "")
        ) from exc


#: The request options every plugin honoured before plugins declared theirs:
#: the default of ``AbstractAIProvider.supported_options``.
DEFAULT_SUPPORTED_OPTIONS: frozenset[str] = frozenset(
    {"temperature", "max_tokens", "top_p", "stop", "tools", "tool_choice", "user"}
)


class AbstractAIProvider(ABC):
    """The interface every provider plugin implements.

    A plugin declares, as class attributes, ``metadata`` (a ``PluginMetadata``)
    and ``config_json_schema`` (the JSON Schema of its configuration). The
    guide's form, a ``metadata`` property and a ``get_config_schema`` method,
    works too; Echo reads both through ``plugin_metadata()`` and
    ``config_schema()`` when it has no configured instance.

    An instance is built with its configuration (``self.config``, with the
    schema's defaults, the routing settings' included) and must do no I/O in
    ``__init__``; the registry calls ``initialize()`` before the instance
    serves and ``shutdown()`` after its last in-flight request. An instance's
    ``metadata`` lists the models its configuration names (see
    ``PluginMetadata.configured``). All I/O is async and must not block the
    event loop. Methods raise ``ProviderError`` kinds on failure.
    """

    #: The JSON Schema of the plugin's configuration; a plugin declares it, or
    #: overrides ``get_config_schema`` (the guide's form).
    config_json_schema: ClassVar[dict[str, Any] | None] = None

    #: The ``ChatRequest`` options (``providers.types.OPTION_FIELDS``) this
    #: plugin honours. A request that sets another is refused with a 400 when
    #: this provider is its first route, and never failed over to it: no
    #: option is dropped silently. A plugin that honours more declares
    #: ``DEFAULT_SUPPORTED_OPTIONS | {"seed", ...}``.
    supported_options: ClassVar[frozenset[str]] = DEFAULT_SUPPORTED_OPTIONS
    #: The embedding options this plugin honours: ``dimensions`` (shorter
    #: vectors) and ``token_input`` (token-id arrays as input). Any other
    #: provider refuses a call that sets one (400), never drops it.
    embedding_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: dict[str, Any] | None = None, *, name: str | None = None) -> None:
        self.name = name or self.__class__.__name__
        self.config = apply_schema_defaults(
            normalize_config_schema(self.get_config_schema()), config or {}
        )
        self._configure_metadata()

    # --- identity -------------------------------------------------------

    @property
    @abstractmethod
    def metadata(self) -> PluginMetadata:
        """Describe the plugin: name, version, capabilities, models.

        Declare it as a class attribute (``metadata = PluginMetadata(...)``),
        or as this property, the guide's form.
        """

    @classmethod
    def plugin_metadata(cls) -> PluginMetadata:
        """Return the plugin's metadata without a configured instance.

        A class attribute is returned as declared. A ``metadata`` property
        (the guide's form) is read from an instance holding only the base's
        state, its name and the schema's defaults, the plugin's ``__init__``
        not run. Raise ``PluginError`` when the plugin fails to give one.
        """
        declared = inspect.getattr_static(cls, "metadata", None)
        if isinstance(declared, PluginMetadata):
            return declared

        def read() -> PluginMetadata:
            defaults = apply_schema_defaults(cls.config_schema(), {})
            metadata = cls._unconfigured(defaults).metadata
            if not isinstance(metadata, PluginMetadata):
                raise TypeError(f"metadata is a {type(metadata).__name__}, not a PluginMetadata")
            return metadata

        return _read_plugin(cls, "metadata", read)

    def _configure_metadata(self) -> None:
        """Give this instance the declared metadata with the models its configuration names.

        A plugin that computes ``metadata`` itself (a property) is left alone.
        """
        declared = inspect.getattr_static(type(self), "metadata", None)
        if isinstance(declared, PluginMetadata):
            self.metadata = declared.configured(self.config)

    @classmethod
    def _unconfigured(cls, config: dict[str, Any]) -> AbstractAIProvider:
        """Return an instance of the plugin with only the base's state: its name and CONFIG.

        The plugin's ``__init__`` is not run, so that reading a member the
        guide's form computes on an instance runs no plugin code but that
        member's.
        """
        instance = cls.__new__(cls)
        instance.name = cls.__name__
        instance.config = config
        return instance

    def supports(self, capability: PluginCapability) -> bool:
        """Return whether the plugin declares CAPABILITY."""
        return capability in self.metadata.capabilities

    # --- lifecycle ------------------------------------------------------

    @abstractmethod
    async def initialize(self) -> None:
        """Prepare the provider to serve (open clients, check settings)."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release what ``initialize`` acquired. Called once, after in-flight requests end."""

    async def reload(self, new_config: dict[str, Any]) -> None:
        """Apply NEW_CONFIG in place: validate, shut down, then initialize again.

        The registry's hot swap builds a fresh instance instead, so that
        requests in flight are never cut; this is the guide's in-place hook
        for code that holds a provider directly.
        """
        errors = self.get_config_errors(new_config)
        if errors:
            raise ProviderConfigError("Invalid configuration.", errors=errors, provider=self.name)
        await self.shutdown()
        self.config = apply_schema_defaults(
            normalize_config_schema(self.get_config_schema()), new_config
        )
        self._configure_metadata()
        await self.initialize()

    # --- chat -----------------------------------------------------------

    def prepare_request(self, request: ChatRequest) -> ChatRequest:
        """Return REQUEST with this provider's configured defaults filled in.

        A ``temperature`` setting applies to requests that set none; the
        router calls this before each call.
        """
        default = self.config.get("temperature")
        if request.temperature is None and default is not None:
            return dataclasses.replace(request, temperature=default)
        return request

    @abstractmethod
    async def chat_completion(self, request: ChatRequest) -> ChatResponse:
        """Answer REQUEST as a whole."""

    async def chat_completion_stream(self, request: ChatRequest) -> AsyncIterator[StreamingChunk]:
        """Stream the answer to REQUEST.

        The fallback for providers with no native streaming: one final chunk
        holding the whole answer.
        """
        response = await self.chat_completion(request)
        yield StreamingChunk(
            content=response.content,
            is_final=True,
            finish_reason=response.finish_reason,
            usage=response.usage,
            tool_calls=response.tool_calls,
            model=response.model,
            metadata={"provider": self.name, "streaming": "fallback"},
        )

    async def embeddings(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        """Return one embedding vector per text (providers with EMBEDDINGS)."""
        raise UnsupportedCapabilityError(
            f"Provider {self.name!r} does not support embeddings.", provider=self.name
        )

    async def create_embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Return REQUEST's vectors, the model that made them and the tokens they cost.

        The default serves the guide's ``embeddings(texts, model)`` and counts a
        token a word (the guide's method reports no usage); a plugin whose
        upstream counts overrides it. Options the plugin does not declare in
        ``embedding_options`` were refused before this is called.
        """
        texts = [str(text) for text in request.input]
        vectors = await self.embeddings(texts, request.model)
        usage = Usage(prompt_tokens=sum(len(text.split()) for text in texts))
        return EmbeddingResponse(vectors=vectors, model=request.model, usage=usage)

    # --- health and models ----------------------------------------------

    @abstractmethod
    async def health_check(self) -> HealthStatus:
        """Check that the provider can serve, without spending tokens."""

    @abstractmethod
    async def list_models(self) -> list[str]:
        """Return the model names the provider offers."""

    def get_model_info(self, model_name: str) -> dict[str, Any] | None:
        """Return what is known of MODEL_NAME (context length, prices, ...), or None."""
        return None

    # --- configuration --------------------------------------------------

    def get_config_schema(self) -> dict[str, Any]:
        """Return the JSON Schema of this plugin's configuration: ``config_json_schema``.

        The guide's form overrides this method instead of declaring the class attribute.
        """
        schema = type(self).config_json_schema
        if schema is None:
            raise NotImplementedError(
                f"{type(self).__name__} declares no config_json_schema "
                "and does not override get_config_schema."
            )
        return copy.deepcopy(schema)

    @classmethod
    def declares_config_schema(cls) -> bool:
        """Return whether the plugin declares its schema: the class attribute, or the guide's method."""
        overridden = cls.get_config_schema is not AbstractAIProvider.get_config_schema
        return overridden or cls.config_json_schema is not None

    def get_config_errors(self, config: dict[str, Any]) -> dict[str, list[str]]:
        """Return the schema errors of CONFIG per field; empty when it is valid.

        A setting with a control character that the plugin would send in a
        header is an error too, even when its name does not say so.
        """
        errors = config_errors(self.get_config_schema(), config)
        for name in self._header_settings_with_control_characters(config):
            errors.setdefault(name, [CONTROL_CHARACTER_MESSAGE])
        return errors

    def _header_settings_with_control_characters(self, config: dict[str, Any]) -> list[str]:
        """Return the settings of CONFIG with a control character, if they reach a header.

        A plugin that sends headers (``default_headers``, as HTTP providers
        do) is built with CONFIG, without I/O, and asked for them; when one
        holds a control character, every setting that has one is to blame.
        """
        if not isinstance(config, dict):
            return []
        suspects = [name for name, value in config.items() if has_control_characters(value)]
        headers_of = getattr(type(self), "default_headers", None)
        if not suspects or not callable(headers_of):
            return []
        try:
            headers = headers_of(type(self)(config, name=getattr(self, "name", None)))
        except Exception:  # a plugin's bug, or a config it cannot build: no headers to check
            return []
        return suspects if has_control_characters(dict(headers or {})) else []

    def validate_config(self, config: dict[str, Any]) -> bool:
        """Return whether CONFIG is valid (see ``get_config_errors`` for why not)."""
        return not self.get_config_errors(config)

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        """Return the plugin's config schema, normalized, without a configured instance.

        ``config_json_schema`` as declared, or what the guide's
        ``get_config_schema`` returns on an instance holding only the base's
        state. Raise ``PluginError`` when the plugin fails to give one.
        """
        return normalize_config_schema(
            _read_plugin(
                cls, "get_config_schema", lambda: cls._unconfigured({}).get_config_schema()
            )
        )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> dict[str, list[str]]:
        """Return CONFIG's errors per field, as ``get_config_errors`` finds them, without an instance.

        For checking a change before it is saved. ``get_config_errors`` runs
        on an instance holding only the base's state; raise ``PluginError``
        when the plugin fails.
        """
        return _read_plugin(
            cls, "get_config_errors", lambda: cls._unconfigured({}).get_config_errors(config)
        )
