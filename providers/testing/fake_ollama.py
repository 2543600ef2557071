"""FakeOllama: Ollama's native API on loopback, built from its API reference.

Written from ``docs/api.md`` and ``docs/api/errors.mdx`` of ollama/ollama,
not from Echo's client, so that the client is tested against the protocol
rather than against itself:

- ``POST /api/chat`` streams NDJSON unless the body says ``"stream": false``
  (streaming is the server's default); the last object is ``done: true``
  with ``done_reason`` and the counts ``prompt_eval_count`` / ``eval_count``.
  An empty ``messages`` list loads the model (``done_reason: "load"``).
- ``GET /api/tags`` lists the local models; ``POST /api/embed`` embeds a
  string or a list of strings; ``GET /api/version`` says the version.
- A model named without a tag means ``:latest``. An unknown model is a 404
  ``{"error": "model \\"x\\" not found, try pulling it first"}``; a bad body
  is a 400 with ``{"error": "..."}``.

Answers are deterministic: "You said: <last user text>", one word per
streamed object, one token per word. With tools offered, a last user message
"call <tool> <json arguments>" makes the model call that tool (one line per
call). Options honour ``num_predict`` (the answer stops after that many
words, ``done_reason: "length"``) and ``stop``; ``seed`` and ``top_k`` are
checked; ``format`` ``"json"`` answers ``{"you_said": ...}`` and a JSON
schema an instance of it. Every request body is recorded (``requests``). Faults from ``FakeUpstream`` apply, plus ``OllamaFault`` for
what only an NDJSON stream can do: an ``{"error": ...}`` object mid-stream,
or a stream that ends cleanly without its ``done`` object.

Run alone: ``python -m providers.testing.fake_ollama --port 11435``.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import json
import math
from base64 import b64decode
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from providers.plugins.echo_provider import schema_instance
from providers.testing.fake_server import (
    FakeHandler,
    FakeUpstream,
    Fault,
    count_tokens,
    serve_until_stopped,
)

VERSION = "0.5.7"
EMBEDDING_DIMENSIONS = 8
ROLES = ("system", "user", "assistant", "tool")

# The models "pulled" on the fake server: name -> (family, parameter size, can chat).
LOCAL_MODELS: dict[str, tuple[str, str, bool]] = {
    "llama3:latest": ("llama", "8.0B", True),
    "mistral:latest": ("llama", "7.2B", True),
    "llava:latest": ("llama", "7B", True),
    "nomic-embed-text:latest": ("nomic-bert", "137M", False),
}


@dataclass
class OllamaFault(Fault):
    """A Fault with the misbehaviours of an NDJSON stream.

    STREAM_ERROR sends ``{"error": STREAM_ERROR}`` after ERROR_AFTER objects
    and ends the answer, as Ollama does when a model fails mid-answer (the
    status stays 200). SKIP_DONE ends the stream cleanly but without its
    final ``done: true`` object.
    """

    stream_error: str | None = None
    error_after: int = 1
    skip_done: bool = False


def now() -> str:
    """Return the time as Ollama writes ``created_at``."""
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


def ndjson(payload: dict[str, Any]) -> bytes:
    """Return PAYLOAD as one NDJSON line."""
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def embedding(text: str) -> list[float]:
    """Return a deterministic unit vector for TEXT (Ollama normalizes its embeddings)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


class BadRequest(Exception):
    """A request body Ollama would refuse; STATUS and the message go into its error body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class FakeOllama(FakeUpstream):
    """A fake Ollama server (``base_url`` without ``/api``, as Ollama's clients take it)."""

    name = "ollama"
    routes: ClassVar[dict[tuple[str, str], str]] = {
        ("POST", "/api/chat"): "chat",
        ("GET", "/api/tags"): "tags",
        ("POST", "/api/embed"): "embed",
        ("GET", "/api/version"): "version",
    }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}

    # --- models -------------------------------------------------------------

    def resolve(self, model: Any) -> str:
        """Return the local name MODEL refers to (``llama3`` is ``llama3:latest``), or raise."""
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required")
        name = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
        if name not in LOCAL_MODELS:
            raise BadRequest(f'model "{model}" not found, try pulling it first', 404)
        return name

    def tags(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        models = []
        for name, (family, size, _) in LOCAL_MODELS.items():
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2024-06-04T14:38:31.83753-07:00",
                    "size": 4_661_224_676,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": family,
                        "families": [family],
                        "parameter_size": size,
                        "quantization_level": "Q4_0",
                    },
                }
            )
        self._send(handler, {"models": models}, fault)

    def version(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        self._send(handler, {"version": VERSION}, fault)

    # --- embeddings -----------------------------------------------------------

    def embed(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        try:
            if not isinstance(body, dict):
                raise BadRequest("invalid request body")
            self.resolve(body.get("model"))
            given = body.get("input", [])
            texts = [given] if isinstance(given, str) else given
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise BadRequest("invalid input type")
        except BadRequest as exc:
            handler.send_json(exc.status, self.error_body(exc.status, exc.message))
            return
        answer = {
            "model": body["model"],
            "embeddings": [embedding(text) for text in texts],
            "total_duration": 14_143_917,
            "load_duration": 1_019_500,
            "prompt_eval_count": sum(count_tokens(t) for t in texts),
        }
        self._send(handler, answer, fault)

    # --- chat -------------------------------------------------------------------

    def chat(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        try:
            request = self._chat_request(body)
        except BadRequest as exc:
            handler.send_json(exc.status, self.error_body(exc.status, exc.message))
            return
        model, messages, stream = request["model"], request["messages"], request["stream"]
        if not messages:
            # The reference: an empty message list only loads the model.
            done = {
                "model": model,
                "created_at": now(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": "load",
                "done": True,
            }
            if stream:
                self._stream(handler, [ndjson(done)], fault)
            else:
                self._send(handler, done, fault)
            return
        words, tool_calls, done_reason = self._answer(request)
        prompt_tokens = sum(count_tokens(str(m.get("content") or "")) for m in messages)
        completion_tokens = len(words) if not tool_calls else count_tokens(json.dumps(tool_calls))
        self.spend(prompt_tokens, completion_tokens)
        final = {
            "model": model,
            "created_at": now(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": done_reason,
            "done": True,
            "total_duration": 4_883_583_458,
            "load_duration": 1_334_875,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 342_546_000,
            "eval_count": completion_tokens,
            "eval_duration": 4_535_599_000,
        }
        if not stream:
            final["message"] = {"role": "assistant", "content": " ".join(words)}
            if tool_calls:
                final["message"]["tool_calls"] = tool_calls
            self._send(handler, final, fault)
            return
        pieces = []
        for index, word in enumerate(words):
            content = word if index == 0 else " " + word
            pieces.append(self._delta(model, {"role": "assistant", "content": content}))
        if tool_calls:
            message = {"role": "assistant", "content": "", "tool_calls": tool_calls}
            pieces.append(self._delta(model, message))
        final["created_at"] = now()
        pieces.append(ndjson(final))
        self._stream(handler, pieces, fault)

    def _chat_request(self, body: Any) -> dict[str, Any]:
        """Return the checked parts of a ``/api/chat`` BODY, or raise BadRequest as Ollama would."""
        if not isinstance(body, dict):
            raise BadRequest("invalid request body")
        name = self.resolve(body.get("model"))
        if "messages" not in body:
            raise BadRequest("messages is required")
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("messages must be a list of message objects")
        for message in messages:
            if message.get("role") not in ROLES:
                raise BadRequest(f"invalid role: {message.get('role')!r}")
            if not isinstance(message.get("content", ""), str):
                raise BadRequest("message content must be a string")
            for image in message.get("images") or []:
                try:
                    b64decode(image, validate=True)
                except (binascii.Error, ValueError, TypeError):
                    raise BadRequest("illegal base64 data in images") from None
        stream = body.get("stream", True)  # the reference: streaming unless told otherwise
        if not isinstance(stream, bool):
            raise BadRequest("stream must be true or false")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequest("options must be an object")
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise BadRequest("tools must be a list")
        response_format = body.get("format")
        if (
            response_format is not None
            and response_format != "json"
            and not isinstance(response_format, dict)
        ):
            raise BadRequest(f"invalid format: {json.dumps(response_format)}")
        stop = options.get("stop")
        if stop is not None and not (
            isinstance(stop, list) and all(isinstance(item, str) for item in stop)
        ):
            raise BadRequest("option stop must be a list of strings")
        for option in ("seed", "top_k", "num_predict"):
            value = options.get(option)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise BadRequest(f"option {option} must be an integer")
        if messages and not LOCAL_MODELS[name][2]:
            raise BadRequest(f'"{body["model"]}" does not support chat')
        return {
            "model": body["model"],
            "messages": messages,
            "stream": stream,
            "options": options,
            "tools": tools,
            "format": response_format,
        }

    def _answer(self, request: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]], str]:
        """Return the answer's words, its tool calls and its done_reason."""
        last_user = next((m for m in reversed(request["messages"]) if m.get("role") == "user"), {})
        text = str(last_user.get("content") or "")
        offered = {
            t.get("function", {}).get("name")
            for t in request["tools"]
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        }
        calls = []
        for line in text.splitlines():
            parts = line.split(" ", 2)
            if offered and len(parts) >= 2 and parts[0] == "call" and parts[1] in offered:
                try:
                    arguments = json.loads(parts[2]) if len(parts) == 3 else {}
                except ValueError:
                    arguments = {"input": parts[2]}
                calls.append({"function": {"name": parts[1], "arguments": arguments}})
        if calls:
            return [], calls, "stop"
        response_format = request["format"]
        if response_format == "json":
            answer = json.dumps({"you_said": text})
        elif isinstance(response_format, dict):
            answer = json.dumps(schema_instance(response_format, text))
        else:
            answer = f"You said: {text}"
        for stop in request["options"].get("stop") or []:
            if stop and stop in answer:
                answer = answer[: answer.index(stop)]
        words = answer.split()
        limit = request["options"].get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(words):
            return words[:limit], [], "length"
        return words, [], "stop"

    def _delta(self, model: str, message: dict[str, Any]) -> bytes:
        return ndjson({"model": model, "created_at": now(), "message": message, "done": False})

    # --- writing ------------------------------------------------------------------

    def _send(self, handler: FakeHandler, payload: dict[str, Any], fault: Fault | None) -> None:
        """Send one JSON answer, malformed or cut short if FAULT says so."""
        data = json.dumps(payload).encode()
        if fault is not None and fault.malformed:
            handler.send_raw(200, b"{not json")
            return
        if fault is not None and fault.truncate_after is not None:
            # Promise the whole body, send half of it, then hang up.
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json; charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.cut_stream()
            return
        handler.send_raw(200, data, "application/json; charset=utf-8")

    def _stream(self, handler: FakeHandler, pieces: list[bytes], fault: Fault | None) -> None:
        """Stream NDJSON PIECES with the fault's misbehaviour, one object every ``stream_interval``."""
        if isinstance(fault, OllamaFault) and fault.skip_done:
            pieces = pieces[:-1]
        if isinstance(fault, OllamaFault) and fault.stream_error is not None:
            pieces = pieces[: fault.error_after] + [ndjson({"error": fault.stream_error})]
        handler.stream_pieces(
            pieces,
            content_type="application/x-ndjson",
            fault=fault,
            interval=self.stream_interval,
            bad_piece=b"{not json\n",
        )


def main(argv: list[str] | None = None) -> None:
    """Serve a FakeOllama until interrupted."""
    parser = argparse.ArgumentParser(description="A fake Ollama server for Echo's tests.")
    parser.add_argument("--port", type=int, default=11435, help="port on 127.0.0.1")
    parser.add_argument(
        "--stream-interval",
        type=float,
        default=0.0,
        help="seconds between streamed objects",
    )
    args = parser.parse_args(argv)
    fake = FakeOllama(args.port, stream_interval=args.stream_interval).start()
    serve_until_stopped([fake], f"Fake Ollama serving on {fake.url} (Ctrl-C to stop)")


if __name__ == "__main__":
    main()
