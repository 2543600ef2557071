"""An open breaker's 503 says when to come back: ``Retry-After`` on every chat endpoint, ``retry_after`` on the socket.

The message said "try again in 30s" while the header was missing, so SDKs
(which read the header) retried at once, and again, into the open breaker.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from plugins_api.edge.error_responses import provider_error_body
from providers.errors import ProviderTimeoutError, ProviderUnavailableError, RateLimitError
from providers.models import ProviderConfig
from providers.runtime import process as runtime
from tests.plugins_api.chat_bodies import MINIMAL_CALLS


@pytest.fixture
def echo(echo_config: ProviderConfig) -> ProviderConfig:
    """The echo provider, live and the default."""
    error = runtime.run_in_serving_loop(
        runtime.apply_config_state, echo_config.name, echo_config.to_spec(), ""
    )
    assert error is None, error
    return echo_config


@pytest.fixture
def open_breaker(echo: ProviderConfig) -> Any:
    breaker = runtime.manager.breaker("echo")
    for _ in range(runtime.manager.provider_state("echo")["failure_threshold"]):
        breaker.record_failure("test")
    assert breaker.state == "open"
    yield breaker
    breaker.reset()


def test_every_chat_endpoint_sends_retry_after_while_the_breaker_is_open(
    chat_key: tuple[Any, str], open_breaker: Any
) -> None:
    api = Client(headers={"Authorization": f"Bearer {chat_key[1]}"})
    wait = open_breaker.retry_in()
    for path, body in MINIMAL_CALLS.items():
        response = api.post(path, json.dumps(body), content_type="application/json")
        assert response.status_code == 503, (path, response.content)
        assert "circuit breaker open" in response.content.decode()
        assert int(response["Retry-After"]) == pytest.approx(wait, abs=1.5), path


@pytest.mark.parametrize(
    ("error", "header"),
    [
        (ProviderUnavailableError("x", retry_after=12.2), "13"),
        (ProviderUnavailableError("x", retry_after=0.01), "1"),
        (ProviderUnavailableError("x", retry_after=float("nan")), None),
        (ProviderUnavailableError("x", retry_after=float("inf")), "86400"),  # clamped to a day
        (ProviderUnavailableError("x"), None),
        (RateLimitError("x", retry_after=3), "3"),
        (ProviderTimeoutError("x", retry_after=5), None),  # a 504 promises nothing
    ],
)
def test_retry_after_is_sent_only_when_it_means_something(error: Any, header: str | None) -> None:
    _, _, headers = provider_error_body(error)
    assert headers.get("Retry-After") == header
