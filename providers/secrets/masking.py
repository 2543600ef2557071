"""The one way Echo shows a secret: masked, never whole, never in part.

``mask_secret`` is how a stored secret is shown (``sk-...f3a9``).
``redact`` strips secrets from text that leaves the process: any run of
``WINDOW`` or more characters of a secret is replaced, not only an exact
copy, because upstreams and HTTP libraries quote keys cut, escaped or with a
character missing. Secrets a process knows only by their shape (Echo's own
client keys, of which it keeps only hashes) are registered with
``mask_by_shape`` and masked by every redaction too.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

MASK = "****"
# The shortest run of a secret's characters that counts as leaking it. Shorter
# runs are left alone: a 7-character prefix such as "sk-proj" is not secret.
WINDOW = 8
# Text is probed every GRAM characters for a GRAM-long piece of a secret: any
# WINDOW-long run of a secret in the text contains one such probe.
GRAM = WINDOW // 2
# Secrets shorter than this are only replaced as exact copies (and not at all
# below SHORTEST_SECRET): hiding every 4-character match would shred text.
SHORTEST_SECRET = 4


def mask_secret(value: Any) -> str:
    """Return VALUE masked like ``sk-...f3a9``; short or empty values show no characters."""
    if value in (None, ""):
        return ""
    text = str(value)
    if len(text) < 12:
        return MASK
    return f"{text[:3]}...{text[-4:]}"


def mask_config(config: dict[str, Any], secret_names: set[str]) -> dict[str, Any]:
    """Return CONFIG with the values of SECRET_NAMES masked."""
    return {k: (mask_secret(v) if k in secret_names else v) for k, v in config.items()}


def secret_forms(secret: str) -> set[str]:
    """Return SECRET as it may be quoted: as is, stripped, and escaped.

    An HTTP library quotes a header holding a CR/LF as ``\\r\\n``, a JSON
    body doubles backslashes and escapes quotes: each form is redacted.
    """
    forms = {secret, secret.strip()}
    forms.add(secret.encode("unicode_escape").decode("ascii"))
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.add(repr(secret)[1:-1])
    forms.add(html.escape(secret))  # as an HTML page (the debug page) shows it
    return {form for form in forms if form}


@dataclass(frozen=True, slots=True)
class _Matcher:
    """The pieces of a set of secrets that ``redact`` looks for."""

    windows: frozenset[str]  # every WINDOW-long slice of every form
    grams: frozenset[str]  # every GRAM-long slice of those forms
    whole: dict[str, str]  # form -> its mask, for an exact copy
    short: tuple[tuple[str, str], ...]  # (secret, mask) of those shorter than WINDOW


@lru_cache(maxsize=512)
def _matcher(secrets: tuple[str, ...]) -> _Matcher:
    windows: set[str] = set()
    grams: set[str] = set()
    whole: dict[str, str] = {}
    short: list[tuple[str, str]] = []
    for secret in secrets:
        for form in secret_forms(secret):
            if len(form) < WINDOW:
                if len(form) >= SHORTEST_SECRET:
                    short.append((form, mask_secret(secret)))
                continue
            whole[form] = mask_secret(secret)
            windows.update(form[i : i + WINDOW] for i in range(len(form) - WINDOW + 1))
            grams.update(form[i : i + GRAM] for i in range(len(form) - GRAM + 1))
    # Longest first, so that a short secret inside a longer one does not split it.
    short.sort(key=lambda pair: -len(pair[0]))
    return _Matcher(frozenset(windows), frozenset(grams), whole, tuple(short))


def _secret_spans(text: str, matcher: _Matcher) -> list[tuple[int, int]]:
    """Return the merged [start, end) spans of TEXT made of WINDOW-long runs of a secret.

    The text is probed every GRAM characters (a quarter of the work of
    trying every position); only around a probe that is part of a secret are
    the WINDOW-long slices tried.
    """
    windows, grams = matcher.windows, matcher.grams
    starts: set[int] = set()
    last = len(text) - WINDOW
    for probe in range(0, len(text) - GRAM + 1, GRAM):
        if text[probe : probe + GRAM] in grams:
            for start in range(max(0, probe - GRAM + 1), min(probe, last) + 1):
                if text[start : start + WINDOW] in windows:
                    starts.add(start)
    if not starts:
        return []
    spans: list[tuple[int, int]] = []
    for start in sorted(starts):
        end = start + WINDOW
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def redact(text: str, secrets: Iterable[Any]) -> str:
    """Return TEXT with every run of WINDOW or more characters of a secret masked.

    An exact copy of a secret shows as its mask (``sk-...f3a9``), any other
    run (a prefix, a suffix, the key minus a character, a middle slice) as
    ``****``. Secrets shorter than WINDOW are replaced as exact copies only.
    """
    return secret_redactor(secrets)(text)


def secret_redactor(secrets: Iterable[Any]) -> Callable[[str], str]:
    """Return ``redact`` with SECRETS bound: for several texts, the secrets are read once.

    The redactor of the last tuple of secrets asked for is kept: every log
    record asks with the registry's one tuple (``all_secret_values``).
    """
    global _last_redactor
    last = _last_redactor
    if last is not None and last[0] is secrets:
        return last[1]
    unique = tuple(sorted({str(s) for s in secrets if s not in (None, "")}))
    redactor = partial(_redact, matcher=_matcher(unique)) if unique else _unchanged
    if type(secrets) is tuple:  # immutable: the same object holds the same secrets
        _last_redactor = (secrets, redactor)
    return redactor


#: (a tuple of secrets, its redactor): the last one ``secret_redactor`` made from a tuple.
_last_redactor: tuple[tuple[Any, ...], Callable[[str], str]] | None = None


#: Secrets known by their shape: (a text must hold MARKER for PATTERN to be tried,
#: PATTERN, what each match becomes). See ``mask_by_shape``.
_SHAPES: list[tuple[str, re.Pattern[str], str]] = []


def mask_by_shape(marker: str, pattern: re.Pattern[str], replacement: str) -> None:
    """Mask every match of PATTERN with REPLACEMENT wherever secrets are redacted (once per shape).

    For secrets the process cannot list (Echo's client keys: only their
    hashes are stored). MARKER, a plain substring every match holds, keeps
    the pattern off the texts that cannot hold one.
    """
    shape = (marker, pattern, replacement)
    if shape not in _SHAPES:
        _SHAPES.append(shape)


def has_shapes() -> bool:
    """Return whether any secret shape is registered (a redaction with no secrets still has work)."""
    return bool(_SHAPES)


def _shaped(text: str) -> str:
    for marker, pattern, replacement in _SHAPES:
        if marker in text:
            text = pattern.sub(replacement, text)
    return text


def _unchanged(text: str) -> str:
    """The redactor of no secrets: only the shapes are masked."""
    return _shaped(text) if _SHAPES and text else text


def _redact(text: str, matcher: _Matcher) -> str:
    if not text:
        return text
    spans = _secret_spans(text, matcher) if matcher.windows else []
    if spans:
        pieces: list[str] = []
        position = 0
        for start, end in spans:
            pieces.append(text[position:start])
            run = text[start:end]
            pieces.append(matcher.whole.get(run, MASK))
            position = end
        pieces.append(text[position:])
        text = "".join(pieces)
    for secret, mask in matcher.short:
        text = text.replace(secret, mask)
    return _shaped(text) if _SHAPES else text
