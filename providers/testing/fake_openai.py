"""FakeOpenAI: OpenAI's API on loopback, built from OpenAI's API reference.

Routes (under ``/v1``, as on ``api.openai.com``): ``POST /v1/chat/completions``
(a ``chat.completion`` object, or ``chat.completion.chunk`` Server-Sent
Events ended by ``data: [DONE]``, with a usage chunk first when
``stream_options.include_usage`` is set), ``GET /v1/models``,
``GET /v1/models/{id}`` and ``POST /v1/embeddings``.

Answers are deterministic. A chat answer is ``You said: <last user text>``;
after a tool result it is ``Tool result: <result>``; when the request offers
``tools`` and the last user text is ``call <tool> <JSON arguments>``, it is a
call to that tool (one such line per call: several lines, parallel calls).
A token is a whitespace-separated word. ``script()`` queues exact replies
instead.

Embeddings take texts or token-id arrays (a token is then one id) and
``dimensions``. The fake honours the options it receives, as the API reference describes
them: ``stop`` ends the text before the first stop sequence, ``max_tokens``
/ ``max_completion_tokens`` cut it (``finish_reason`` ``length``), ``n``
answers that many choices, ``response_format`` ``json_object`` answers
``{"you_said": ...}`` (and, as OpenAI does, needs the word "json" in the
messages) and ``json_schema`` an instance of the schema,
``parallel_tool_calls: false`` keeps one tool call, ``logprobs`` /
``top_logprobs`` add a logprob per word. ``seed``, penalties and
``logit_bias`` are checked and recorded. Every request body is recorded
(``requests``), so a test sees the provider's own wire form. Requests need ``Authorization: Bearer <key>``
(any non-empty key, or one of ``api_keys``); errors have OpenAI's body
``{"error": {"message", "type", "param", "code"}}``.

Run it alone for ``make run`` or benchmarks::

    python -m providers.testing.fake_openai --port 9001
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import struct
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from providers.plugins.echo_provider import schema_instance
from providers.testing.fake_server import (
    FakeHandler,
    FakeUpstream,
    Fault,
    ScriptedReply,
    count_tokens,
    serve_until_stopped,
)

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-3.5-turbo",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
EMBEDDING_DIMENSIONS = 8
# A fixed creation time keeps ``GET /v1/models`` byte-for-byte reproducible.
MODEL_CREATED = 1_700_000_000

# Error ``type`` and ``code`` by status, as OpenAI's error bodies carry them.
ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("request_forbidden", "unsupported_country_region_territory"),
    404: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


class Rejection(Exception):
    """A request the real API would refuse: STATUS and OpenAI's error fields."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


@dataclass
class Answer:
    """What the fake answers to one chat request."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


def message_text(message: dict[str, Any]) -> str:
    """Return the text of a request message (its text parts joined)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Count the prompt's tokens: the words of every text, part by part."""
    total = 0
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        total += sum(count_tokens(p.get("text") or "") for p in parts if p.get("type") == "text")
    return total


@contextmanager
def departed_client(handler: FakeHandler) -> Iterator[None]:
    """Let a client hang up before its answer (a timeout test does) without a traceback."""
    try:
        yield
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


def embedding(text: str, model: str, dimensions: int) -> list[float]:
    """Return a deterministic unit vector for TEXT under MODEL."""
    digest = hashlib.sha256(f"{model}\n{text}".encode()).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class FakeOpenAI(FakeUpstream):
    """A fake of OpenAI's API; see the module docstring for what it answers."""

    routes: ClassVar[dict[tuple[str, str], str]] = {
        ("POST", "/v1/chat/completions"): "chat_completions",
        ("POST", "/v1/embeddings"): "create_embeddings",
        ("GET", "/v1/models"): "list_models",
        ("GET", "/v1/models/*"): "retrieve_model",
    }
    name = "openai"

    def __init__(
        self,
        port: int = 0,
        *,
        stream_interval: float = 0.0,
        api_keys: Iterable[str] | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
    ) -> None:
        super().__init__(port, stream_interval=stream_interval)
        self.api_keys = set(api_keys) if api_keys else None
        self.models = list(models)
        self._replies: deque[ScriptedReply] = deque()
        #: The client (host, port) pairs seen: how many connections callers opened.
        self.peers: set[tuple[str, int]] = set()

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def script(self, *replies: ScriptedReply) -> None:
        """Answer the next chat requests with REPLIES, in order, instead of the default.

        A tool call is ``{"name": ..., "arguments": <JSON text or object>}``,
        with an optional ``id``.
        """
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._replies.clear()
            self.peers.clear()

    # --- errors ------------------------------------------------------------

    def error_body(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> dict[str, Any]:
        kind, default_code = ERROR_KINDS.get(
            status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
        )
        return {
            "error": {
                "message": message,
                "type": kind,
                "param": param,
                "code": code if code is not None else default_code,
            }
        }

    def reject(self, handler: FakeHandler, rejection: Rejection) -> None:
        body = self.error_body(
            rejection.status, rejection.message, param=rejection.param, code=rejection.code
        )
        with departed_client(handler):
            handler.send_json(rejection.status, body)

    def admit(self, handler: FakeHandler) -> None:
        """Note the caller's connection; refuse a request without a valid ``Authorization: Bearer`` key."""
        with self._lock:
            self.peers.add(handler.client_address[:2])
        scheme, _, key = (handler.headers.get("Authorization") or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Rejection(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if self.api_keys is not None and key not in self.api_keys:
            # OpenAI shows a masked key; the whole key never comes back.
            masked = f"{key[:3]}{'*' * 8}{key[-4:]}" if len(key) > 8 else "*" * 8
            raise Rejection(401, f"Incorrect API key provided: {masked}.")

    def check_model(self, model: Any) -> str:
        if not isinstance(model, str) or not model:
            raise Rejection(400, "You must provide a model parameter.", param="model")
        if model not in self.models:
            raise Rejection(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return model

    def send(self, handler: FakeHandler, payload: Any, fault: Fault | None) -> None:
        """Send PAYLOAD as 200 JSON, spoiled as FAULT says (malformed, or cut short)."""
        data = json.dumps(payload).encode()
        with departed_client(handler):
            if fault is not None and fault.malformed:
                handler.send_raw(200, data[: len(data) // 2])
            elif fault is not None and fault.truncate_after is not None:
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data[: len(data) // 2])
                handler.cut_stream()
            else:
                handler.send_json(200, payload)

    # --- routes --------------------------------------------------------------

    def list_models(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        try:
            self.admit(handler)
        except Rejection as rejection:
            self.reject(handler, rejection)
            return
        data = [self.model_object(m) for m in self.models]
        self.send(handler, {"object": "list", "data": data}, fault)

    def retrieve_model(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        model = handler.path.split("?")[0].removeprefix("/v1/models/")
        try:
            self.admit(handler)
            self.check_model(model)
        except Rejection as rejection:
            self.reject(handler, rejection)
            return
        self.send(handler, self.model_object(model), fault)

    @staticmethod
    def model_object(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "openai"}

    def create_embeddings(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        try:
            self.admit(handler)
            request = self.check_body(body)
            model = self.check_model(request.get("model"))
            texts = self.check_input(request.get("input"))
            dimensions = request.get("dimensions", EMBEDDING_DIMENSIONS)
            if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
                raise Rejection(400, "dimensions must be a positive integer.", param="dimensions")
            encoding = request.get("encoding_format", "float")
            if encoding not in ("float", "base64"):
                raise Rejection(
                    400,
                    f"Invalid value: '{encoding}'. Supported values are: 'float' and 'base64'.",
                    param="encoding_format",
                    code="invalid_value",
                )
        except Rejection as rejection:
            self.reject(handler, rejection)
            return
        tokens = sum(count_tokens(t) for t in texts)
        self.spend(tokens, 0)
        data = []
        for index, text in enumerate(texts):
            vector: Any = embedding(text, model, dimensions)
            if encoding == "base64":
                # What OpenAI's own SDKs ask for: little-endian float32, base64-encoded.
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self.send(handler, payload, fault)

    def chat_completions(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        try:
            self.admit(handler)
            request = self.check_body(body)
            model = self.check_model(request.get("model"))
            messages = self.check_messages(request.get("messages"))
            tools = self.check_tools(request.get("tools"))
            stream = request.get("stream") is True
            if request.get("stream_options") is not None and not stream:
                raise Rejection(
                    400,
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    param="stream_options",
                )
            temperature = request.get("temperature")
            if temperature is not None and not (
                isinstance(temperature, int | float) and 0 <= temperature <= 2
            ):
                raise Rejection(400, "temperature must be between 0 and 2.", param="temperature")
            n = self.check_options(request, messages)
        except Rejection as rejection:
            self.reject(handler, rejection)
            return
        answer = self.compose(request, messages, tools)
        self.spend(answer.prompt_tokens, answer.completion_tokens * n)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        logprobs = request.get("logprobs") is True
        if not stream:
            body = self.completion(completion_id, created, model, answer, n=n, logprobs=logprobs)
            self.send(handler, body, fault)
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        pieces = self.stream_events(
            completion_id, created, model, answer, include_usage, n=n, logprobs=logprobs
        )
        handler.stream_pieces(
            pieces, content_type="text/event-stream", fault=fault, interval=self.stream_interval
        )

    # --- validation ----------------------------------------------------------

    @staticmethod
    def check_body(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Rejection(
                400,
                "We could not parse the JSON body of your request. The OpenAI API expects a "
                "JSON payload.",
            )
        return body

    @staticmethod
    def check_options(request: dict[str, Any], messages: list[dict[str, Any]]) -> int:
        """Refuse options the API reference would refuse; return ``n``."""

        def number(name: str, low: float, high: float) -> None:
            value = request.get(name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not low <= value <= high
            ):
                raise Rejection(
                    400, f"Invalid '{name}': must be between {low} and {high}.", param=name
                )

        n = request.get("n", 1)
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
            raise Rejection(400, "Invalid 'n': must be between 1 and 128.", param="n")
        seed = request.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise Rejection(400, "Invalid type for 'seed': expected an integer.", param="seed")
        number("presence_penalty", -2, 2)
        number("frequency_penalty", -2, 2)
        for flag in ("logprobs", "parallel_tool_calls"):
            if request.get(flag) is not None and not isinstance(request[flag], bool):
                raise Rejection(400, f"Invalid type for '{flag}': expected a boolean.", param=flag)
        if request.get("top_logprobs") is not None:
            number("top_logprobs", 0, 20)
            if request.get("logprobs") is not True:
                raise Rejection(
                    400,
                    "Using top_logprobs requires logprobs to be set to true.",
                    param="top_logprobs",
                )
        bias = request.get("logit_bias")
        if bias is not None:
            if not isinstance(bias, dict) or len(bias) > 300:
                raise Rejection(400, "Invalid 'logit_bias'.", param="logit_bias")
            for token, value in bias.items():
                if (
                    not token.isdigit()
                    or isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not -100 <= value <= 100
                ):
                    raise Rejection(400, f"Invalid 'logit_bias.{token}'.", param="logit_bias")
        response_format = request.get("response_format")
        if response_format is not None:
            kind = response_format.get("type") if isinstance(response_format, dict) else None
            if kind not in ("text", "json_object", "json_schema"):
                raise Rejection(
                    400,
                    "Invalid value for 'response_format.type': supported values are "
                    "'text', 'json_object' and 'json_schema'.",
                    param="response_format.type",
                )
            spec = response_format.get("json_schema")
            if kind == "json_schema" and (
                not isinstance(spec, dict) or not isinstance(spec.get("name"), str)
            ):
                raise Rejection(
                    400,
                    "Missing required parameter: 'response_format.json_schema.name'.",
                    param="response_format.json_schema.name",
                )
            if kind == "json_object" and not any(
                "json" in message_text(m).lower() for m in messages
            ):
                raise Rejection(
                    400,
                    "'messages' must contain the word 'json' in some form, to use "
                    "'response_format' of type 'json_object'.",
                    param="messages",
                )
        return n

    @staticmethod
    def check_input(value: Any) -> list[str]:
        """Return the input as texts: strings as sent, token arrays as their ids joined by spaces.

        As OpenAI documents: a string, a list of strings, a list of token ids
        (one input) or a list of token-id lists; no input empty.
        """
        if isinstance(value, list) and value and all(_token_id(t) for t in value):
            value = [value]  # one input, as token ids
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts:
            raise Rejection(400, "'input' is a required property.", param="input")
        if all(isinstance(t, list) and t and all(_token_id(i) for i in t) for t in texts):
            return [" ".join(str(i) for i in tokens) for tokens in texts]
        if not all(isinstance(t, str) and t for t in texts):
            raise Rejection(
                400,
                "'$.input' is invalid: each input must be a non-empty string or token array.",
                param="input",
            )
        return texts

    @staticmethod
    def check_messages(messages: Any) -> list[dict[str, Any]]:
        if messages is None:
            raise Rejection(400, "Missing required parameter: 'messages'.", param="messages")
        if not isinstance(messages, list) or not messages:
            raise Rejection(
                400, "'messages' must be a non-empty array of messages.", param="messages"
            )
        for index, message in enumerate(messages):
            where = f"messages.[{index}]"
            if not isinstance(message, dict):
                raise Rejection(
                    400, f"Invalid type for '{where}': expected an object.", param=where
                )
            if message.get("role") not in ROLES:
                raise Rejection(
                    400,
                    f"Invalid value: '{message.get('role')}'. Supported values are: "
                    + ", ".join(f"'{r}'" for r in ROLES)
                    + ".",
                    param=f"{where}.role",
                    code="invalid_value",
                )
            if message["role"] == "tool" and not message.get("tool_call_id"):
                raise Rejection(
                    400,
                    f"Missing required parameter: '{where}.tool_call_id'.",
                    param=f"{where}.tool_call_id",
                    code="missing_required_parameter",
                )
            content = message.get("content")
            if isinstance(content, list):
                for number, part in enumerate(content):
                    FakeOpenAI.check_part(part, f"{where}.content.[{number}]")
            elif content is not None and not isinstance(content, str):
                raise Rejection(
                    400, f"Invalid type for '{where}.content'.", param=f"{where}.content"
                )
            elif content is None and not message.get("tool_calls"):
                raise Rejection(
                    400,
                    f"Invalid value for '{where}.content': expected a string, got null.",
                    param=f"{where}.content",
                )
        return messages

    @staticmethod
    def check_part(part: Any, where: str) -> None:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            return
        if kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, dict) and isinstance(image.get("url"), str) and image["url"]:
                return
            raise Rejection(
                400,
                f"Missing required parameter: '{where}.image_url.url'.",
                param=f"{where}.image_url",
                code="missing_required_parameter",
            )
        if kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            if isinstance(data, str) and data.startswith("data:application/pdf;base64,"):
                return
            if isinstance(file, dict) and isinstance(file.get("file_id"), str):
                return
            raise Rejection(
                400,
                f"Invalid '{where}.file': expected file_data as a PDF data URL, or a file_id.",
                param=f"{where}.file",
                code="invalid_value",
            )
        raise Rejection(
            400,
            f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url' and 'file'.",
            param=f"{where}.type",
            code="invalid_value",
        )

    @staticmethod
    def check_tools(tools: Any) -> list[str]:
        """Return the names of the offered functions."""
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise Rejection(400, "Invalid type for 'tools': expected an array.", param="tools")
        names = []
        for index, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(tool, dict)
                or tool.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
            ):
                raise Rejection(
                    400,
                    f"Invalid value for 'tools.[{index}]': expected "
                    "{'type': 'function', 'function': {'name': ...}}.",
                    param=f"tools.[{index}]",
                )
            names.append(function["name"])
        return names

    # --- answers -------------------------------------------------------------

    def compose(
        self, request: dict[str, Any], messages: list[dict[str, Any]], tools: list[str]
    ) -> Answer:
        """Return the deterministic answer to REQUEST."""
        prompt = prompt_tokens(messages)
        with self._lock:
            scripted = self._replies.popleft() if self._replies else None
        if scripted is not None:
            return self.scripted_answer(scripted, prompt)
        last = messages[-1]
        if last.get("role") == "tool":
            text = f"Tool result: {message_text(last)}"
        else:
            user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
            said = message_text(user)
            calls = [
                call
                for line in said.splitlines()
                if (call := self.tool_call_in(line, tools, request.get("tool_choice")))
            ]
            if request.get("parallel_tool_calls") is False:
                calls = calls[:1]
            if calls:
                tokens = sum(1 + count_tokens(c["function"]["arguments"]) for c in calls)
                return Answer(None, calls, "tool_calls", prompt, tokens)
            text = self.formatted(request.get("response_format"), said)
        finish = "stop"
        stop = request.get("stop")
        for sequence in [stop] if isinstance(stop, str) else stop or []:
            if isinstance(sequence, str) and sequence and sequence in text:
                text = text[: text.index(sequence)]
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        if isinstance(limit, int) and count_tokens(text) > limit:
            text = " ".join(text.split()[:limit])
            finish = "length"
        return Answer(text, [], finish, prompt, count_tokens(text))

    @staticmethod
    def formatted(response_format: Any, said: str) -> str:
        """Return the answer to SAID in RESPONSE_FORMAT: text, a JSON object, or a schema's instance."""
        kind = response_format.get("type") if isinstance(response_format, dict) else "text"
        if kind == "json_object":
            return json.dumps({"you_said": said})
        if kind == "json_schema":
            schema = response_format["json_schema"].get("schema")
            if isinstance(schema, dict):
                return json.dumps(schema_instance(schema, said))
            return json.dumps({"you_said": said})
        return f"You said: {said}"

    @staticmethod
    def tool_call_in(said: str, tools: list[str], tool_choice: Any) -> dict[str, Any] | None:
        """Return the call that ``call <tool> <JSON>`` in SAID asks for, if a tool is offered."""
        if not tools or tool_choice == "none" or not said.startswith("call "):
            return None
        name, _, arguments = said[len("call ") :].strip().partition(" ")
        if name not in tools:
            return None
        return FakeOpenAI.wire_tool_call(name, arguments.strip() or "{}")

    @staticmethod
    def wire_tool_call(name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
        digest = hashlib.sha256(f"{name}\n{arguments}".encode()).hexdigest()[:24]
        return {
            "id": call_id or f"call_{digest}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    def scripted_answer(self, reply: ScriptedReply, prompt: int) -> Answer:
        calls = []
        for call in reply.tool_calls:
            arguments = call.get("arguments", "{}")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            calls.append(self.wire_tool_call(call["name"], arguments, call.get("id")))
        tokens = count_tokens(reply.content) + sum(
            1 + count_tokens(c["function"]["arguments"]) for c in calls
        )
        return Answer(
            reply.content or (None if calls else ""),
            calls,
            "tool_calls" if calls else "stop",
            prompt,
            tokens,
        )

    @staticmethod
    def usage_body(answer: Answer) -> dict[str, int]:
        return {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        }

    @staticmethod
    def logprobs_of(text: str | None) -> dict[str, Any]:
        """Return OpenAI's ``logprobs`` object for TEXT: each word certain (logprob 0)."""
        words = (text or "").split(" ") if text else []
        tokens = [word if n == 0 else " " + word for n, word in enumerate(words)]
        return {"content": [FakeOpenAI.token_logprob(t) for t in tokens], "refusal": None}

    @staticmethod
    def token_logprob(token: str) -> dict[str, Any]:
        """Return one token's logprob entry: certain (0), with no alternatives."""
        return {"token": token, "logprob": 0.0, "bytes": list(token.encode()), "top_logprobs": []}

    def completion(
        self,
        completion_id: str,
        created: int,
        model: str,
        answer: Answer,
        *,
        n: int = 1,
        logprobs: bool = False,
    ) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        usage = self.usage_body(answer)
        usage["completion_tokens"] *= n
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": dict(message),
                    "logprobs": self.logprobs_of(answer.content) if logprobs else None,
                    "finish_reason": answer.finish_reason,
                }
                for index in range(n)
            ],
            "usage": usage,
            "system_fingerprint": "fp_fake",
        }

    def stream_events(
        self,
        completion_id: str,
        created: int,
        model: str,
        answer: Answer,
        include_usage: bool,
        *,
        n: int = 1,
        logprobs: bool = False,
    ) -> Iterator[bytes]:
        """Yield the SSE events of ANSWER: role, deltas, finish, usage (if asked), ``[DONE]``.

        With N choices, each choice's events follow the previous one's, each
        with its ``index``; with LOGPROBS each text delta carries its own.
        """
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if include_usage:
            # With include_usage every chunk has a usage field, null until the last.
            head["usage"] = None

        def event(payload: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        for choice_index in range(n):
            yield from self.choice_events(event, head, answer, choice_index, logprobs)
        if include_usage:
            usage = self.usage_body(answer)
            usage["completion_tokens"] *= n
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            yield event({**head, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    def choice_events(
        self,
        event: Any,
        head: dict[str, Any],
        answer: Answer,
        choice_index: int,
        logprobs: bool,
    ) -> Iterator[bytes]:
        """Yield the chunks of one choice of a streamed answer."""

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, lp: Any = None) -> bytes:
            choice = {
                "index": choice_index,
                "delta": delta,
                "logprobs": lp,
                "finish_reason": finish_reason,
            }
            return event({**head, "choices": [choice]})

        yield chunk({"role": "assistant", "content": "" if answer.content is not None else None})
        if answer.content:
            for number, word in enumerate(answer.content.split(" ")):
                piece = word if number == 0 else " " + word
                lp = {"content": [self.token_logprob(piece)], "refusal": None}
                yield chunk({"content": piece}, lp=lp if logprobs else None)
        for index, call in enumerate(answer.tool_calls):
            function = call["function"]
            opening = {"name": function["name"], "arguments": ""}
            yield chunk(
                {
                    "tool_calls": [
                        {"index": index, "id": call["id"], "type": "function", "function": opening}
                    ]
                }
            )
            arguments = function["arguments"]
            # Arguments arrive in pieces, as a model writes them.
            for start in range(0, len(arguments), 8):
                piece = {"arguments": arguments[start : start + 8]}
                yield chunk({"tool_calls": [{"index": index, "function": piece}]})
        yield chunk({}, answer.finish_reason)


def main(argv: list[str] | None = None) -> None:
    """Serve a FakeOpenAI on 127.0.0.1 until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m providers.testing.fake_openai",
        description="Serve a fake OpenAI API on 127.0.0.1 (base URL http://127.0.0.1:PORT/v1).",
    )
    parser.add_argument("--port", type=int, default=9001, help="port to listen on (default 9001)")
    parser.add_argument(
        "--stream-interval",
        type=float,
        default=0.0,
        help="seconds between streamed events (default 0)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accept only this key (repeat for more); by default any non-empty key",
    )
    args = parser.parse_args(argv)
    fake = FakeOpenAI(args.port, stream_interval=args.stream_interval, api_keys=args.api_keys)
    fake.start()
    serve_until_stopped([fake], f"Fake OpenAI serving at {fake.base_url} (Ctrl-C to stop)")


if __name__ == "__main__":
    main()
