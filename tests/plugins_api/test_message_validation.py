"""Chat bodies are validated at the edge: a bad one is a 400 naming its field, never a provider failure.

The finding this file guards: a text part whose ``text`` was a number went
through ``POST /chat`` to the echo provider, which raised ``TypeError``; the
manager retried it and counted it, and after a few such requests every
client got "circuit breaker open" for 30 seconds. Here each chat endpoint
(``/chat``, ``/v1/chat/completions``, ``/v1/messages``) is sent bad shapes,
oversized fields and unusable JSON through the real views.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from plugins_api.edge.bounded_json import MAX_JSON_DEPTH
from plugins_api.edge.chat_requests import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_NAME_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOOL_CALLS,
    MAX_TOOLS,
)
from providers.models import ProviderConfig
from providers.runtime import process as runtime

CHAT = "/chat"
COMPLETIONS = "/v1/chat/completions"
MESSAGES = "/v1/messages"

#: The body of the finding, as it was sent.
FINDING = {
    "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    "provider": "echo",
}


def calls() -> int:
    """Return how many calls the manager made to the echo provider."""
    return runtime.manager.counters("echo").attempts


@pytest.fixture
def echo(echo_config: ProviderConfig) -> ProviderConfig:
    """The built-in echo provider (the one of the finding), live and the default."""
    error = runtime.run_in_serving_loop(
        runtime.apply_config_state, echo_config.name, echo_config.to_spec(), ""
    )
    assert error is None, error
    return echo_config


@pytest.fixture
def api(chat_key: tuple[Any, str]) -> Client:
    """A client that sends the chat key."""
    return Client(headers={"Authorization": f"Bearer {chat_key[1]}"})


def post(client: Client, path: str, body: Any) -> Any:
    """POST BODY (JSON-encoded unless bytes) to PATH."""
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json")


def refused_field(path: str, response: Any) -> str | None:
    """Assert RESPONSE is a 400 in PATH's error shape; return the field it names."""
    assert response.status_code == 400, response.content[:500]
    error = response.json()["error"]
    if path == CHAT:
        assert error["type"] == "invalid_request"
        return error.get("field")
    if path == COMPLETIONS:
        assert error["type"] == "invalid_request_error"
        return error["param"]
    # Anthropic's errors carry no field: the message reads "<field>: <problem>".
    assert error["type"] == "invalid_request_error"
    field, sep, _ = error["message"].partition(": ")
    return field if sep and " " not in field else None


def breaker_untouched(name: str = "echo") -> None:
    """Assert provider NAME's breaker is closed and nothing counted a failure."""
    state = runtime.manager.provider_state(name)
    assert state["state"] == "closed"
    assert state["consecutive_failures"] == 0
    assert state["counters"]["failures"] == 0
    assert state["counters"]["retries"] == 0


def user(content: Any, **extra: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content, **extra}]


def body_for(path: str, messages: Any = None, **fields: Any) -> dict[str, Any]:
    """Return a valid body for PATH (one user message), with MESSAGES and FIELDS put in."""
    body: dict[str, Any] = {"messages": user("hi") if messages is None else messages}
    if path == COMPLETIONS:
        body["model"] = "echo/echo-1"
    elif path == MESSAGES:
        body.update(model="echo/echo-1", max_tokens=16)
    body.update(fields)
    return body


# --- the finding -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, FINDING),
        (COMPLETIONS, body_for(COMPLETIONS, user([{"type": "text", "text": 5}]))),
        (MESSAGES, body_for(MESSAGES, user([{"type": "text", "text": 5}]))),
    ],
)
def test_the_finding_sent_past_the_breaker_threshold_is_a_400_and_harms_no_one(
    echo, api: Client, path: str, body: dict[str, Any]
) -> None:
    threshold = runtime.manager.provider_state("echo")["failure_threshold"]
    for _ in range(threshold * 2):
        assert refused_field(path, post(api, path, body)) == "messages.0.content.0.text"
    assert calls() == 0
    breaker_untouched()

    fine = post(api, path, body_for(path, provider="echo") if path == CHAT else body_for(path))
    assert fine.status_code == 200, fine.content
    assert calls() == 1
    breaker_untouched()


# --- OpenAI's message shape: /chat and /v1/chat/completions ------------------------------

TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

OPENAI_SHAPES = [
    (5, "messages"),
    ([5], "messages.0"),
    ([{"role": "bot", "content": "x"}], "messages.0.role"),
    ([{"role": 5, "content": "x"}], "messages.0.role"),
    (user(5), "messages.0.content"),
    (user({"type": "text", "text": "x"}), "messages.0.content"),
    (user(["text"]), "messages.0.content.0"),
    (user([{"text": "x"}]), "messages.0.content.0.type"),
    (user([{"type": "video", "video": {}}]), "messages.0.content.0.type"),
    (user([{"type": "text"}]), "messages.0.content.0.text"),
    (user([{"type": "text", "text": ["x"]}]), "messages.0.content.0.text"),
    (user([{"type": "image_url"}]), "messages.0.content.0.image_url"),
    (user([{"type": "image_url", "image_url": 5}]), "messages.0.content.0.image_url"),
    (user([{"type": "image_url", "image_url": {"url": 5}}]), "messages.0.content.0.image_url.url"),
    (user([{"type": "image_url", "image_url": {}}]), "messages.0.content.0.image_url.url"),
    (
        user([{"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": 1}}]),
        "messages.0.content.0.image_url.detail",
    ),
    (
        user([{"type": "input_audio", "input_audio": {"data": 5, "format": "wav"}}]),
        "messages.0.content.0.input_audio.data",
    ),
    (user([{"type": "file", "file": {"filename": "a.pdf"}}]), "messages.0.content.0.file"),
    (user([{"type": "file", "file": {"file_id": 5}}]), "messages.0.content.0.file.file_id"),
    (user([{"type": "refusal", "refusal": "no"}]), "messages.0.content.0.type"),
    (
        [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}],
        "messages.0.content.0.type",
    ),
    (user("hi", name=5), "messages.0.name"),
    (user("hi", tool_call_id=["x"]), "messages.0.tool_call_id"),
    ([{"role": "tool", "content": "42"}], "messages.0.tool_call_id"),
    (user("hi", tool_calls=[TOOL_CALL]), "messages.0.tool_calls"),
    ([{"role": "assistant", "tool_calls": {"id": "x"}}], "messages.0.tool_calls"),
    ([{"role": "assistant", "tool_calls": [5]}], "messages.0.tool_calls.0"),
    (
        [{"role": "assistant", "tool_calls": [{**TOOL_CALL, "id": 7}]}],
        "messages.0.tool_calls.0.id",
    ),
    (
        [{"role": "assistant", "tool_calls": [{**TOOL_CALL, "type": "code"}]}],
        "messages.0.tool_calls.0.type",
    ),
    (
        [{"role": "assistant", "tool_calls": [{**TOOL_CALL, "function": "f"}]}],
        "messages.0.tool_calls.0.function",
    ),
    (
        [{"role": "assistant", "tool_calls": [{**TOOL_CALL, "function": {"name": 5}}]}],
        "messages.0.tool_calls.0.function.name",
    ),
    (
        [
            {
                "role": "assistant",
                "tool_calls": [{**TOOL_CALL, "function": {"name": "f", "arguments": {"a": 1}}}],
            }
        ],
        "messages.0.tool_calls.0.function.arguments",
    ),
    (
        [{"role": "user", "content": "a"}, *user([{"type": "text", "text": None}])],
        "messages.1.content.0.text",
    ),
]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(("messages", "field"), OPENAI_SHAPES)
def test_openai_message_shapes_are_checked_to_the_dotted_path(
    echo, api: Client, path: str, messages: Any, field: str
) -> None:
    assert refused_field(path, post(api, path, body_for(path, messages))) == field
    assert calls() == 0
    breaker_untouched()


def test_every_valid_openai_part_and_tool_turn_is_accepted(echo, api: Client) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        *user(
            [
                {"type": "text", "text": "what is it?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                },
                {"type": "image_url", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
            ],
            name="ann",
        ),
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "42"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        *user("thanks"),
    ]
    for path in (CHAT, COMPLETIONS):
        response = post(api, path, body_for(path, messages))
        assert response.status_code == 200, response.content
    assert calls() == 2


# --- Anthropic's block shapes: /v1/messages ----------------------------------------

IMAGE = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}


def assistant(content: Any) -> list[dict[str, Any]]:
    return [*user("hi"), {"role": "assistant", "content": content}]


ANTHROPIC_SHAPES = [
    (body_for(MESSAGES, 5), "messages"),
    (body_for(MESSAGES, [5]), "messages.0"),
    (body_for(MESSAGES, [{"role": "system", "content": "x"}]), "messages.0.role"),
    (body_for(MESSAGES, user(5)), "messages.0.content"),
    (body_for(MESSAGES, user([5])), "messages.0.content.0"),
    (body_for(MESSAGES, user([{"text": "x"}])), "messages.0.content.0.type"),
    (body_for(MESSAGES, user([{"type": "text"}])), "messages.0.content.0.text"),
    (body_for(MESSAGES, user([{"type": "text", "text": {"a": 1}}])), "messages.0.content.0.text"),
    (body_for(MESSAGES, user([{"type": "image"}])), "messages.0.content.0.source"),
    (
        body_for(MESSAGES, user([{"type": "image", "source": {"type": "url", "url": 5}}])),
        "messages.0.content.0.source.url",
    ),
    (
        body_for(MESSAGES, user([{"type": "tool_result", "tool_use_id": 5, "content": "x"}])),
        "messages.0.content.0.tool_use_id",
    ),
    (
        body_for(
            MESSAGES,
            user(
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": 5}],
                    }
                ]
            ),
        ),
        "messages.0.content.0.content.0.text",
    ),
    (
        body_for(
            MESSAGES,
            user([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}]),
        ),
        "messages.0.content.0.content.0.source",
    ),
    (
        body_for(
            MESSAGES,
            user([{"type": "tool_result", "tool_use_id": "t", "content": "x", "is_error": "yes"}]),
        ),
        "messages.0.content.0.is_error",
    ),
    (body_for(MESSAGES, assistant([{"type": "text", "text": 5}])), "messages.1.content.0.text"),
    (
        body_for(MESSAGES, assistant([{"type": "tool_use", "id": 5, "name": "f", "input": {}}])),
        "messages.1.content.0.id",
    ),
    (
        body_for(MESSAGES, assistant([{"type": "tool_use", "id": "t", "name": 5, "input": {}}])),
        "messages.1.content.0.name",
    ),
    (
        body_for(MESSAGES, assistant([{"type": "tool_use", "id": "t", "name": "f", "input": []}])),
        "messages.1.content.0.input",
    ),
    (body_for(MESSAGES, assistant([IMAGE])), "messages.1.content.0.type"),
    (body_for(MESSAGES, system=[{"type": "text", "text": 5}]), "system.0.text"),
    (body_for(MESSAGES, system=[{"type": "tool_use"}]), "system.0.type"),
    (
        body_for(MESSAGES, tools=[{"name": "f", "description": 5, "input_schema": {}}]),
        "tools.0.description",
    ),
    (body_for(MESSAGES, tools=[{"name": 5, "input_schema": {}}]), "tools.0.name"),
    (body_for(MESSAGES, tools=[5]), "tools.0"),
    (body_for(MESSAGES, tool_choice={"type": "tool", "name": 5}), "tool_choice"),
]


@pytest.mark.parametrize(("body", "field"), ANTHROPIC_SHAPES)
def test_anthropic_block_shapes_are_checked_to_the_dotted_path(
    echo, api: Client, body: dict[str, Any], field: str
) -> None:
    assert refused_field(MESSAGES, post(api, MESSAGES, body)) == field
    assert calls() == 0
    breaker_untouched()


def test_every_valid_anthropic_block_is_accepted(echo, api: Client) -> None:
    messages = [
        *user([{"type": "text", "text": "look"}, IMAGE]),
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
            ],
        },
        *user(
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "42"}, IMAGE],
                    "is_error": False,
                },
                {"type": "text", "text": "thanks"},
            ]
        ),
    ]
    body = body_for(
        MESSAGES,
        messages,
        system=[{"type": "text", "text": "Be brief."}],
        tools=[{"name": "f", "description": "F.", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "f"},
        metadata={"user_id": "u-1"},
        stop_sequences=["END"],
    )
    response = post(api, MESSAGES, body)
    assert response.status_code == 200, response.content
    assert calls() == 1


# --- top-level fields --------------------------------------------------------------

TOP_LEVEL = [
    (CHAT, {"messages": None, "prompt": 5}, "prompt"),
    (CHAT, {"messages": None, "prompt": "hi", "system": 5}, "system"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"provider": 5}, "provider"),
    (CHAT, {"model": ["echo-1"]}, "model"),
    (CHAT, {"stream": "yes"}, "stream"),
    (CHAT, {"temperature": "hot"}, "temperature"),
    (CHAT, {"top_p": "x"}, "top_p"),
    (CHAT, {"max_tokens": "5"}, "max_tokens"),
    (CHAT, {"stop": 5}, "stop"),
    (CHAT, {"stop": ["END", 5]}, "stop.1"),
    (COMPLETIONS, {"model": 5}, "model"),
    (COMPLETIONS, {"messages": {"role": "user"}}, "messages"),
    (COMPLETIONS, {"stream": 1}, "stream"),
    (COMPLETIONS, {"stream_options": 5}, "stream_options"),
    (COMPLETIONS, {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    (COMPLETIONS, {"n": "1"}, "n"),
    (COMPLETIONS, {"n": True}, "n"),
    (COMPLETIONS, {"temperature": "x"}, "temperature"),
    (COMPLETIONS, {"top_p": [1]}, "top_p"),
    (COMPLETIONS, {"max_tokens": "5"}, "max_tokens"),
    (COMPLETIONS, {"max_completion_tokens": 1.5}, "max_completion_tokens"),
    (COMPLETIONS, {"stop": {"a": 1}}, "stop"),
    (COMPLETIONS, {"tools": {"type": "function"}}, "tools"),
    (
        COMPLETIONS,
        {"tools": [{"type": "function", "function": {"name": "f", "description": 5}}]},
        "tools.0.function.description",
    ),
    (
        COMPLETIONS,
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
        "tools.0.function.parameters",
    ),
    (COMPLETIONS, {"tool_choice": 5}, "tool_choice"),
    (COMPLETIONS, {"user": 5}, "user"),
    (MESSAGES, {"model": 5}, "model"),
    (MESSAGES, {"max_tokens": "16"}, "max_tokens"),
    (MESSAGES, {"system": 5}, "system"),
    (MESSAGES, {"messages": "hi"}, "messages"),
    (MESSAGES, {"stop_sequences": "END"}, "stop_sequences"),
    (MESSAGES, {"stop_sequences": [5]}, "stop_sequences.0"),
    (MESSAGES, {"stream": "yes"}, "stream"),
    (MESSAGES, {"temperature": "x"}, "temperature"),
    (MESSAGES, {"top_p": "x"}, "top_p"),
    (MESSAGES, {"tools": {"name": "f"}}, "tools"),
    (MESSAGES, {"tool_choice": "auto"}, "tool_choice"),
    (MESSAGES, {"metadata": "u-1"}, "metadata"),
    (MESSAGES, {"metadata": {"user_id": 5}}, "metadata.user_id"),
]


@pytest.mark.parametrize(("path", "fields", "field"), TOP_LEVEL)
def test_a_wrong_type_for_a_top_level_field_is_a_400_naming_it(
    echo, api: Client, path: str, fields: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**body_for(path), **fields}.items() if v is not None}
    assert refused_field(path, post(api, path, body)) == field
    assert calls() == 0


# --- sizes -------------------------------------------------------------------------


def _oversized(path: str) -> list[tuple[dict[str, Any], str]]:
    many_parts = user([{"type": "text", "text": "x"}] * (MAX_CONTENT_PARTS + 1))
    cases = [
        (body_for(path, user("x") * (MAX_MESSAGES + 1)), "messages"),
        (body_for(path, many_parts), "messages.0.content"),
        (body_for(path, model="m" * 2_400_000), "model"),
        (body_for(path, model="m" * (MAX_NAME_LENGTH + 1)), "model"),
    ]
    function_tool = {"type": "function", "function": {"name": "f"}}
    anthropic_tool = {"name": "f", "input_schema": {"type": "object"}}
    if path == CHAT:
        cases += [
            (body_for(path, provider="p" * (MAX_NAME_LENGTH + 1)), "provider"),
            (body_for(path, stop=["s"] * (MAX_STOP_SEQUENCES + 1)), "stop"),
        ]
    elif path == COMPLETIONS:
        cases += [
            (body_for(path, stop=["s"] * (MAX_STOP_SEQUENCES + 1)), "stop"),
            (body_for(path, tools=[function_tool] * (MAX_TOOLS + 1)), "tools"),
            (
                body_for(
                    path, [{"role": "assistant", "tool_calls": [TOOL_CALL] * (MAX_TOOL_CALLS + 1)}]
                ),
                "messages.0.tool_calls",
            ),
        ]
    else:
        cases += [
            (body_for(path, stop_sequences=["s"] * (MAX_STOP_SEQUENCES + 1)), "stop_sequences"),
            (body_for(path, tools=[anthropic_tool] * (MAX_TOOLS + 1)), "tools"),
        ]
    return cases


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, MESSAGES])
def test_sizes_a_request_could_make_unbounded_are_capped(
    echo, api: Client, path: str, caplog
) -> None:
    for body, field in _oversized(path):
        response = post(api, path, body)
        assert refused_field(path, response) == field
        # The refusal never repeats the oversized value (nor does any log line).
        assert len(response.content) < 1_000
    assert all(len(record.getMessage()) < 10_000 for record in caplog.records)
    assert calls() == 0
    breaker_untouched()


def test_a_name_at_the_limit_is_accepted(echo, api: Client) -> None:
    at_limit = "m" * MAX_NAME_LENGTH
    response = post(api, CHAT, body_for(CHAT, model=at_limit))
    assert response.status_code == 404  # checked, routed, and unknown to the echo provider
    assert response.json()["error"]["type"] == "model_not_found"


# --- unusable JSON -----------------------------------------------------------------


def _text_body(path: str, text_json: str) -> bytes:
    """Return PATH's valid body with the user's text replaced by raw JSON TEXT_JSON."""
    marker = "TEXT-MARKER"
    return json.dumps(body_for(path, user(marker))).replace(f'"{marker}"', text_json).encode()


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, MESSAGES])
@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('"a\\u0000b"', "messages.0.content"),
        ('"a\\ud800b"', "messages.0.content"),
        ("[" * 100 + "]" * 100, "messages.0.content" + ".0" * (MAX_JSON_DEPTH - 3)),
        ("[" * 100_000 + "]" * 100_000, None),
    ],
    ids=["nul", "lone-surrogate", "deep", "deeper-than-recursion"],
)
def test_unusable_json_is_a_400_naming_the_field(
    echo, api: Client, path: str, raw: str, field: str | None
) -> None:
    assert refused_field(path, post(api, path, _text_body(path, raw))) == field
    assert calls() == 0
    breaker_untouched()


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, MESSAGES])
def test_a_nul_in_a_model_name_or_a_key_is_refused(echo, api: Client, path: str) -> None:
    body = json.dumps(body_for(path, model="echo-1\u0000")).encode()
    assert refused_field(path, post(api, path, body)) == "model"
    keyed = json.dumps(body_for(path, user("hi", **{"na\u0000me": "x"}))).encode()
    assert refused_field(path, post(api, path, keyed)) == "messages.0"


def test_a_wrong_type_says_what_was_sent_and_a_missing_field_says_it_is_required(
    echo, api: Client
) -> None:
    wrong = post(api, CHAT, {"messages": user([{"type": "text", "text": 5}]), "provider": "echo"})
    assert wrong.json()["error"]["message"] == "Must be a string, not a number."
    missing = post(api, CHAT, {"messages": user([{"type": "text"}]), "provider": "echo"})
    assert missing.json()["error"]["message"] == "Required: a string."
