"""FakeAnthropic: Anthropic's Messages API on loopback, written from its API reference.

It serves ``POST /v1/messages`` (whole and as the documented SSE event
sequence) and ``GET /v1/models``, and checks requests the way the real API
does: ``x-api-key`` and ``anthropic-version`` headers, a ``model`` it knows,
``max_tokens``, a ``system`` prompt at the top level rather than among the
messages, roles that alternate starting with ``user``, well-formed content
blocks (text, image with a base64 or url source, tool_use in assistant
turns, tool_result in user turns answering the tool_use just before).
Errors use Anthropic's body: ``{"type": "error", "error": {"type", "message"}}``.

Run it alone with ``python -m providers.testing.fake_anthropic --port 9002``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from providers.testing.fake_server import FakeHandler, FakeUpstream, Fault, count_tokens

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
        stop_reason, stop_sequence = "end_turn", None
        call = self.tool_call(body, said)
        if call is not None:
            name, arguments = call
            content.append({"type": "text", "text": f"Calling {name}."})
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
            count_tokens(b["text"]) if b["type"] == "text" else count_tokens(json.dumps(b["input"]))
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
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
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
    print(f"Fake Anthropic listening on {fake.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
