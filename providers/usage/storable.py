"""Make recorded values storable in any database Echo runs on.

PostgreSQL refuses a text with a NUL character, a JSON string with ``\\u0000``,
a JSON ``NaN``, a string longer than its column and (in the driver) a lone
surrogate; SQLite accepts all of them. Values that clients or upstreams chose
(model names, provider names, key names) pass through here before a row is
queued, so that one odd value can never make a whole batch fail.
"""

from __future__ import annotations

import math
import re
from itertools import islice
from typing import Any

_NUL = re.compile("\x00")
# A str holds a surrogate only when it is unpaired: UTF-8 cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"

JSON_MAX_STRING = 200
JSON_MAX_ITEMS = 16
JSON_MAX_DEPTH = 4
JSON_MAX_INT = 2**63 - 1
TOO_DEEP = "<nested too deep>"


def storable_text(value: Any, max_length: int) -> str:
    """Return VALUE as text of at most MAX_LENGTH characters, with no NUL and no lone surrogate."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= max_length and text.isascii() and "\x00" not in text:
        return text  # the common case, checked in C
    # Cut first: cleaning never lengthens, and a multi-megabyte name is then cleaned cheaply.
    text = text[:max_length]
    if "\x00" in text:
        text = _NUL.sub("", text)
    return _SURROGATE.sub(REPLACEMENT, text)


def storable_int(value: Any, *, low: int, high: int) -> int:
    """Return VALUE as an int clamped to [LOW, HIGH]; 0 (or LOW) when it is not a number."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = 0
    return max(low, min(high, number))


def storable_float(value: Any) -> float | None:
    """Return VALUE as a finite float rounded to 3 decimals, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return round(number, 3) if math.isfinite(number) else None


def storable_json(value: Any, *, depth: int = 0) -> Any:
    """Return a copy of VALUE that any JSON column stores: clean strings, finite numbers, bounded size.

    Strings are cleaned and cut like ``storable_text``; lists and objects keep
    their first JSON_MAX_ITEMS entries, and what is nested deeper than
    JSON_MAX_DEPTH becomes TOO_DEEP; a value that is not JSON becomes its
    cleaned text.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Python refuses to print an int of thousands of digits; no column wants one.
        return max(-JSON_MAX_INT, min(JSON_MAX_INT, value))
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return storable_text(value, JSON_MAX_STRING)
    if isinstance(value, dict | list | tuple):
        if depth >= JSON_MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {
                storable_text(key, JSON_MAX_STRING): storable_json(item, depth=depth + 1)
                for key, item in islice(value.items(), JSON_MAX_ITEMS)
            }
        return [storable_json(item, depth=depth + 1) for item in value[:JSON_MAX_ITEMS]]
    return storable_text(value, JSON_MAX_STRING)
