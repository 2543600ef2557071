"""Plain data types that travel between Echo and its provider plugins.

They are dataclasses with no Django in them, so a plugin and its tests need
nothing but this module, ``providers.base`` and ``providers.errors``.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]

#: The content part type of a document (a PDF or a plain text) in a message:
#: ``{"type": "document", "document": {"source": {...}, "title"?, "context"?}}``,
#: the document as Anthropic's ``document`` block describes it, with a
#: ``source`` of type ``base64`` (``application/pdf``), ``text``
#: (``text/plain``) or ``url`` (a PDF's address).
DOCUMENT_PART = "document"
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


def answer_id() -> str:
    """Return 32 new hex digits for the id of an answer, a message or a request.

    Unique, not secret: the ids name answers in logs and clients, never grant
    anything. ``random`` makes them without a system call (``uuid4`` asks the
    kernel for 16 bytes each time: a few percent of a chat call under load),
    and is reseeded in each forked worker.
    """
    return f"{random.getrandbits(128):032x}"


@dataclass(slots=True)
class ToolCall:
    """One function call the model asked for; ARGUMENTS is the JSON text it produced."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass(slots=True)
class ChatMessage:
    """One turn of a conversation.

    CONTENT is text, or a list of parts in the OpenAI shape
    (``{"type": "text", "text": ...}``, ``{"type": "image_url", ...}``) for
    multimodal messages.
    """

    role: str
    content: str | list[dict[str, Any]] = ""
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """Return the text of the message, joining the text parts of a multimodal one."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


@dataclass(slots=True)
class ChatRequest:
    """A chat completion request in Echo's common shape.

    The options follow OpenAI's spelling; each is None when the client did
    not set it. A plugin honours an option only if it names it in
    ``AbstractAIProvider.supported_options``: the router refuses (or skips,
    on failover) a provider that would have to drop one.

    - ``response_format``: ``{"type": "text"}``, ``{"type": "json_object"}``
      or ``{"type": "json_schema", "json_schema": {"name", "schema",
      "strict"?}}``: the answer's text must be JSON (an instance of the schema).
    - ``seed``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``
      (token id as a string -> -100..100), ``logprobs``, ``top_logprobs``:
      OpenAI's sampling options.
    - ``parallel_tool_calls``: False asks for at most one tool call per turn
      (Anthropic's ``tool_choice.disable_parallel_tool_use``).
    - ``top_k``: sample from the K likeliest tokens (Anthropic, Ollama).
    - ``thinking``: Anthropic's ``{"type": "enabled", "budget_tokens": N}``
      or ``{"type": "disabled"}``.
    - ``user``: the end user's id (Anthropic's ``metadata.user_id``).
    - ``n``: how many choices to answer (more than 1), for a provider that
      answers several natively; they come back in ``ChatResponse.more_choices``.
    - ``documents`` (read from the messages, not set): the kinds of the
      document parts the messages hold (``DOCUMENT_PART``), so that only a
      provider that reads documents is given them.

    METADATA is Echo's own, never a client's option.
    """

    messages: list[ChatMessage]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    parallel_tool_calls: bool | None = None
    top_k: int | None = None
    thinking: dict[str, Any] | None = None
    n: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def with_model(self, model: str | None) -> ChatRequest:
        """Return a copy of this request aimed at MODEL (shallow, as ``dataclasses.replace`` makes).

        Made twice a call on the hot path (the key's default model, then each
        attempt's route): each field assigned by name, a seventh of
        ``replace``'s cost (it calls ``__init__`` with every field by name)
        and a sixth of a loop of ``getattr``/``setattr``. A field added to the
        class must be added here: ``tests/providers/test_types.py`` fails otherwise.
        """
        copy = object.__new__(ChatRequest)
        copy.messages = self.messages
        copy.model = model
        copy.temperature = self.temperature
        copy.max_tokens = self.max_tokens
        copy.top_p = self.top_p
        copy.stop = self.stop
        copy.stream = self.stream
        copy.tools = self.tools
        copy.tool_choice = self.tool_choice
        copy.user = self.user
        copy.response_format = self.response_format
        copy.seed = self.seed
        copy.presence_penalty = self.presence_penalty
        copy.frequency_penalty = self.frequency_penalty
        copy.logprobs = self.logprobs
        copy.top_logprobs = self.top_logprobs
        copy.logit_bias = self.logit_bias
        copy.parallel_tool_calls = self.parallel_tool_calls
        copy.top_k = self.top_k
        copy.thinking = self.thinking
        copy.n = self.n
        copy.metadata = self.metadata
        return copy

    @property
    def documents(self) -> list[str] | None:
        """Return the source types of the messages' document parts, in order; None when there are none."""
        kinds = [
            str(part.get("document", {}).get("source", {}).get("type"))
            for message in self.messages
            if not isinstance(message.content, str)
            for part in message.content
            if part.get("type") == DOCUMENT_PART
        ]
        return kinds or None


#: The ChatRequest fields that are a client's options (see ``ChatRequest``).
OPTION_FIELDS: tuple[str, ...] = (
    "temperature",
    "max_tokens",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "user",
    "response_format",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "parallel_tool_calls",
    "top_k",
    "thinking",
    "n",
    "documents",
)


@dataclass(slots=True)
class Usage:
    """Token counts of one completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ChatResponse:
    """A whole (non-streamed) answer.

    MORE_CHOICES holds the choices after the first (OpenAI's ``choices[1:]``)
    when the request asked for ``n`` of them; their usage is in this one's.
    """

    content: str
    model: str
    provider: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    tool_calls: list[ToolCall] | None = None
    id: str = field(default_factory=lambda: f"chat-{answer_id()}")
    created: int = field(default_factory=lambda: int(time.time()))
    metadata: dict[str, Any] = field(default_factory=dict)
    more_choices: list[ChatResponse] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the answer as JSON-ready data (written out: ``asdict`` deep-copies, per request)."""
        return {
            "content": self.content,
            "model": self.model,
            "provider": self.provider,
            "usage": self.usage.as_dict(),
            "finish_reason": self.finish_reason,
            "tool_calls": (
                None
                if self.tool_calls is None
                else [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls
                ]
            ),
            "id": self.id,
            "created": self.created,
            "metadata": dict(self.metadata),
            "more_choices": [choice.as_dict() for choice in self.more_choices],
        }


@dataclass(slots=True)
class EmbeddingRequest:
    """A request for embedding vectors.

    INPUT is texts, or token-id arrays (OpenAI's form, which only a provider
    declaring ``token_input`` in ``AbstractAIProvider.embedding_options`` can
    read); DIMENSIONS asks for shorter vectors (``dimensions`` declared).
    """

    input: list[str] | list[list[int]]
    model: str | None = None
    dimensions: int | None = None

    @property
    def is_tokens(self) -> bool:
        """Return whether the input is token-id arrays rather than texts."""
        return bool(self.input) and not isinstance(self.input[0], str)


@dataclass(slots=True)
class EmbeddingResponse:
    """Embedding vectors in input order, the model that made them and the tokens they cost."""

    vectors: list[list[float]]
    model: str | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass(slots=True)
class StreamingChunk:
    """One piece of a streamed answer.

    The last chunk of a stream has ``is_final=True`` and carries the
    FINISH_REASON and, when the provider reports it, the USAGE.
    """

    content: str = ""
    is_final: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: list[ToolCall] | None = None
    model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class HealthStatus:
    """The outcome of one health check."""

    available: bool
    models: list[str] = field(default_factory=list)
    response_time_ms: float | None = None
    error: str | None = None
    checked_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
