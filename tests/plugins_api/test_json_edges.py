"""The edge's JSON both ways: client bodies parsed by orjson with ``json`` behind it, answers encoded once.

``loads_bounded`` parses with orjson and gives what orjson refuses to
``json``: every verdict and every value must be the one ``json`` alone gave
(a 400 naming the field, or the same document). ``JsonAnswer`` must carry
what ``JsonResponse`` carried, in compact UTF-8.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from django.utils.functional import lazy

from plugins_api.edge.bounded_json import MAX_JSON_DEPTH, JsonInputError, check_value, loads_bounded
from plugins_api.edge.json_answer import JsonAnswer, json_bytes

SAME_AS_JSON = [
    b'{"model": "m", "messages": [{"role": "user", "content": "caf\xc3\xa9 \xf0\x9f\x98\x80"}]}',
    '{"k": "v"}'.encode("utf-16"),  # json detects UTF-16; orjson takes UTF-8 only
    b'{"a": 1, "a": 2}',
    b'{"f": 1.5e300, "s": "\\u00e9\\ud83d\\ude00"}',
    "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
]


@pytest.mark.parametrize("body", SAME_AS_JSON)
def test_a_document_parses_as_json_alone_parsed_it(body: bytes | str) -> None:
    assert loads_bounded(body) == json.loads(body)


REFUSED = [
    (b'{"messages": [{"content": "a\\u0000b"}]}', "messages.0.content", "NUL"),
    (b'{"model": "\\ud800"}', "model", "surrogate"),
    (b'{"temperature": NaN}', "temperature", "finite"),
    (b'{"temperature": 1e999}', "temperature", "finite"),
    (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", None, "Nested too deeply"),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), ".".join(["0"] * 64), "deeply"),
    (b'{"model": "m",}', None, "not valid JSON"),
    (b'{"model": "\xff"}', None, "not valid"),
]


@pytest.mark.parametrize(("body", "field", "says"), REFUSED)
def test_what_no_endpoint_can_carry_is_refused_naming_the_field(body, field, says) -> None:
    with pytest.raises(JsonInputError) as caught:
        loads_bounded(body)
    assert caught.value.field == field
    assert says in caught.value.message


MORE = [
    '{"messages": [{"content": "a\\u0000b"}]}',  # text, as a websocket frame comes
    "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
    b'{"s": "\\\\u0000 is a backslash and text, not a NUL"}',
    '{"model": "m", "messages": ['
    + ",".join(['{"role": "user", "content": "x"}'] * 80)
    + '], "deep": '
    + "[" * 70
    + "]" * 70
    + "}",
]


@pytest.mark.parametrize(
    "body", [*SAME_AS_JSON, *(body for body, field, _ in REFUSED if field is not None), *MORE]
)
def test_the_shortcut_for_plain_bodies_agrees_with_the_whole_walk(body: bytes | str) -> None:
    """What ``loads_bounded`` takes or refuses, ``json`` and ``check_value`` take or refuse alike."""
    value = json.loads(body)
    try:
        check_value(value)
        walked: object = value
    except JsonInputError as exc:
        walked = (exc.field, exc.message)
    try:
        got: object = loads_bounded(body)
    except JsonInputError as exc:
        got = (exc.field, exc.message)
    assert got == walked


def test_an_answer_is_compact_utf8_json_with_djangos_types() -> None:
    when = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    ident = uuid.UUID(int=7)
    label = lazy(lambda: "lazy label", str)()
    data = {"text": "café 😀", "cost": Decimal("0.00012"), "at": when, "id": ident, "l": label}
    response = JsonAnswer(data, status=201)
    assert response.status_code == 201
    assert response["Content-Type"] == "application/json"
    assert "café 😀".encode() in response.content and b", " not in response.content
    assert json.loads(response.content) == {
        "text": "café 😀",
        "cost": "0.00012",
        "at": "2026-11-26T12:00:00+00:00",
        "id": str(ident),
        "l": "lazy label",
    }


def test_an_integer_beyond_64_bits_is_a_number_every_field_check_refuses() -> None:
    # orjson reads it as a float, as most JSON parsers do; no option takes a 30-digit number.
    value = loads_bounded(b'{"seed": 123456789012345678901234567890}')["seed"]
    assert value == pytest.approx(1.2345678901234568e29)


def test_what_orjson_cannot_hold_is_written_by_json() -> None:
    assert json.loads(json_bytes({1: "int key", "big": 2**70})) == {"1": "int key", "big": 2**70}
    with pytest.raises(TypeError):
        json_bytes({"x": object()})
