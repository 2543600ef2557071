"""A JSON answer encoded once, by orjson: what the hot endpoints answer whole.

Django's ``JsonResponse`` encodes with ``json`` and ``DjangoJSONEncoder``
(spaces after separators, non-ASCII escaped); on a chat answer that is a
twentieth of Echo's CPU per call. ``JsonAnswer`` is the same response (a
``HttpResponse`` with ``Content-Type: application/json``) with the body
encoded compact and in UTF-8 by orjson, the types ``DjangoJSONEncoder``
knows beyond orjson's (``Decimal``, lazy strings, durations) written as it
writes them. A value orjson cannot hold at all (a key that is not a string,
an integer beyond 64 bits) is written by ``json`` with the same encoder.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse

_DJANGO_TYPES = DjangoJSONEncoder()


def json_bytes(data: Any) -> bytes:
    """Return DATA as compact UTF-8 JSON; raise TypeError for what no JSON holds."""
    try:
        return orjson.dumps(data, default=_DJANGO_TYPES.default)
    except TypeError:
        return json.dumps(
            data, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":")
        ).encode()


class JsonAnswer(HttpResponse):
    """An ``application/json`` answer of DATA (a dict), encoded by ``json_bytes``."""

    def __init__(self, data: dict[str, Any], **kwargs: Any) -> None:
        kwargs.setdefault("content_type", "application/json")
        super().__init__(content=json_bytes(data), **kwargs)
