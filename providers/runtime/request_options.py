"""The one rule for a request's options: which a provider cannot honour.

A client's options (``providers.types.OPTION_FIELDS``) are either honoured
by the provider that answers, in its own wire form, or the request is
refused: never dropped. Each plugin names what it honours in
``AbstractAIProvider.supported_options``; ``unsupported_options`` compares a
request with it, and the ModelManager refuses the first route (400
``unsupported_option``, naming the option and the provider) or skips a
fallback that would have to drop one.

An option set to what every provider does anyway is no demand, so it is not
counted: ``response_format`` ``{"type": "text"}``, ``parallel_tool_calls``
true, ``logprobs`` false, ``thinking`` ``{"type": "disabled"}``.
"""

from __future__ import annotations

from typing import Any

from providers.base import DEFAULT_SUPPORTED_OPTIONS, AbstractAIProvider
from providers.errors import BadRequestError
from providers.types import OPTION_FIELDS, ChatRequest


class UnsupportedOptionError(BadRequestError):
    """The request sets an option its provider cannot honour; FIELD names the option."""

    kind = "unsupported_option"
    # The client's request is wrong as sent (not an upstream's verdict on it): 400.
    http_status = 400


def _asks_something(name: str, value: Any) -> bool:
    """Return whether option NAME set to VALUE asks for more than every provider's default."""
    if value is None:
        return False
    if name == "response_format":
        return not (isinstance(value, dict) and value.get("type") == "text")
    if name == "parallel_tool_calls":
        return value is not True
    if name == "logprobs":
        return value is not False
    if name == "thinking":
        return not (isinstance(value, dict) and value.get("type") == "disabled")
    return True


#: The options a declaration names, by declaration (plugins declare a class-level frozenset).
_DECLARED: dict[frozenset, frozenset[str]] = {}
#: Distinct declarations kept: one per plugin class in practice.
_DECLARED_KEPT = 64


def supported_options(provider: AbstractAIProvider) -> frozenset[str]:
    """Return the options PROVIDER declares it honours (the default set if it declares nonsense)."""
    declared = getattr(provider, "supported_options", DEFAULT_SUPPORTED_OPTIONS)
    if type(declared) is frozenset:
        names = _DECLARED.get(declared)
        if names is None:
            if len(_DECLARED) >= _DECLARED_KEPT:
                _DECLARED.clear()
            names = _DECLARED[declared] = frozenset(n for n in declared if isinstance(n, str))
        return names
    if not isinstance(declared, frozenset | set | tuple | list):
        return DEFAULT_SUPPORTED_OPTIONS
    return frozenset(name for name in declared if isinstance(name, str))


def unhonoured_options(honoured: frozenset[str]) -> tuple[str, ...]:
    """Return the options not in HONOURED, in ``OPTION_FIELDS`` order (worked out once per set)."""
    names = _UNHONOURED.get(honoured)
    if names is None:
        if len(_UNHONOURED) >= _DECLARED_KEPT:
            _UNHONOURED.clear()
        names = _UNHONOURED[honoured] = tuple(n for n in OPTION_FIELDS if n not in honoured)
    return names


#: The options a set of honoured options leaves out, by set.
_UNHONOURED: dict[frozenset[str], tuple[str, ...]] = {}


def unsupported_options(request: ChatRequest, provider: AbstractAIProvider) -> list[str]:
    """Return the options REQUEST sets that PROVIDER does not honour (empty: it may answer).

    Only the options PROVIDER does not honour are read from REQUEST: a couple
    for most plugins, on every call.
    """
    return [
        name
        for name in unhonoured_options(supported_options(provider))
        if (value := getattr(request, name)) is not None and _asks_something(name, value)
    ]


def unsupported_option_error(
    request: ChatRequest, provider: AbstractAIProvider, provider_name: str
) -> UnsupportedOptionError | None:
    """Return the refusal of REQUEST by PROVIDER (called PROVIDER_NAME), or None if it may answer."""
    missing = unsupported_options(request, provider)
    if not missing:
        return None
    names = ", ".join(repr(name) for name in missing)
    plural = "options" if len(missing) > 1 else "option"
    return UnsupportedOptionError(
        f"Provider {provider_name!r} does not support the {plural} {names}: remove "
        f"{'them' if len(missing) > 1 else 'it'}, or use a provider that supports "
        f"{'them' if len(missing) > 1 else 'it'}.",
        provider=provider_name,
        field=missing[0],
    )
