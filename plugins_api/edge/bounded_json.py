"""Parse untrusted JSON with bounds: depth, NUL characters and lone surrogates are refused.

Python's ``json`` accepts what the rest of Echo cannot carry: nesting deep
enough to exhaust the interpreter's recursion (a ``RecursionError`` is a 500),
``\\u0000`` (PostgreSQL refuses it in text, so one such model name used to stop
usage accounting), and lone surrogates such as ``\\ud800`` (they cannot be
encoded to UTF-8, so logging, the database and the upstream call fail), and
``NaN``/``Infinity``/``1e999`` (no JSON can carry them back out, and
PostgreSQL's jsonb refuses them). Every
endpoint, the websocket included, reads client JSON through ``loads_bounded``,
which refuses each of them with the dotted path of the culprit
(``messages.0.content.0.text``), so the client gets a 400 naming the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

#: Deepest nesting a client may send: chat bodies need about 6 (tools' JSON
#: schemas a few more); 64 leaves room and stays far below Python's limit.
MAX_JSON_DEPTH = 64

_FORBIDDEN_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


class JsonInputError(ValueError):
    """Client JSON is unusable; FIELD is the dotted path of the culprit (None: the whole body)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _path(parts: tuple[str | int, ...]) -> str | None:
    return ".".join(str(p) for p in parts) or None


def _check_string(value: str, parts: tuple[str | int, ...]) -> None:
    if value.isascii() and "\x00" not in value:
        return
    match = _FORBIDDEN_CHARACTERS.search(value)
    if match is None:
        return
    what = "NUL characters" if match.group() == "\x00" else "unpaired surrogate characters"
    raise JsonInputError(_path(parts), f"Must not contain {what}.")


def check_value(value: Any, *, max_depth: int = MAX_JSON_DEPTH, field: str | None = None) -> None:
    """Raise ``JsonInputError`` if VALUE (parsed JSON) is too deep, holds a forbidden
    character or a number that is not finite.

    FIELD prefixes the reported paths (for a value found inside a larger document).
    The walk is iterative, so no input can exhaust the recursion limit here.
    """
    root: tuple[str | int, ...] = tuple(field.split(".")) if field else ()
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, root, 0)]
    while stack:
        item, parts, depth = stack.pop()
        if isinstance(item, str):
            _check_string(item, parts)
        elif isinstance(item, float) and not math.isfinite(item):
            raise JsonInputError(_path(parts), "Numbers must be finite (no NaN or Infinity).")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise JsonInputError(
                    _path(parts), f"Nested too deeply (at most {max_depth} levels)."
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_string(key, parts)  # the key itself may not be printable
                    stack.append((child, parts + (key,), depth + 1))
            else:
                stack.extend((child, parts + (i,), depth + 1) for i, child in enumerate(item))


def loads_bounded(data: str | bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Return DATA parsed as JSON, or raise ``JsonInputError`` saying what is wrong and where.

    orjson parses (a fifth of ``json``'s time); what it refuses (a body that
    is no JSON, nesting past 1,024, UTF-16 or UTF-32) is parsed again by
    ``json``, whose verdict names the problem, or which reads what orjson
    could not. An integer beyond 64 bits is read as a float, as by most
    parsers: no field takes one, and each field's check refuses it by name.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = _loads_plainly(data, max_depth)
    else:
        if _needs_no_walk(data, max_depth):
            return value
    check_value(value, max_depth=max_depth)
    return value


def _needs_no_walk(data: str | bytes | bytearray, max_depth: int) -> bool:
    """Return whether DATA, which orjson parsed, is sure to pass ``check_value``: most chat bodies.

    orjson refuses what ``check_value`` looks for but two things: ``\\u0000``
    (a NUL, written as an escape) and nesting deeper than MAX_DEPTH (it
    allows 1,024). Without that escape in the text, and with fewer brackets
    and braces in all than MAX_DEPTH, neither can be there.
    """
    if isinstance(data, str):
        return "\\u0000" not in data and data.count("[") + data.count("{") < max_depth
    return b"\\u0000" not in data and data.count(b"[") + data.count(b"{") < max_depth


def _loads_plainly(data: str | bytes | bytearray, max_depth: int) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise JsonInputError(None, f"Nested too deeply (at most {max_depth} levels).") from None
    except UnicodeDecodeError:
        raise JsonInputError(None, "The body is not valid UTF-8.") from None
    except ValueError as exc:
        raise JsonInputError(None, f"The body is not valid JSON: {exc}.") from None
