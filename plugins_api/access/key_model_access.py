"""Which models a client key may use: its allow-list of ``provider/model`` patterns and its default model.

The one place of the rule. A pattern is matched fnmatch-style (``*``, ``?``,
``[...]``, case-sensitive) against ``provider/model``: ``openai/*`` is every
model of the provider named ``openai``, ``anthropic/claude-*`` a family,
``echo/echo-1`` one model. An empty list allows everything. A route whose
model is left to the provider (its ``default_model``) is matched with that
model, or with an empty one when the provider names none (``openai/*``
still allows it; ``openai/gpt-4o`` does not).

A key's optional default model (``provider/model``) is used when a call names
no model. It need not itself match the patterns when issued, but a call using
it is held to them like any other.

``parse_patterns`` and ``parse_default_model`` validate what an operator
types (``issue_api_key --models``/``--default-model``); they raise
``ValueError`` naming the mistake.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Patterns on one key; more is a mistake, not a policy.
MAX_PATTERNS = 100
#: Characters in one pattern or default model (model names are bounded to 200 at the edge).
MAX_PATTERN_CHARS = 200
# Printable, no spaces or commas (the command's separator), no control characters.
_PATTERN_CHARS = re.compile(r"[A-Za-z0-9_.:@*?\[\]!\-/]+")
_MODEL_CHARS = re.compile(r"[A-Za-z0-9_.:@\-/]+")


@dataclass(frozen=True, slots=True)
class ModelAccess:
    """A key's allowed PATTERNS (empty: everything) and its DEFAULT_MODEL (None: none)."""

    patterns: tuple[str, ...] = ()
    default_model: str | None = None

    @property
    def restricted(self) -> bool:
        """Whether some model is not allowed."""
        return bool(self.patterns)

    def allows(self, provider: str, model: str | None) -> bool:
        """Return whether MODEL of PROVIDER (None: the provider's unnamed default) may be used."""
        if not self.patterns:
            return True
        label = f"{provider}/{model or ''}"
        return any(fnmatch.fnmatchcase(label, pattern) for pattern in self.patterns)

    def allows_provider(self, provider: str) -> bool:
        """Return whether some model of PROVIDER may be used (its pattern's provider part matches)."""
        return _allows_provider(self, provider)


#: The access of a key without restrictions.
OPEN = ModelAccess()


def _provider_part(pattern: str) -> str:
    return pattern.partition("/")[0]


def _allows_provider(access: ModelAccess, provider: str) -> bool:
    return not access.patterns or any(
        fnmatch.fnmatchcase(provider, _provider_part(pattern)) for pattern in access.patterns
    )


def _check_pattern(pattern: str) -> str:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"A model pattern may have at most {MAX_PATTERN_CHARS} characters.")
    if not _PATTERN_CHARS.fullmatch(pattern):
        raise ValueError(
            f"Model pattern {pattern[:40]!r} has a character a pattern cannot have "
            "(letters, digits, '_.:@-/' and the wildcards '*?[]!' only)."
        )
    provider, slash, model = pattern.partition("/")
    if not slash or not provider or not model:
        raise ValueError(
            f"Model pattern {pattern[:40]!r} must be 'provider/model' (e.g. 'openai/*')."
        )
    return pattern


def parse_patterns(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    """Return the patterns of RAW (comma-separated text or a list; None or empty: none).

    Raise ``ValueError`` for a pattern that is not ``provider/model`` of plain
    characters, or for too many.
    """
    if raw is None:
        return ()
    if isinstance(raw, str):
        if len(raw) > MAX_PATTERNS * (MAX_PATTERN_CHARS + 1):
            raise ValueError("Too long for a list of model patterns.")
        items = [part.strip() for part in raw.split(",")]
        items = [item for item in items if item]
    else:
        items = list(raw)
        if not all(isinstance(item, str) for item in items):
            raise ValueError("Model patterns must be strings.")
    if len(items) > MAX_PATTERNS:
        raise ValueError(f"A key may have at most {MAX_PATTERNS} model patterns.")
    return tuple(dict.fromkeys(_check_pattern(item) for item in items))


def parse_default_model(raw: str | None) -> str | None:
    """Return RAW as a ``provider/model`` default model (None or empty: none), or raise ``ValueError``."""
    if raw is None or not raw.strip():
        return None
    model = raw.strip()
    if len(model) > MAX_PATTERN_CHARS or not _MODEL_CHARS.fullmatch(model):
        raise ValueError(
            "The default model must be 'provider/model' of letters, digits and '_.:@-/' "
            f"(at most {MAX_PATTERN_CHARS} characters)."
        )
    provider, _, name = model.partition("/")
    if not provider or not name:
        raise ValueError("The default model must be 'provider/model' (e.g. 'openai/gpt-4o-mini').")
    return model


def stored_access(patterns: object, default_model: str | None) -> ModelAccess:
    """Return the ModelAccess of a stored row's fields; a malformed stored list allows nothing.

    Fails closed: a row edited past the validators into something that is no
    list of strings gets a pattern no model matches.
    """
    if patterns is None or patterns == []:
        found: tuple[str, ...] = ()
    elif isinstance(patterns, list) and all(isinstance(p, str) for p in patterns):
        found = tuple(patterns) or ()
    else:
        found = ("\x00/\x00",)  # matches nothing: no provider or model has a NUL
    return ModelAccess(patterns=found, default_model=default_model or None)
