"""An upstream's Retry-After is parsed in one place and clamped: no value it sends is a 500.

``Retry-After: 1e400`` used to become ``inf`` and then an OverflowError when
the API rounded it up for its own Retry-After header; NaN a ValueError.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import time
from typing import Any

import httpx
import pytest

from providers.errors import RateLimitError
from providers.runtime.retry_policy import (
    MAX_RETRY_AFTER_SECONDS,
    RetryPolicy,
    parse_retry_after,
    retry_after_seconds,
)
from providers.testing.fake_openai import FakeOpenAI

KEY = "sk-retry-after-0000000000000"


def _headers(**values: str) -> httpx.Headers:
    return httpx.Headers({k.replace("_", "-"): v for k, v in values.items()})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry_after": "7"}, 7.0),
        ({"retry_after": " 2.5 "}, 2.5),
        ({"retry_after_ms": "1500"}, 1.5),
        ({"retry_after_ms": "250", "retry_after": "9"}, 0.25),  # the precise one wins
        ({"retry_after": "1e400"}, MAX_RETRY_AFTER_SECONDS),
        ({"retry_after_ms": "1e400"}, MAX_RETRY_AFTER_SECONDS),
        ({"retry_after": "9" * 60}, MAX_RETRY_AFTER_SECONDS),
        ({"retry_after": "-5"}, 0.0),
        ({"retry_after": "nan"}, None),
        ({"retry_after": "NaN"}, None),
        ({"retry_after": "inf"}, None),
        ({"retry_after": "Infinity"}, None),
        ({"retry_after_ms": "nan"}, None),
        ({"retry_after_ms": "nan", "retry_after": "3"}, 3.0),  # a bad one falls back
        ({"retry_after": "1_000"}, None),
        ({"retry_after": "soon"}, None),
        ({"retry_after": "9" * 5000}, None),  # too long to mean anything
        ({"retry_after": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_RETRY_AFTER_SECONDS),
        ({"retry_after": "Mon, 01 Jan 1990 00:00:00 GMT"}, 0.0),
        ({"retry_after": "Mon, 99 Foo 0000 99:99:99 GMT"}, None),
        ({}, None),
    ],
)
def test_every_retry_after_becomes_none_or_a_bounded_wait(headers, expected) -> None:
    assert parse_retry_after(_headers(**headers)) == expected


def test_an_http_date_is_the_seconds_until_then() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(_headers(retry_after=when)) <= 30


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (math.inf, MAX_RETRY_AFTER_SECONDS),
        (-math.inf, 0.0),
        (math.nan, None),
        (10**400, MAX_RETRY_AFTER_SECONDS),  # an int too big for a float
        ("7", None),
        (True, None),
        (None, None),
        (3, 3.0),
    ],
)
def test_retry_after_seconds_clamps_what_a_plugin_sets(value: Any, expected) -> None:
    assert retry_after_seconds(value) == expected


@pytest.mark.parametrize("asked", [math.inf, math.nan, 10**400])
def test_the_retry_policy_never_sleeps_on_a_non_finite_wait(asked) -> None:
    policy = RetryPolicy(max_retries=2, max_wait=20)
    error = RateLimitError("slow down", retry_after=asked)
    wait = policy.wait_before_retry(0, error, remaining=60, rng=random.Random(1))
    assert wait is None or (math.isfinite(wait) and 0 <= wait <= 20)


# --- through a fake upstream and the API: a JSON error, never a 500 ----------------


class ThrottlingOpenAI(FakeOpenAI):
    """Answers every chat request 429 with the Retry-After headers in ``sent``."""

    routes = {("POST", "/v1/chat/completions"): "throttle"}
    sent: dict[str, str] = {}

    def throttle(self, handler: Any, body: Any, fault: Any) -> None:
        handler.send_json(429, self.error_body(429, "Rate limit reached."), self.sent)


@pytest.mark.parametrize(
    ("sent", "retry_after"),
    [
        ({"Retry-After": "1e400"}, str(int(MAX_RETRY_AFTER_SECONDS))),
        ({"retry-after-ms": "1e400"}, str(int(MAX_RETRY_AFTER_SECONDS))),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "nan", "Retry-After": "-3"}, "1"),
    ],
)
def test_a_wild_retry_after_reaches_the_client_as_a_429(echo_config, chat_key, sent, retry_after):
    from django.test import Client

    from providers.config.services import provider_config_create
    from providers.runtime import process as runtime

    with ThrottlingOpenAI() as upstream:
        upstream.sent = sent
        row = provider_config_create(
            name="throttled",
            plugin="openai",
            settings={"base_url": upstream.base_url, "max_retries": 1},
            secrets={"api_key": KEY},
        )
        error = runtime.run_in_serving_loop(runtime.apply_config_state, row.name, row.to_spec(), "")
        assert error is None, error
        client = Client(headers={"Authorization": f"Bearer {chat_key[1]}"})
        chat = {"prompt": "hi", "provider": "throttled"}
        compat = {"model": "throttled/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        for path, body, kind in [
            ("/chat", chat, ("type", "rate_limited")),
            ("/v1/chat/completions", compat, ("code", "rate_limit_exceeded")),  # OpenAI's shape
        ]:
            response = client.post(path, data=json.dumps(body), content_type="application/json")
            assert response.status_code == 429, (path, response.content)
            assert response.json()["error"][kind[0]] == kind[1]
            assert response.get("Retry-After") == retry_after
