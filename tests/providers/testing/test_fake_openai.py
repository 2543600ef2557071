"""FakeOpenAI speaks OpenAI's protocol: checked with a plain HTTP client, not the provider."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.testing.fake_openai import FakeOpenAI

KEY = "sk-fake-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, headers=AUTH, timeout=5) as client:
        yield client


def chat(text: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **fields}


def sse_data(response: httpx.Response) -> list[str]:
    """Return the data of each event of a ``text/event-stream`` answer."""
    events = response.text.split("\n\n")
    assert events[-1] == "", "the stream ends with a blank line"
    assert all(e.startswith("data: ") for e in events[:-1])
    return [e.removeprefix("data: ") for e in events[:-1]]


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- authentication -----------------------------------------------------------


def test_a_request_without_a_bearer_key_is_refused(fake) -> None:
    response = httpx.post(f"{fake.base_url}/chat/completions", json=chat())
    assert response.status_code == 401
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert "Authorization" in error["message"]
    assert fake.usage.completions == 0


def test_api_keys_restrict_which_keys_work() -> None:
    with FakeOpenAI(api_keys={"sk-good-0000000000"}) as fake:
        wrong = httpx.get(f"{fake.base_url}/models", headers=AUTH)
        right = httpx.get(
            f"{fake.base_url}/models", headers={"Authorization": "Bearer sk-good-0000000000"}
        )
    assert wrong.status_code == 401 and right.status_code == 200
    message = error_of(wrong)["message"]
    assert KEY not in message and "Incorrect API key" in message


# --- chat -----------------------------------------------------------------------


def test_a_whole_completion(client, fake) -> None:
    response = client.post("/chat/completions", json=chat("one two three"))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o-mini"
    [choice] = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "You said: one two three",
        "refusal": None,
    }
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert (fake.usage.completions, fake.usage.prompt_tokens, fake.usage.completion_tokens) == (
        1,
        3,
        5,
    )


def test_a_stream_with_usage(client) -> None:
    body = chat("one two", stream=True, stream_options={"include_usage": True})
    response = client.post("/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    data = sse_data(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert texts == ["You", " said:", " one", " two"]
    finish = chunks[-2]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "stop"
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert all(c["usage"] is None for c in chunks[:-1])


def test_a_stream_without_usage_has_no_usage_chunk(client) -> None:
    data = sse_data(client.post("/chat/completions", json=chat("hi", stream=True)))
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


def test_a_tool_call_when_the_user_asks_for_one(client) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = chat('call get_weather {"city": "Paris"}', tools=tools)
    choice = client.post("/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}

    streamed = sse_data(client.post("/chat/completions", json={**body, "stream": True}))
    deltas = [
        d["choices"][0]["delta"].get("tool_calls")
        for d in map(json.loads, streamed[:-1])
        if d["choices"]
    ]
    pieces = [t[0] for t in deltas if t]
    assert pieces[0]["id"] == call["id"] and pieces[0]["function"]["name"] == "get_weather"
    assert all(p["index"] == 0 for p in pieces)
    assert "".join(p["function"]["arguments"] for p in pieces) == '{"city": "Paris"}'
    assert len(pieces) > 2, "arguments arrive in pieces"

    # Without tools on offer, the same words are only words.
    plain = client.post("/chat/completions", json=chat('call get_weather {"city": "Paris"}'))
    assert plain.json()["choices"][0]["message"]["content"].startswith("You said: call")


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "gpt-4o-mini"}, 400, "messages", None),
        (chat() | {"messages": []}, 400, "messages", None),
        (chat() | {"model": None}, 400, "model", None),
        (
            chat() | {"messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages.[0].role",
            "invalid_value",
        ),
        (
            chat() | {"messages": [{"role": "tool", "content": "x"}]},
            400,
            "messages.[0].tool_call_id",
            "missing_required_parameter",
        ),
        (
            chat() | {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages.[0].content.[0].image_url",
            "missing_required_parameter",
        ),
        (chat() | {"tools": [{"name": "x"}]}, 400, "tools.[0]", None),
        (chat() | {"stream_options": {"include_usage": True}}, 400, "stream_options", None),
        (chat() | {"temperature": 3}, 400, "temperature", None),
        (chat() | {"model": "gpt-nope"}, 404, None, "model_not_found"),
    ],
)
def test_bad_requests_are_refused_like_openai(client, fake, body, status, param, code) -> None:
    response = client.post("/chat/completions", json=body)
    assert response.status_code == status
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    assert fake.usage.completions == 0


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, "invalid_request_error", None),
        (401, "invalid_request_error", "invalid_api_key"),
        (403, "request_forbidden", "unsupported_country_region_territory"),
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", None),
        (503, "server_error", None),
    ],
)
def test_injected_errors_have_openais_body(client, fake, status, kind, code) -> None:
    fake.inject(status=status, message="Injected.", retry_after=3 if status == 429 else None)
    response = client.post("/chat/completions", json=chat())
    assert response.status_code == status
    assert error_of(response) == {"message": "Injected.", "type": kind, "param": None, "code": code}
    if status == 429:
        assert response.headers["retry-after"] == "3"


def test_scripted_replies_come_first_then_the_default(client, fake) -> None:
    from providers.testing.fake_server import ScriptedReply

    fake.script(ScriptedReply(content="Scripted answer."))
    first = client.post("/chat/completions", json=chat()).json()
    second = client.post("/chat/completions", json=chat()).json()
    assert first["choices"][0]["message"]["content"] == "Scripted answer."
    assert second["choices"][0]["message"]["content"] == "You said: hello there"


# --- models and embeddings ----------------------------------------------------------


def test_models(client, fake) -> None:
    body = client.get("/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == fake.models
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by"}
    assert body["data"][0]["object"] == "model"
    assert client.get("/models/gpt-4o").json()["id"] == "gpt-4o"
    assert client.get("/models/gpt-nope").status_code == 404
    assert fake.usage.completions == 0


def test_embeddings_are_deterministic_unit_vectors(client, fake) -> None:
    body = {"model": "text-embedding-3-small", "input": ["one two", "three"]}
    answer = client.post("/embeddings", json=body).json()
    assert answer["object"] == "list" and answer["model"] == "text-embedding-3-small"
    assert [d["index"] for d in answer["data"]] == [0, 1]
    assert {d["object"] for d in answer["data"]} == {"embedding"}
    vectors = [d["embedding"] for d in answer["data"]]
    assert all(len(v) == 8 for v in vectors)
    assert all(math.isclose(math.hypot(*v), 1.0, abs_tol=1e-5) for v in vectors)
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    again = client.post("/embeddings", json=body).json()
    assert [d["embedding"] for d in again["data"]] == vectors

    encoded = client.post("/embeddings", json={**body, "encoding_format": "base64"}).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(vectors[0], abs=1e-6)

    missing = client.post("/embeddings", json={"model": "text-embedding-3-small"})
    assert missing.status_code == 400 and error_of(missing)["param"] == "input"
