"""FakeAnthropic: Anthropic's Messages API on loopback, written from its API reference.

It serves ``POST /v1/messages`` (whole and as the documented SSE event
sequence) and ``GET /v1/models``, and checks requests the way the real API
does: ``x-api-key`` and ``anthropic-version`` headers, a ``model`` it knows,
``max_tokens``, a ``system`` prompt at the top level rather than among the
messages, roles that alternate starting with ``user``, well-formed content
blocks (text, image with a base64 or url source, document with a base64
PDF, plain text or url source, tool_use in assistant turns, tool_result
in user turns answering the tool_use just before).
Errors use Anthropic's body: ``{"type": "error", "error": {"type", "message"}}``.

It honours the options it receives as the reference describes them and
refuses fields the API does not take ("Extra inputs are not permitted"), so
an OpenAI-only option that leaked into the wire form fails a test:
``stop_sequences`` and ``max_tokens`` end the text (``stop_sequence``,
``max_tokens``); ``tool_choice`` ``{"type": "tool", "name"}`` forces that
tool (its input an instance of its ``input_schema``, no text before it)
and ``any`` forces a tool; ``disable_parallel_tool_use`` keeps one call;
``thinking`` (``budget_tokens`` at least 1,024 and below ``max_tokens``, and
never with a forced tool) adds a ``thinking`` block first; ``top_k`` and
``metadata.user_id`` are checked. A user text of lines ``call <tool>
<JSON>`` calls those tools. Every request body is recorded (``requests``).

Run it alone with ``python -m providers.testing.fake_anthropic --port 9002``.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from providers.plugins.echo_provider import schema_instance
from providers.testing.fake_server import (
    FakeHandler,
    FakeUpstream,
    Fault,
    count_tokens,
    serve_until_stopped,
)

# The top-level fields of a Messages API request body, per the reference.
MESSAGE_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
    }
)

# The versions Anthropic documents for the anthropic-version header.
ANTHROPIC_VERSIONS = ("2023-01-01", "2023-06-01")

DEFAULT_MODELS: tuple[tuple[str, str, str], ...] = (
    # (id, display_name, created_at), newest first as the real list is.
    ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z"),
    ("claude-opus-4-20250514", "Claude Opus 4", "2025-05-22T00:00:00Z"),
    ("claude-3-7-sonnet-20250219", "Claude Sonnet 3.7", "2025-02-24T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
    ("claude-3-haiku-20240307", "Claude Haiku 3", "2024-03-07T00:00:00Z"),
)

# Aliases the API accepts in requests but does not list.
DEFAULT_ALIASES: dict[str, str] = {
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MID_STREAM_OVERLOAD = "overload me mid-stream"


class RequestRejected(Exception):
    """A request the real API would refuse, with its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FakeAnthropic(FakeUpstream):
    """A fake Anthropic Messages API.

    Conventions, so that tests can steer it from the conversation alone:

    - The answer is ``"You said: <last user text>"`` (the text of the last
      user turn; after a tool round trip, the tool results' text).
    - When the request has tools and the last user text is
      ``call <tool_name> <json object>``, the answer is a short text block
      and a ``tool_use`` block calling that tool with that input
      (``stop_reason: "tool_use"``).
    - When the last user text is ``overload me mid-stream``, a streaming
      answer sends ``message_start`` and a few deltas, then an ``error``
      event (``overloaded_error``) and no ``message_stop``; a whole answer
      is a 529 ``overloaded_error``.
    - ``stop_sequences`` and ``max_tokens`` cut the answer as the real API
      does (``stop_reason`` ``stop_sequence`` / ``max_tokens``).

    Tokens are counted the fakes' way (one per whitespace-separated word):
    input is the words of the system prompt and of every text, including
    tool results; output is the words of the answer text plus those of each
    tool call's JSON input. API_KEYS, when given, is the set of keys
    accepted; otherwise any non-empty key is. Unlike the real API, which
    merges consecutive same-role turns, the fake insists on alternation, so
    that a client that does not merge is caught.
    """

    name = "anthropic"
    routes: ClassVar[dict[tuple[str, str], str]] = {
        ("POST", "/v1/messages"): "handle_messages",
        ("POST", "/v1/messages/count_tokens"): "handle_count_tokens",
        ("GET", "/v1/models"): "handle_models",
    }

    def __init__(
        self,
        port: int = 0,
        *,
        stream_interval: float = 0.0,
        api_keys: set[str] | None = None,
        models: tuple[tuple[str, str, str], ...] = DEFAULT_MODELS,
        aliases: dict[str, str] | None = None,
    ) -> None:
        super().__init__(port, stream_interval=stream_interval)
        self.api_keys = api_keys
        self.models = models
        self.aliases = DEFAULT_ALIASES if aliases is None else aliases

    # --- protocol hooks ----------------------------------------------------

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """Return Anthropic's error body for STATUS."""
        if status in ERROR_TYPES:
            kind = ERROR_TYPES[status]
        else:
            kind = "api_error" if status >= 500 else "invalid_request_error"
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }

    def reject(self, handler: FakeHandler, exc: RequestRejected) -> None:
        handler.send_json(exc.status, self.error_body(exc.status, exc.message))

    # --- checks --------------------------------------------------------------

    def check_headers(self, handler: FakeHandler) -> None:
        key = handler.headers.get("x-api-key")
        if not key:
            raise RequestRejected(401, "x-api-key header is required")
        if self.api_keys is not None and key not in self.api_keys:
            raise RequestRejected(401, "invalid x-api-key")
        version = handler.headers.get("anthropic-version")
        if not version:
            raise RequestRejected(400, "anthropic-version: header is required")
        if version not in ANTHROPIC_VERSIONS:
            raise RequestRejected(400, f"anthropic-version: invalid version {version!r}")

    def resolve_model(self, model: Any) -> str:
        known = {m[0] for m in self.models}
        if not isinstance(model, str) or not model:
            raise RequestRejected(400, "model: Field required")
        resolved = self.aliases.get(model, model)
        if resolved not in known:
            raise RequestRejected(404, f"model: {model}")
        return resolved

    def check_body(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise RequestRejected(400, "The request body is not valid JSON.")
        for name in body:
            if name not in MESSAGE_FIELDS:
                raise RequestRejected(400, f"{name}: Extra inputs are not permitted")
        self.check_options(body)
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise RequestRejected(400, "max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestRejected(400, "max_tokens: Input should be a positive integer")
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            raise RequestRejected(400, "system: Input should be a string or a list of text blocks")
        if isinstance(system, list):
            for block in system:
                if not isinstance(block, dict) or block.get("type") != "text":
                    raise RequestRejected(400, "system: blocks must be of type text")
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise RequestRejected(400, "tools: Input should be a valid list")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or not tool.get("name"):
                raise RequestRejected(400, f"tools.{index}.name: Field required")
            if not isinstance(tool.get("input_schema"), dict):
                raise RequestRejected(400, f"tools.{index}.input_schema: Field required")
        self.check_messages(body.get("messages"))

    @staticmethod
    def check_options(body: dict[str, Any]) -> None:
        """Refuse ``top_k``, ``metadata``, ``thinking`` and ``tool_choice`` as the API would."""
        top_k = body.get("top_k")
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0
        ):
            raise RequestRejected(400, "top_k: Input should be a non-negative integer")
        metadata = body.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise RequestRejected(400, "metadata: Input should be an object")
            for key in metadata:
                if key != "user_id":
                    raise RequestRejected(400, f"metadata.{key}: Extra inputs are not permitted")
        choice = body.get("tool_choice")
        if choice is not None:
            if not isinstance(choice, dict) or choice.get("type") not in (
                "auto",
                "any",
                "tool",
                "none",
            ):
                raise RequestRejected(400, "tool_choice: Input tag does not match")
            if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
                raise RequestRejected(400, "tool_choice.tool.name: Field required")
            names = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
            if choice["type"] == "tool" and choice["name"] not in names:
                raise RequestRejected(400, f"Tool '{choice['name']}' not found in tools")
            disable = choice.get("disable_parallel_tool_use")
            if disable is not None and not isinstance(disable, bool):
                raise RequestRejected(
                    400, "tool_choice.disable_parallel_tool_use: Input should be a valid boolean"
                )
        thinking = body.get("thinking")
        if thinking is None:
            return
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind == "disabled":
            return
        if kind != "enabled":
            raise RequestRejected(400, "thinking: Input tag does not match 'enabled', 'disabled'")
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024:
            raise RequestRejected(
                400, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if budget >= body.get("max_tokens", 0):
            raise RequestRejected(
                400, "`max_tokens` must be greater than `thinking.budget_tokens`."
            )
        if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
            raise RequestRejected(
                400, "Thinking may not be enabled when tool_choice forces tool use."
            )

    def check_messages(self, messages: Any) -> None:
        if not isinstance(messages, list) or not messages:
            raise RequestRejected(400, "messages: at least one message is required")
        previous_tool_uses: set[str] = set()
        for index, message in enumerate(messages):
            where = f"messages.{index}"
            if not isinstance(message, dict):
                raise RequestRejected(400, f"{where}: Input should be an object")
            role = message.get("role")
            if role == "system":
                raise RequestRejected(
                    400,
                    f'{where}.role: Unexpected role "system". The Messages API accepts a '
                    'top-level `system` parameter, not "system" as an input message role.',
                )
            if role not in ("user", "assistant"):
                raise RequestRejected(400, f"{where}.role: Input should be 'user' or 'assistant'")
            if index == 0 and role != "user":
                raise RequestRejected(400, 'messages: first message must use the "user" role')
            if index and messages[index - 1].get("role") == role:
                raise RequestRejected(
                    400, 'messages: roles must alternate between "user" and "assistant"'
                )
            tool_uses = self.check_content(where, role, message.get("content"), previous_tool_uses)
            previous_tool_uses = tool_uses

    @staticmethod
    def check_document(at: str, source: Any) -> None:
        """Check a document block's source as Anthropic does: base64 PDF, plain text, or a URL."""
        kind = source.get("type") if isinstance(source, dict) else None
        wanted = {"base64": "application/pdf", "text": "text/plain"}
        if kind == "url" and isinstance(source.get("url"), str) and source["url"]:
            return
        if kind in wanted and source.get("media_type") == wanted[kind]:
            if isinstance(source.get("data"), str) and source["data"]:
                return
        raise RequestRejected(400, f"{at}.source: Input should be a valid document source")

    def check_content(
        self, where: str, role: str, content: Any, previous_tool_uses: set[str]
    ) -> set[str]:
        """Check one message's content; return the ids of the tool_use blocks it holds."""
        if isinstance(content, str):
            if not content and role == "user":
                raise RequestRejected(400, f"{where}: user messages must have non-empty content")
            return set()
        if not isinstance(content, list) or not content:
            raise RequestRejected(400, f"{where}.content: Input should be a string or a list")
        tool_uses: set[str] = set()
        seen_other = False
        for number, block in enumerate(content):
            at = f"{where}.content.{number}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                if not isinstance(block.get("text"), str) or not block["text"]:
                    raise RequestRejected(400, f"{at}: text content blocks must be non-empty")
                seen_other = True
            elif kind == "image":
                self.check_image(at, block.get("source"))
                seen_other = True
            elif kind == "document":
                self.check_document(at, block.get("source"))
                seen_other = True
            elif kind == "tool_use":
                if role != "assistant":
                    raise RequestRejected(400, f"{at}: tool_use blocks belong in assistant turns")
                if not block.get("id") or not block.get("name"):
                    raise RequestRejected(400, f"{at}: tool_use needs an id and a name")
                if not isinstance(block.get("input"), dict):
                    raise RequestRejected(400, f"{at}.input: Input should be an object")
                tool_uses.add(block["id"])
            elif kind == "tool_result":
                if role != "user":
                    raise RequestRejected(400, f"{at}: tool_result blocks belong in user turns")
                if seen_other:
                    raise RequestRejected(
                        400, f"{at}: tool_result blocks must come first in the user message"
                    )
                if block.get("tool_use_id") not in previous_tool_uses:
                    raise RequestRejected(
                        400,
                        f"{at}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a "
                        "corresponding `tool_use` block in the previous message.",
                    )
            else:
                raise RequestRejected(400, f"{at}.type: unknown content block type {kind!r}")
        return tool_uses

    def check_image(self, at: str, source: Any) -> None:
        if not isinstance(source, dict):
            raise RequestRejected(400, f"{at}.source: Field required")
        if source.get("type") == "base64":
            if source.get("media_type") not in IMAGE_MEDIA_TYPES:
                raise RequestRejected(
                    400, f"{at}.source.media_type: Input should be one of {IMAGE_MEDIA_TYPES}"
                )
            if not isinstance(source.get("data"), str) or not source["data"]:
                raise RequestRejected(400, f"{at}.source.data: Field required")
        elif source.get("type") == "url":
            if not str(source.get("url") or "").startswith(("https://", "http://")):
                raise RequestRejected(400, f"{at}.source.url: Input should be a valid URL")
        else:
            raise RequestRejected(400, f"{at}.source.type: Input should be 'base64' or 'url'")

    # --- the answer ----------------------------------------------------------

    @staticmethod
    def texts_of(content: Any) -> list[str]:
        """Return the texts in CONTENT: text blocks and tool results, in order."""
        if isinstance(content, str):
            return [content]
        texts: list[str] = []
        for block in content or []:
            if block.get("type") == "text":
                texts.append(block["text"])
            elif block.get("type") == "tool_result":
                texts.extend(FakeAnthropic.texts_of(block.get("content") or ""))
        return texts

    def input_tokens(self, body: dict[str, Any]) -> int:
        system = body.get("system") or ""
        if isinstance(system, list):
            system = " ".join(block.get("text", "") for block in system)
        words = count_tokens(system)
        for message in body["messages"]:
            words += sum(count_tokens(text) for text in self.texts_of(message.get("content")))
        return words

    def last_user_text(self, body: dict[str, Any]) -> str:
        last = next(m for m in reversed(body["messages"]) if m["role"] == "user")
        content = last.get("content")
        if isinstance(content, list):
            own = [b["text"] for b in content if b.get("type") == "text"]
            if own:
                return " ".join(own)
        return " ".join(self.texts_of(content))

    def compose(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """Return the whole ``message`` object answering BODY."""
        said = self.last_user_text(body)
        content: list[dict[str, Any]] = []
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            content.append(
                {"type": "thinking", "thinking": f"Thinking about: {said}", "signature": "sig_fake"}
            )
        stop_reason, stop_sequence = "end_turn", None
        choice = body.get("tool_choice") or {}
        calls = [
            call for line in said.splitlines() if (call := self.tool_call(body, line)) is not None
        ]
        forced = self.forced_call(body, choice, said)
        if forced is not None and not (choice.get("type") == "any" and calls):
            calls = [forced]
        if choice.get("disable_parallel_tool_use") is True:
            calls = calls[:1]
        if choice.get("type") == "none":
            calls = []
        if calls:
            if forced is None:
                # Claude may say a word first; a forced tool_choice prefills the call instead.
                content.append({"type": "text", "text": f"Calling {calls[0][0]}."})
            for name, arguments in calls:
                content.append(
                    {
                        "type": "tool_use",
                        "id": f"toolu_{uuid.uuid4().hex[:24]}",
                        "name": name,
                        "input": arguments,
                    }
                )
            stop_reason = "tool_use"
        else:
            text = f"You said: {said}"
            for sequence in body.get("stop_sequences") or []:
                if sequence and sequence in text:
                    text, stop_reason, stop_sequence = (
                        text[: text.index(sequence)],
                        "stop_sequence",
                        sequence,
                    )
                    break
            words = text.split(" ")
            if len([w for w in words if w]) > body["max_tokens"]:
                text, stop_reason, stop_sequence = (
                    " ".join(words[: body["max_tokens"]]),
                    "max_tokens",
                    None,
                )
            content.append({"type": "text", "text": text})
        output = sum(
            count_tokens(b["text"])
            if b["type"] == "text"
            else count_tokens(b["thinking"])
            if b["type"] == "thinking"
            else count_tokens(json.dumps(b["input"]))
            for b in content
        )
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": self.input_tokens(body), "output_tokens": output},
        }

    @staticmethod
    def forced_call(
        body: dict[str, Any], choice: dict[str, Any], said: str
    ) -> tuple[str, dict[str, Any]] | None:
        """Return the call a forcing ``tool_choice`` makes: the named (or first) tool, its input an instance of its schema."""
        tools = {tool["name"]: tool for tool in body.get("tools") or []}
        if choice.get("type") == "tool":
            tool = tools[choice["name"]]  # check_options made sure it is offered
        elif choice.get("type") == "any" and tools:
            tool = next(iter(tools.values()))
        else:
            return None
        value = schema_instance(tool["input_schema"], said)
        return tool["name"], value if isinstance(value, dict) else {}

    @staticmethod
    def tool_call(body: dict[str, Any], said: str) -> tuple[str, dict[str, Any]] | None:
        """Return (tool name, input) when SAID asks to ``call <tool> <json>`` a given tool."""
        names = {tool["name"] for tool in body.get("tools") or []}
        parts = said.strip().split(" ", 2)
        if len(parts) < 2 or parts[0] != "call" or parts[1] not in names:
            return None
        try:
            arguments = json.loads(parts[2]) if len(parts) == 3 else {}
        except ValueError:
            return None
        return (parts[1], arguments) if isinstance(arguments, dict) else None

    # --- routes --------------------------------------------------------------

    def handle_messages(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        try:
            self.check_headers(handler)
            self.check_body(body)
            model = self.resolve_model(body.get("model"))
        except RequestRejected as exc:
            self.reject(handler, exc)
            return
        overload = self.last_user_text(body).strip() == MID_STREAM_OVERLOAD
        if not body.get("stream"):
            if overload:
                self.reject(handler, RequestRejected(529, "Overloaded"))
                return
            message = self.compose(body, model)
            self.spend(message["usage"]["input_tokens"], message["usage"]["output_tokens"])
            if fault is not None and fault.malformed:
                handler.send_raw(200, b'{"id": "msg_broken", "content": [')
                return
            handler.send_json(200, message)
            return
        message = self.compose(body, model)
        if overload:
            pieces = self.overloaded_events(message)
        else:
            self.spend(message["usage"]["input_tokens"], message["usage"]["output_tokens"])
            pieces = self.events(message)
        handler.stream_pieces(
            pieces, content_type="text/event-stream", fault=fault, interval=self.stream_interval
        )

    def handle_count_tokens(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        """Answer ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, counted the fakes' way.

        The body is checked as for ``/v1/messages`` without ``max_tokens``,
        which the real endpoint does not take (nor ``stream``, ``metadata``
        or the sampling options): any of them is a 400, as an unknown field is.
        """
        try:
            self.check_headers(handler)
            if not isinstance(body, dict):
                raise RequestRejected(400, "The request body is not valid JSON.")
            allowed = {"model", "messages", "system", "tools", "tool_choice", "thinking"}
            for key in body:
                if key not in allowed:
                    raise RequestRejected(400, f"{key}: Extra inputs are not permitted")
            self.check_body({**body, "max_tokens": 1})
            self.resolve_model(body.get("model"))
        except RequestRejected as exc:
            self.reject(handler, exc)
            return
        tools = sum(count_tokens(json.dumps(tool)) for tool in body.get("tools") or [])
        handler.send_json(200, {"input_tokens": self.input_tokens(body) + tools})

    def handle_models(self, handler: FakeHandler, body: Any, fault: Fault | None) -> None:
        try:
            self.check_headers(handler)
        except RequestRejected as exc:
            self.reject(handler, exc)
            return
        query = parse_qs(urlsplit(handler.path).query)
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            self.reject(handler, RequestRejected(400, "limit: Input should be between 1 and 1000"))
            return
        ids = [m[0] for m in self.models]
        start = 0
        if "after_id" in query:
            after = query["after_id"][0]
            start = ids.index(after) + 1 if after in ids else len(ids)
        end = start + limit
        if "before_id" in query and "after_id" not in query:
            before = query["before_id"][0]
            end = ids.index(before) if before in ids else 0
            start = max(0, end - limit)
        page = self.models[start:end]
        handler.send_json(
            200,
            {
                "data": [
                    {"type": "model", "id": id_, "display_name": name, "created_at": created}
                    for id_, name, created in page
                ],
                "has_more": end < len(self.models),
                "first_id": page[0][0] if page else None,
                "last_id": page[-1][0] if page else None,
            },
        )

    # --- the event stream ----------------------------------------------------

    @staticmethod
    def sse(event: str, data: dict[str, Any]) -> bytes:
        return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()

    def start_events(self, message: dict[str, Any]) -> Iterator[bytes]:
        """Yield ``message_start`` and a ``ping``, as the real stream opens."""
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1},
        }
        yield self.sse("message_start", {"type": "message_start", "message": start})
        yield self.sse("ping", {"type": "ping"})

    def block_events(self, index: int, block: dict[str, Any]) -> Iterator[bytes]:
        """Yield one content block: start, its deltas (word by word), stop."""
        if block["type"] == "thinking":
            start: dict[str, Any] = {"type": "thinking", "thinking": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": block["thinking"]},
                {"type": "signature_delta", "signature": block["signature"]},
            ]
        elif block["type"] == "text":
            start = {"type": "text", "text": ""}
            words = block["text"].split(" ")
            deltas = [
                {"type": "text_delta", "text": word if n == 0 else " " + word}
                for n, word in enumerate(words)
            ]
        else:
            start = {**block, "input": {}}
            text = json.dumps(block["input"])
            third = max(1, len(text) // 3)
            deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                {"type": "input_json_delta", "partial_json": text[i : i + third]}
                for i in range(0, len(text), third)
            ]
        yield self.sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        for delta in deltas:
            yield self.sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield self.sse("content_block_stop", {"type": "content_block_stop", "index": index})

    def events(self, message: dict[str, Any]) -> Iterator[bytes]:
        """Yield the whole documented event sequence for MESSAGE."""
        yield from self.start_events(message)
        for index, block in enumerate(message["content"]):
            yield from self.block_events(index, block)
        yield self.sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": message["stop_reason"],
                    "stop_sequence": message["stop_sequence"],
                },
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
        yield self.sse("message_stop", {"type": "message_stop"})

    def overloaded_events(self, message: dict[str, Any]) -> Iterator[bytes]:
        """Yield the start of MESSAGE, then an ``error`` event where ``message_stop`` should be."""
        yield from self.start_events(message)
        for n, piece in enumerate(self.block_events(0, message["content"][0])):
            if n == 3:
                break
            yield piece
        yield self.sse(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )


def main(argv: list[str] | None = None) -> None:
    """Serve a FakeAnthropic until interrupted."""
    parser = argparse.ArgumentParser(description="A fake Anthropic Messages API on loopback.")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument(
        "--stream-interval", type=float, default=0.0, help="seconds between streamed events"
    )
    parser.add_argument(
        "--api-key", action="append", help="a key to accept (repeatable; default: any key)"
    )
    args = parser.parse_args(argv)
    fake = FakeAnthropic(
        args.port,
        stream_interval=args.stream_interval,
        api_keys=set(args.api_key) if args.api_key else None,
    ).start()
    serve_until_stopped([fake], f"Fake Anthropic listening on {fake.url} (Ctrl-C to stop)")


if __name__ == "__main__":
    main()
