"""Every request has an id: in the response header and in each log line it causes."""

from __future__ import annotations

import json
import logging

import pytest

from echo_site.request_context import JsonLogFormatter, RequestIdFilter, current_request_id
from providers.plugins.echo_provider import EchoProvider
from providers.runtime import process as runtime
from providers.runtime.registry import ProviderSpec


@pytest.mark.django_db
def test_the_request_id_is_returned_and_a_clients_id_is_kept(client, chat_key) -> None:
    auth = {"HTTP_AUTHORIZATION": f"Bearer {chat_key[1]}"}
    made_up = client.post("/chat", {}, content_type="application/json", **auth)
    assert len(made_up["X-Request-ID"]) == 32
    kept = client.post(
        "/chat", {}, content_type="application/json", HTTP_X_REQUEST_ID="trace-42", **auth
    )
    assert kept["X-Request-ID"] == "trace-42"
    refused = client.post(
        "/chat", {}, content_type="application/json", HTTP_X_REQUEST_ID="bad id\nforged", **auth
    )
    assert refused["X-Request-ID"] != "bad id\nforged"
    page = client.get("/admin/login/")
    assert page["X-Request-ID"]


class BuggyEcho(EchoProvider):
    """Raises a plain exception, which the manager logs while serving the request."""

    async def chat_completion(self, request):
        raise KeyError("choices")


@pytest.mark.django_db
def test_log_lines_carry_the_request_id(client, chat_key, caplog) -> None:
    runtime.registry.register(BuggyEcho, "buggy")
    runtime.run_in_serving_loop(
        runtime.registry.apply, ProviderSpec("buggy", "buggy", {"max_retries": 0})
    )
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.WARNING):
        response = client.post(
            "/chat",
            {"prompt": "hi", "provider": "buggy"},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {chat_key[1]}",
            HTTP_X_REQUEST_ID="req-7",
        )
        logging.getLogger("echo").warning("outside the request")
    assert response.status_code == 502  # a plugin's bug (PluginError), not an outage
    served = [r for r in caplog.records if r.name == "providers.runtime.manager"]
    assert served and {r.request_id for r in served} == {"req-7"}
    assert caplog.records[-1].request_id == "-"


def test_json_lines_are_parseable_with_extras() -> None:
    token = current_request_id.set("abc")
    try:
        record = logging.makeLogRecord(
            {
                "name": "echo",
                "levelname": "INFO",
                "msg": "hello %s",
                "args": ("you",),
                "provider": "openai",
            }
        )
        RequestIdFilter().filter(record)
    finally:
        current_request_id.reset(token)
    line = json.loads(JsonLogFormatter().format(record))
    assert line["message"] == "hello you" and line["request_id"] == "abc"
    assert line["provider"] == "openai" and line["level"] == "INFO"


def test_json_lines_hold_what_orjson_refuses_and_objects_as_text() -> None:
    record = logging.makeLogRecord(
        {
            "name": "echo",
            "levelname": "WARNING",
            "msg": "odd %s",
            "args": ("\ud800 surrogate",),
            "count": 2**70,
            "where": object(),
            "text": "café\nnext",
        }
    )
    line = JsonLogFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "odd \ud800 surrogate" and entry["count"] == 2**70
    assert entry["where"].startswith("<object object") and entry["text"] == "café\nnext"
    plain = json.loads(JsonLogFormatter().format(logging.makeLogRecord({"msg": "café", "n": 1})))
    assert plain["message"] == "café" and plain["n"] == 1
