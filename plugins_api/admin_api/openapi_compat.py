"""The OpenAPI description of what SDK users call: the ``/v1`` compatible APIs and ``/metrics``.

These are async Django views that drf-spectacular does not see, so
``document_compat_endpoints`` (called by the postprocessing hook
``openapi.document_chat_endpoint``) adds them to the generated schema by hand:
``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{model_id}``,
``POST /v1/embeddings`` and ``/v1/responses`` (OpenAI's wire format, tag
``openai``), ``POST /v1/messages`` and ``/v1/messages/count_tokens``
(Anthropic's, tag ``anthropic``), and ``GET /metrics`` (tag ``metrics``).

The schemas say what the parsers in ``plugins_api.compat`` read, no more:
``required`` where a parser refuses a field's absence, ``additionalProperties``
false where it refuses unknown fields and true where it ignores them. Each
API's errors keep that API's own shape. The request examples are real calls:
the tests run them through Echo's own parsers.
"""

from __future__ import annotations

from typing import Any

from plugins_api.edge.chat_requests import (
    CLIENT_FORBIDDEN_FIELDS,
    MAX_CONTENT_PARTS,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_NAME_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_THINKING_BUDGET,
    MAX_TOOLS,
    MAX_TOP_K,
    MAX_TOP_LOGPROBS,
    MIN_THINKING_BUDGET,
    SCHEMA_NAME_LENGTH,
    SEED_RANGE,
)

JSON = "application/json"
EVENT_STREAM = "text/event-stream"

#: The tags of the operations added here, with what the docs say about each.
TAGS = [
    {
        "name": "openai",
        "description": (
            "OpenAI's API in front of any provider: point an OpenAI SDK's `base_url` at "
            "`<echo>/v1` and use an Echo client key as its API key. `model` is "
            "`provider/model` (as `GET /v1/models` lists it) or a bare name for the routing "
            "default. Errors have OpenAI's shape."
        ),
    },
    {
        "name": "anthropic",
        "description": (
            "Anthropic's Messages API in front of any provider: point an Anthropic SDK's "
            "`base_url` at `<echo>` and use an Echo client key as its API key (sent as "
            "`x-api-key`). Errors have Anthropic's shape."
        ),
    },
    {
        "name": "metrics",
        "description": "Prometheus metrics, for an admin key or a staff login.",
    },
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _number(low: float, high: float, description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high, "description": description}


def _whole(description: str, low: int = 1, high: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "description": description}
    if high is not None:
        schema["maximum"] = high
    return schema


_MODEL = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_LENGTH,
    "description": (
        "`provider/model` (as `GET /v1/models` lists it), or a bare name for the routing default."
    ),
}
_FORBIDDEN = (
    "Clients cannot set upstream settings: a body holding any of "
    + ", ".join(f"`{name}`" for name in CLIENT_FORBIDDEN_FIELDS)
    + " is refused (400 naming it)."
)
_UNSUPPORTED = (
    "An option the provider the model routes to cannot honour is refused with a 400 naming "
    "it (`unsupported_option`), never dropped; a fallback that could not honour it is "
    "skipped."
)
_ANSWERED_BY = {
    "x-echo-provider": {
        "description": "The provider that answered (or failed).",
        "schema": {"type": "string"},
    },
    "x-echo-model": {"description": "The model that answered.", "schema": {"type": "string"}},
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before asking again.",
        "schema": {"type": "integer"},
    },
}

# --- errors ------------------------------------------------------------------------

_OPENAI_ERROR = {
    "type": "object",
    "description": "OpenAI's error shape.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": _string(
                    "`invalid_request_error`, `requests` or `tokens` (rate limits), "
                    "`insufficient_quota` (spent budget), `server_error`."
                ),
                "param": _string(
                    "The dotted path of the field at fault (`messages.0.content`), or null.",
                    nullable=True,
                ),
                "code": _string(
                    "e.g. `invalid_api_key`, `key_expired`, `model_not_found`, "
                    "`model_not_allowed`, `unsupported_option`, `rate_limit_exceeded`, "
                    "`budget_exceeded`, `request_too_large`, or null.",
                    nullable=True,
                ),
            },
        }
    },
    "example": {
        "error": {
            "message": "Must be a number between 0 and 2.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        }
    },
}
_ANTHROPIC_ERROR = {
    "type": "object",
    "description": "Anthropic's error shape.",
    "required": ["type", "error"],
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": _string(
                    "`invalid_request_error`, `authentication_error`, `permission_error`, "
                    "`not_found_error`, `request_too_large`, `rate_limit_error`, `api_error`, "
                    "`overloaded_error`."
                ),
                "message": _string("For a bad field: `<dotted path>: <problem>`."),
            },
        },
    },
    "example": {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required."},
    },
}

#: What each status means on the compatible APIs (each API words its own body).
_STATUSES = {
    "400": "A field is wrong (named), or the provider cannot honour an option the call sets.",
    "401": "No key, or an unknown, revoked or expired one.",
    "403": "The key may not chat, or may not use this model (`model_not_allowed`).",
    "404": "No such model or provider.",
    "409": "The provider is configured but does not serve (disabled, or failed to start).",
    "413": "The body is larger than `ECHO_MAX_BODY_BYTES`.",
    "422": "The provider rejected the request.",
    "429": (
        "Rate limited (the key's limits or upstream), or the key's budget is spent "
        "(`x-should-retry: false`); see `Retry-After`."
    ),
    "502": "The upstream failed or answered nonsense.",
    "503": "The upstream is unavailable, or Echo is shutting down.",
    "504": "The upstream did not answer in time.",
}


def _errors(schema: str, *codes: str) -> dict[str, Any]:
    """Return the error responses CODES, each in SCHEMA's shape."""
    responses: dict[str, Any] = {}
    for code in codes:
        response: dict[str, Any] = {
            "description": _STATUSES[code],
            "content": {JSON: {"schema": _ref(schema)}},
        }
        if code == "429":
            response["headers"] = _RETRY_AFTER
        responses[code] = response
    return responses


_CHAT_ERRORS = ("400", "401", "403", "404", "409", "413", "422", "429", "502", "503", "504")

# --- OpenAI: chat completions -----------------------------------------------------

_OPENAI_PART = {
    "type": "object",
    "description": (
        "A content part. user: `text`, `image_url`, `input_audio`, `file`; system and tool: "
        "`text`; assistant: `text`, `refusal`."
    ),
    "required": ["type"],
    "properties": {
        "type": {
            "type": "string",
            "enum": ["text", "image_url", "input_audio", "file", "refusal"],
        },
        "text": {"type": "string"},
        "refusal": {"type": "string"},
        "image_url": {
            "oneOf": [
                {"type": "string", "description": "The URL (or data URL) alone."},
                {
                    "type": "object",
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string", "minLength": 1},
                        "detail": {"type": "string", "enum": ["auto", "low", "high"]},
                    },
                },
            ]
        },
        "input_audio": {
            "type": "object",
            "required": ["data", "format"],
            "properties": {"data": {"type": "string"}, "format": {"type": "string"}},
        },
        "file": {
            "type": "object",
            "description": "Needs `file_data` or `file_id`.",
            "properties": {
                "file_data": {"type": "string"},
                "file_id": {"type": "string"},
                "filename": {"type": "string"},
            },
        },
    },
}
_OPENAI_TOOL_CALL = {
    "type": "object",
    "required": ["id", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"], "default": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "arguments": _string("The arguments as JSON text."),
            },
        },
    },
}
_OPENAI_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {
            "type": "string",
            "enum": ["system", "developer", "user", "assistant", "tool"],
            "description": "`developer` counts as `system`.",
        },
        "content": {
            "nullable": True,
            "description": "Text, or content parts; null is empty text.",
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "maxItems": MAX_CONTENT_PARTS,
                    "items": _ref("OpenAIContentPart"),
                },
            ],
        },
        "name": {"type": "string"},
        "tool_calls": {
            "type": "array",
            "description": "Only on assistant messages.",
            "items": _ref("OpenAIToolCall"),
        },
        "tool_call_id": _string("Required on a `tool` message: the call it answers."),
    },
}
_OPENAI_TOOL = {
    "type": "object",
    "required": ["function"],
    "properties": {
        "type": {"type": "string", "enum": ["function"], "default": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "description": {"type": "string"},
                "parameters": {"type": "object", "description": "A JSON schema."},
                "strict": {"type": "boolean"},
            },
        },
    },
}
_RESPONSE_FORMAT = {
    "type": "object",
    "description": (
        '`{"type": "text"}` (the default), `{"type": "json_object"}`, or '
        '`{"type": "json_schema", "json_schema": {"name", "schema", "strict", '
        '"description"}}`; the schema may nest 32 levels and hold 10,000 values.'
    ),
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
        "json_schema": {
            "type": "object",
            "description": "Required with type `json_schema`, refused with the others.",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": f"^[A-Za-z0-9_-]{{1,{SCHEMA_NAME_LENGTH}}}$",
                },
                "description": {"type": "string"},
                "schema": {"type": "object", "description": "A JSON schema."},
                "strict": {"type": "boolean"},
            },
        },
    },
}
_THINKING = {
    "type": "object",
    "description": (
        'Extended thinking: `{"type": "enabled", "budget_tokens": N}` or `{"type": "disabled"}`.'
    ),
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "enum": ["enabled", "disabled"]},
        "budget_tokens": _whole(
            "Required when enabled; refused when disabled.",
            MIN_THINKING_BUDGET,
            MAX_THINKING_BUDGET,
        ),
    },
}
_STOP = {
    "description": f"One stop sequence, or at most {MAX_STOP_SEQUENCES}.",
    "oneOf": [
        {"type": "string"},
        {"type": "array", "maxItems": MAX_STOP_SEQUENCES, "items": {"type": "string"}},
    ],
}
_OPTION_NOTE = f" {_UNSUPPORTED}"
_COMPLETION_REQUEST = {
    "type": "object",
    "description": (
        "OpenAI's chat completion body. Fields Echo does not read are ignored. "
        f"{_FORBIDDEN} {_UNSUPPORTED}"
    ),
    "required": ["model", "messages"],
    "additionalProperties": True,
    "properties": {
        "model": _MODEL,
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_MESSAGES,
            "items": _ref("OpenAIChatMessage"),
        },
        "stream": {"type": "boolean", "default": False},
        "stream_options": {
            "type": "object",
            "properties": {
                "include_usage": {
                    "type": "boolean",
                    "description": "End the stream with a usage chunk (`choices: []`).",
                }
            },
        },
        "n": {
            "type": "integer",
            "minimum": 1,
            "maximum": 8,
            "description": (
                "How many choices: openai answers them in one call; other providers (and every "
                "stream) get n calls at once, merged, streamed chunks tagged by `choices[].index`."
            ),
        },
        "temperature": _number(0, 2, "Sampling temperature."),
        "top_p": _number(0, 1, "Nucleus sampling."),
        "max_tokens": _whole("Longest answer, in tokens."),
        "max_completion_tokens": _whole("OpenAI's newer name for `max_tokens`; it wins."),
        "stop": _STOP,
        "tools": {
            "type": "array",
            "maxItems": MAX_TOOLS,
            "items": _ref("OpenAITool"),
        },
        "tool_choice": {
            "description": "`none`, `auto`, `required`, or one function.",
            "oneOf": [
                {"type": "string", "enum": ["none", "auto", "required"]},
                {
                    "type": "object",
                    "required": ["type", "function"],
                    "properties": {
                        "type": {"type": "string", "enum": ["function"]},
                        "function": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string", "minLength": 1}},
                        },
                    },
                },
            ],
        },
        "response_format": _ref("OpenAIResponseFormat"),
        "seed": {
            "type": "integer",
            "format": "int64",
            "minimum": SEED_RANGE[0],
            "maximum": SEED_RANGE[1],
            "description": "Ask for repeatable sampling." + _OPTION_NOTE,
        },
        "presence_penalty": _number(-2, 2, "Penalise tokens already present." + _OPTION_NOTE),
        "frequency_penalty": _number(-2, 2, "Penalise tokens by their frequency." + _OPTION_NOTE),
        "logprobs": {
            "type": "boolean",
            "description": "Return the answer's log probabilities." + _OPTION_NOTE,
        },
        "top_logprobs": _whole(
            "Alternatives per token; needs `logprobs: true`." + _OPTION_NOTE,
            0,
            MAX_TOP_LOGPROBS,
        ),
        "logit_bias": {
            "type": "object",
            "maxProperties": MAX_LOGIT_BIAS,
            "description": (
                "Token ids (digits, as strings) to biases from -100 to 100." + _OPTION_NOTE
            ),
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        },
        "parallel_tool_calls": {
            "type": "boolean",
            "description": "false: at most one tool call per answer." + _OPTION_NOTE,
        },
        "user": _string("Your end user's id, passed on where the provider takes one."),
        "top_k": _whole(
            "Echo's extension: sample from the K likeliest tokens." + _OPTION_NOTE,
            1,
            MAX_TOP_K,
        ),
        "thinking": {
            "allOf": [_ref("Thinking")],
            "description": "Echo's extension (Anthropic's field)." + _OPTION_NOTE,
        },
    },
}
COMPLETION_EXAMPLES = {
    "simple": {
        "summary": "A question",
        "value": {
            "model": "echo/echo-1",
            "messages": [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "What is Echo?"},
            ],
            "temperature": 0.2,
            "max_tokens": 128,
        },
    },
    "stream": {
        "summary": "Streamed, ending with usage",
        "value": {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "Write a haiku about gateways."}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    },
    "structured": {
        "summary": "Structured output, repeatable",
        "value": {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "Name a colour and its hex code."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "colour",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "hex": {"type": "string"}},
                        "required": ["name", "hex"],
                        "additionalProperties": False,
                    },
                },
            },
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.2,
            "logprobs": True,
            "top_logprobs": 2,
            "logit_bias": {"50256": -100},
        },
    },
    "tools": {
        "summary": "A tool call",
        "value": {
            "model": "anthropic/claude-3-5-haiku-latest",
            "messages": [{"role": "user", "content": "What's the weather in Oslo?"}],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "The weather in a city.",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                            "required": ["city"],
                        },
                    },
                }
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
        },
    },
}
_OPENAI_USAGE = {
    "type": "object",
    "properties": {
        name: {"type": "integer"} for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
_COMPLETION = {
    "type": "object",
    "description": "A `chat.completion`: one choice per `n`.",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string", "example": "chatcmpl-4c5b0d7e..."},
        "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer", "description": "Unix seconds."},
        "model": _string("`provider/model` of the answer (it may differ after a failover)."),
        "choices": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string", "enum": ["assistant"]},
                            "content": _string(
                                "null when the answer only calls tools.", nullable=True
                            ),
                            "refusal": {"type": "string", "nullable": True},
                            "tool_calls": {"type": "array", "items": _ref("OpenAIToolCall")},
                        },
                    },
                    "logprobs": {
                        "type": "object",
                        "nullable": True,
                        "description": "With `logprobs: true`, from providers that give them.",
                    },
                    "finish_reason": {
                        "type": "string",
                        "enum": ["stop", "length", "tool_calls", "content_filter"],
                    },
                },
            },
        },
        "usage": _ref("OpenAIUsage"),
    },
    "example": {
        "id": "chatcmpl-4c5b0d7e9f2a4b6c8d0e1f2a3b4c5d6e",
        "object": "chat.completion",
        "created": 1767225600,
        "model": "echo/echo-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Echo: What is Echo?", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    },
}
_COMPLETION_CHUNK = {
    "type": "object",
    "description": "A `chat.completion.chunk`: one piece of the streamed answer.",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion.chunk"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "description": "One choice; empty in the closing usage chunk.",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "delta": {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string", "enum": ["assistant"]},
                            "content": {"type": "string"},
                            "tool_calls": {
                                "type": "array",
                                "description": "Whole calls, each with its `index`.",
                                "items": _ref("OpenAIToolCall"),
                            },
                        },
                    },
                    "logprobs": {"type": "object", "nullable": True},
                    "finish_reason": {"type": "string", "nullable": True},
                },
            },
        },
        "usage": {
            "allOf": [_ref("OpenAIUsage")],
            "nullable": True,
            "description": "Only in the last chunk, with `stream_options.include_usage`.",
        },
    },
}
_COMPLETION_STREAM = """With `stream: true` the answer is `text/event-stream`: `data:` lines \
holding `chat.completion.chunk` objects, then `data: [DONE]`:

```
data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,\
"model":"echo/echo-1","choices":[{"index":0,"delta":{"role":"assistant","content":""},\
"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-1",...,"choices":[{"index":0,"delta":{"content":"Echo: "},...}]}

data: {"id":"chatcmpl-1",...,"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

data: {"id":"chatcmpl-1",...,"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5,\
"total_tokens":14}}

data: [DONE]
```

The first chunk carries the role, then one chunk per piece of text, tool calls whole (one \
delta each, with their `index`), a chunk with the `finish_reason`, the usage chunk when \
`stream_options.include_usage` is set, and `[DONE]`. A failure before the first chunk is an \
ordinary error response with its honest status; after it, the stream ends with one \
`data: {"error": {...}}` event (OpenAI's error shape) and no `[DONE]`, which the OpenAI SDK \
raises as `APIError`. Retries and failover happen before the first chunk only."""

# --- OpenAI: models and embeddings ------------------------------------------------

_MODEL_OBJECT = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": _string("`provider/model`: send it back as `model` as is."),
        "object": {"type": "string", "enum": ["model"]},
        "created": {
            "type": "integer",
            "description": "When the provider was loaded (Unix seconds).",
        },
        "owned_by": _string("The provider's name."),
    },
    "example": {"id": "echo/echo-1", "object": "model", "created": 1767225600, "owned_by": "echo"},
}
_MODEL_LIST = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": _ref("OpenAIModel")},
    },
}
_EMBEDDING_REQUEST = {
    "type": "object",
    "description": f"Text in, vectors out. Fields Echo does not read are ignored. {_FORBIDDEN}",
    "required": ["model", "input"],
    "additionalProperties": True,
    "properties": {
        "model": _MODEL,
        "input": {
            "description": (
                "Text, a non-empty list of texts, or token ids (one array, or a list of arrays: "
                "what LangChain's OpenAIEmbeddings sends; openai only, other providers 400)."
            ),
            "oneOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                },
            ],
        },
        "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
        "dimensions": {
            "type": "integer",
            "minimum": 1,
            "maximum": 65536,
            "nullable": True,
            "description": "The vectors' length: openai only, other providers 400.",
        },
    },
    "example": {"model": "openai/text-embedding-3-small", "input": ["first text", "second text"]},
}
_EMBEDDING_LIST = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "object": {"type": "string", "enum": ["embedding"]},
                    "index": {"type": "integer"},
                    "embedding": {
                        "description": "Floats, or base64 of little-endian float32s.",
                        "oneOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string", "format": "byte"},
                        ],
                    },
                },
            },
        },
        "model": {"type": "string"},
        "usage": {
            "type": "object",
            "description": "Always 0: Echo's providers report no embedding tokens.",
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}

# --- Anthropic: messages ------------------------------------------------------------

_ANTHROPIC_BLOCK = {
    "type": "object",
    "description": (
        "A content block. user: `text`, `image` (source `base64` or `url`), `tool_result`; "
        "assistant: `text`, `tool_use` (`thinking` blocks are skipped); system and tool "
        "results: `text` (a tool result's images are checked, then left out)."
    ),
    "required": ["type"],
    "properties": {
        "type": {
            "type": "string",
            "enum": ["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"],
        },
        "text": {"type": "string"},
        "source": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["base64", "url"]},
                "media_type": {
                    "type": "string",
                    "enum": ["image/jpeg", "image/png", "image/gif", "image/webp"],
                },
                "data": {"type": "string"},
                "url": {"type": "string"},
            },
        },
        "id": {"type": "string"},
        "name": {"type": "string"},
        "input": {"type": "object"},
        "tool_use_id": {"type": "string"},
        "content": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object", "required": ["type"]}},
            ]
        },
        "is_error": {"type": "boolean"},
    },
}
_ANTHROPIC_CONTENT = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "maxItems": MAX_CONTENT_PARTS, "items": _ref("AnthropicContentBlock")},
    ]
}
_ANTHROPIC_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": _ANTHROPIC_CONTENT,
    },
}
_ANTHROPIC_TOOL = {
    "type": "object",
    "description": "A client tool; Anthropic's server tools are refused.",
    "required": ["name", "input_schema"],
    "properties": {
        "type": {"type": "string", "enum": ["custom"]},
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "input_schema": {"type": "object", "description": "A JSON schema."},
    },
}
_ANTHROPIC_TOOL_CHOICE = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["auto", "any", "none", "tool"]},
        "name": _string("With type `tool`: the tool to call."),
        "disable_parallel_tool_use": {
            "type": "boolean",
            "description": "At most one tool call (not with type `none`).",
        },
    },
}
_ANTHROPIC_COMMON = {
    "model": _MODEL,
    "system": {
        "description": "The system prompt: text, or text blocks.",
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": _ref("AnthropicContentBlock")},
        ],
    },
    "messages": {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_MESSAGES,
        "items": _ref("AnthropicInputMessage"),
    },
    "tools": {"type": "array", "maxItems": MAX_TOOLS, "items": _ref("AnthropicTool")},
    "tool_choice": _ref("AnthropicToolChoice"),
}
_MESSAGES_REQUEST = {
    "type": "object",
    "description": (
        "Anthropic's Messages body. Fields Echo does not read are ignored. "
        f"{_FORBIDDEN} {_UNSUPPORTED}"
    ),
    "required": ["model", "max_tokens", "messages"],
    "additionalProperties": True,
    "properties": {
        **_ANTHROPIC_COMMON,
        "max_tokens": _whole("Longest answer, in tokens."),
        "stop_sequences": {
            "type": "array",
            "maxItems": MAX_STOP_SEQUENCES,
            "items": {"type": "string"},
        },
        "temperature": _number(0, 1, "Sampling temperature."),
        "top_p": _number(0, 1, "Nucleus sampling."),
        "top_k": _whole("Sample from the K likeliest tokens." + _OPTION_NOTE, 1, MAX_TOP_K),
        "stream": {"type": "boolean", "default": False},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "description": "Only `user_id`; any other key is refused.",
            "properties": {"user_id": {"type": "string", "nullable": True}},
        },
        "thinking": {
            "allOf": [_ref("Thinking")],
            "description": "Extended thinking." + _OPTION_NOTE,
        },
    },
}
MESSAGES_EXAMPLES = {
    "simple": {
        "summary": "A question",
        "value": {
            "model": "anthropic/claude-3-5-haiku-latest",
            "max_tokens": 256,
            "system": "Answer in one sentence.",
            "messages": [{"role": "user", "content": "What is Echo?"}],
            "temperature": 0.3,
            "top_k": 40,
            "metadata": {"user_id": "user-42"},
        },
    },
    "thinking": {
        "summary": "Streamed, with extended thinking",
        "value": {
            "model": "anthropic/claude-sonnet-4-5",
            "max_tokens": 4096,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "stream": True,
            "messages": [{"role": "user", "content": "Is 1,000,003 prime?"}],
        },
    },
    "tools": {
        "summary": "A tool result sent back",
        "value": {
            "model": "echo/echo-1",
            "max_tokens": 512,
            "tools": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "input_schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                }
            ],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "What's the weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_01",
                            "name": "get_weather",
                            "input": {"city": "Oslo"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "4 °C, rain"}
                    ],
                },
            ],
        },
    },
}
_ANTHROPIC_ANSWER = {
    "type": "object",
    "description": "A `message`: the answer's text and tool calls as content blocks.",
    "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["message"]},
        "role": {"type": "string", "enum": ["assistant"]},
        "model": _string("`provider/model` of the answer."),
        "content": {
            "type": "array",
            "items": {
                "type": "object",
                "description": "`text` (`text`) or `tool_use` (`id`, `name`, `input`).",
                "required": ["type"],
                "properties": {
                    "type": {"type": "string", "enum": ["text", "tool_use"]},
                    "text": {"type": "string"},
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "input": {"type": "object"},
                },
            },
        },
        "stop_reason": {
            "type": "string",
            "nullable": True,
            "enum": [
                "end_turn",
                "max_tokens",
                "stop_sequence",
                "tool_use",
                "pause_turn",
                "refusal",
            ],
        },
        "stop_sequence": {"type": "string", "nullable": True},
        "usage": {
            "type": "object",
            "required": ["input_tokens", "output_tokens"],
            "properties": {
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
            },
        },
    },
    "example": {
        "id": "msg_0b5c6d7e8f9a4b1c2d3e4f5a6b7c8d9e",
        "type": "message",
        "role": "assistant",
        "model": "anthropic/claude-3-5-haiku-latest",
        "content": [{"type": "text", "text": "Echo is a gateway in front of AI providers."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 14, "output_tokens": 11},
    },
}
_ANTHROPIC_EVENT_NAMES = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "error",
]
_ANTHROPIC_EVENT = {
    "type": "object",
    "description": (
        "One event's data (JSON on the wire): `message` (message_start), `index` and "
        "`content_block` (content_block_start), `index` and `delta` (`text_delta` or "
        "`input_json_delta`), `delta.stop_reason` and `usage` (message_delta), or `error`."
    ),
    "properties": {
        "type": {"type": "string", "enum": _ANTHROPIC_EVENT_NAMES},
        "message": _ref("AnthropicMessage"),
        "index": {"type": "integer"},
        "content_block": {"type": "object"},
        "delta": {"type": "object"},
        "usage": {"type": "object"},
        "error": {"type": "object"},
    },
}
_MESSAGES_STREAM = """With `stream: true` the answer is `text/event-stream`, Anthropic's \
event sequence (each event's `data` is JSON):

```
event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",\
"model":"echo/echo-1","content":[],"stop_reason":null,"stop_sequence":null,\
"usage":{"input_tokens":0,"output_tokens":0}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type":"ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Echo: hi"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},\
"usage":{"input_tokens":9,"output_tokens":5}}

event: message_stop
data: {"type":"message_stop"}
```

Per content block: `content_block_start`, `content_block_delta` (`text_delta`, or one whole \
`input_json_delta` per tool call) and `content_block_stop`. `message_start` reports the \
input tokens (the anthropic upstream's count, or Echo's estimate for other providers); \
`message_delta` carries the provider's final counts. A failure after \
the stream started is one `error` event (Anthropic's error shape), after which the stream \
ends."""

_COUNT_REQUEST = {
    "type": "object",
    "description": (
        "The body of a `/v1/messages` call without `max_tokens`. Any other field that is not "
        "null is refused (400 naming it), `thinking` included."
    ),
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": _ANTHROPIC_COMMON,
    "example": {
        "model": "anthropic/claude-3-5-haiku-latest",
        "system": "Answer in one sentence.",
        "messages": [{"role": "user", "content": "What is Echo?"}],
    },
}
_TOKEN_COUNT = {
    "type": "object",
    "required": ["input_tokens"],
    "properties": {"input_tokens": {"type": "integer", "minimum": 0}},
    "example": {"input_tokens": 14},
}

# --- OpenAI: responses ----------------------------------------------------------------

_RESPONSES_ITEM = {
    "type": "object",
    "description": (
        "An input item: a `message` (`role` user, assistant, system or developer; content "
        "text or `input_text`, `input_image`, `output_text`, `refusal` parts), a "
        "`function_call` (`call_id`, `name`, `arguments`), a `function_call_output` "
        "(`call_id`, `output`); `reasoning` items are skipped. An item with a `role` and no "
        "`type` is a message."
    ),
    "properties": {
        "type": {
            "type": "string",
            "enum": ["message", "function_call", "function_call_output", "reasoning"],
        },
        "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "maxItems": MAX_CONTENT_PARTS,
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {
                                "type": "string",
                                "enum": ["input_text", "input_image", "output_text", "refusal"],
                            },
                            "text": {"type": "string"},
                            "image_url": {"type": "string"},
                            "detail": {"type": "string", "enum": ["auto", "low", "high"]},
                        },
                    },
                },
            ]
        },
        "call_id": {"type": "string"},
        "name": {"type": "string"},
        "arguments": {"type": "string"},
        "output": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object"}},
            ]
        },
    },
}
_RESPONSES_TOOL = {
    "type": "object",
    "description": "A function tool; OpenAI's hosted tools are refused.",
    "required": ["type", "name"],
    "properties": {
        "type": {"type": "string", "enum": ["function"]},
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "parameters": {"type": "object", "description": "A JSON schema."},
        "strict": {"type": "boolean"},
    },
}
_RESPONSES_REQUEST = {
    "type": "object",
    "description": (
        "OpenAI's Responses body. Any other field that is not null is refused with a 400 "
        "naming it (structured `text.format`, `reasoning`, hosted tools, ...), never dropped."
    ),
    "required": ["model", "input"],
    "additionalProperties": False,
    "properties": {
        "model": _MODEL,
        "input": {
            "description": "Text (one user message) or a non-empty list of input items.",
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_MESSAGES,
                    "items": _ref("ResponsesInputItem"),
                },
            ],
        },
        "instructions": _string("This call's system prompt (not carried over to the next)."),
        "tools": {"type": "array", "maxItems": MAX_TOOLS, "items": _ref("ResponsesTool")},
        "tool_choice": {
            "oneOf": [
                {"type": "string", "enum": ["none", "auto", "required"]},
                {
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {
                        "type": {"type": "string", "enum": ["function"]},
                        "name": {"type": "string", "minLength": 1},
                    },
                },
            ]
        },
        "temperature": _number(0, 2, "Sampling temperature."),
        "top_p": _number(0, 1, "Nucleus sampling."),
        "max_output_tokens": _whole("Longest answer, in tokens."),
        "stream": {"type": "boolean", "default": False},
        "store": {
            "type": "boolean",
            "default": True,
            "description": "Keep the response for `previous_response_id`, GET and DELETE.",
        },
        "previous_response_id": {
            "type": "string",
            "maxLength": 64,
            "description": "Continue this key's stored response: its conversation is sent too.",
        },
        "text": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "format": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"type": {"type": "string", "enum": ["text"]}},
                }
            },
        },
        "metadata": {
            "type": "object",
            "maxProperties": 16,
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
        "user": {"type": "string"},
        "parallel_tool_calls": {"type": "boolean", "enum": [True]},
        "truncation": {"type": "string", "enum": ["disabled"]},
        "background": {"type": "boolean", "enum": [False]},
        "include": {"type": "array", "maxItems": 0, "items": {"type": "string"}},
    },
}
RESPONSES_EXAMPLES = {
    "simple": {
        "summary": "A question",
        "value": {
            "model": "openai/gpt-4o-mini",
            "instructions": "Answer in one sentence.",
            "input": "What is Echo?",
            "max_output_tokens": 128,
        },
    },
    "continue": {
        "summary": "Continuing a stored response, with a tool",
        "value": {
            "model": "echo/echo-1",
            "previous_response_id": "resp_0123456789abcdef0123456789abcdef0123456789abcdef",
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "call_01",
                    "output": "4 °C, rain",
                },
                {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]},
            ],
            "tools": [
                {
                    "type": "function",
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                }
            ],
            "metadata": {"ticket": "T-1234"},
            "stream": True,
        },
    },
}
_RESPONSE = {
    "type": "object",
    "description": (
        "A `response`: a `message` output item with one `output_text` part for the text, "
        "one `function_call` item per tool call; `incomplete` (reason `max_output_tokens`) "
        "when cut by the token limit."
    ),
    "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["response"]},
        "created_at": {"type": "integer"},
        "status": {
            "type": "string",
            "enum": ["completed", "incomplete", "in_progress", "failed"],
        },
        "error": {"type": "object", "nullable": True},
        "incomplete_details": {"type": "object", "nullable": True},
        "instructions": {"type": "string", "nullable": True},
        "max_output_tokens": {"type": "integer", "nullable": True},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "model": _string("`provider/model` of the answer."),
        "output": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "type"],
                "properties": {
                    "id": {"type": "string"},
                    "type": {"type": "string", "enum": ["message", "function_call"]},
                    "status": {"type": "string"},
                    "role": {"type": "string"},
                    "content": {"type": "array", "items": {"type": "object"}},
                    "call_id": {"type": "string"},
                    "name": {"type": "string"},
                    "arguments": {"type": "string"},
                },
            },
        },
        "previous_response_id": {"type": "string", "nullable": True},
        "store": {"type": "boolean"},
        "usage": {
            "type": "object",
            "nullable": True,
            "properties": {
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
                "input_tokens_details": {"type": "object"},
                "output_tokens_details": {"type": "object"},
            },
        },
    },
    "example": {
        "id": "resp_0123456789abcdef0123456789abcdef0123456789abcdef",
        "object": "response",
        "created_at": 1767225600,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": "Answer in one sentence.",
        "max_output_tokens": 128,
        "metadata": {},
        "model": "openai/gpt-4o-mini",
        "output": [
            {
                "id": "msg_0123456789abcdef0123456789abcdef0123456789abcdef",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": "Echo is a gateway in front of AI providers.",
                        "annotations": [],
                        "logprobs": [],
                    }
                ],
            }
        ],
        "previous_response_id": None,
        "store": True,
        "usage": {
            "input_tokens": 14,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 11,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 25,
        },
    },
}
_RESPONSES_EVENT_NAMES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "error",
    "response.failed",
]
_RESPONSES_STREAM = """With `stream: true` the answer is `text/event-stream`, OpenAI's \
event sequence, each event's `data` with its `type` and `sequence_number`: \
`response.created`, `response.in_progress`, then per output item \
`response.output_item.added`, for text `response.content_part.added`, \
`response.output_text.delta`..., `response.output_text.done`, `response.content_part.done`, \
for a tool call `response.function_call_arguments.delta` and `.done`, then \
`response.output_item.done`; last `response.completed` (or `response.incomplete`) with the \
whole response, sent after it is stored. A failure after the stream started is an `error` \
event followed by `response.failed`.

A stored response (`store`, the default) belongs to the key (or logged-in user) that made \
it: another key's id is a 404."""

# --- metrics --------------------------------------------------------------------------

_METRICS_EXAMPLE = """# HELP echo_requests_total Requests answered, by endpoint, provider, model and outcome.
# TYPE echo_requests_total counter
echo_requests_total{endpoint="/v1/chat/completions",model="gpt-4o-mini",outcome="ok",\
provider="openai"} 42.0
# HELP echo_request_latency_seconds Whole request latency.
# TYPE echo_request_latency_seconds histogram
echo_request_latency_seconds_bucket{le="0.5",model="gpt-4o-mini",provider="openai"} 40.0
"""
_METRICS_DESCRIPTION = (
    "Echo's metrics in Prometheus' text format: requests, errors, latency and time to first "
    "token, tokens, cost, retries, failovers, the usage queue. Labels come from a bounded set. "
    "Point Prometheus at it with an admin-scoped key (`authorization: {credentials_file: "
    "...}`, or `x-api-key`); a staff login works too."
)

# --- paths ------------------------------------------------------------------------------

_KEY_SECURITY = [{"bearerKey": []}, {"xApiKey": []}]
_SESSION_NOTE = (
    " A logged-in browser session works too (with its CSRF token on writes). The key comes as "
    "`Authorization: Bearer` or `x-api-key` (the latter wins only without the former)."
)


def _json_body(schema: str, examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref(schema)}
    if examples:
        media["examples"] = examples
    return {"required": True, "content": {JSON: media}}


def _answer(description: str, schema: str, stream_event: dict[str, Any] | None = None) -> dict:
    """Return a 200 response of SCHEMA (and its event stream), with the answered-by headers."""
    content: dict[str, Any] = {JSON: {"schema": _ref(schema)}}
    if stream_event is not None:
        content[EVENT_STREAM] = {"schema": stream_event}
    return {"description": description, "headers": _ANSWERED_BY, "content": content}


def _sse_event(names: list[str] | None, data: dict[str, Any], description: str) -> dict:
    """Return one Server-Sent Event's schema: its name (if it has one) and its data."""
    properties: dict[str, Any] = {"data": {**data, "description": description}}
    if names is not None:
        properties = {"event": {"type": "string", "enum": names}, **properties}
    return {
        "type": "object",
        "description": "One Server-Sent Event; `data` is shown parsed (JSON text on the wire).",
        "required": ["data"],
        "properties": properties,
    }


def _paths() -> dict[str, Any]:
    """Return the path items of the compatible APIs and ``/metrics``."""
    openai_errors = _errors("OpenAIError", *_CHAT_ERRORS)
    anthropic_errors = _errors("AnthropicError", *_CHAT_ERRORS)
    model_id = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "description": "`provider/model`, slash included, as `GET /v1/models` lists it.",
        "schema": {"type": "string"},
        "example": "echo/echo-1",
    }
    response_id = {
        "name": "response_id",
        "in": "path",
        "required": True,
        "description": "The `id` of a response this key stored.",
        "schema": {"type": "string"},
    }
    completion_events = _sse_event(
        None,
        {
            "oneOf": [
                _ref("OpenAIChatCompletionChunk"),
                {"type": "string", "enum": ["[DONE]"]},
                _ref("OpenAIError"),
            ]
        },
        "A chunk, `[DONE]`, or an error after the stream started.",
    )
    message_events = _sse_event(
        _ANTHROPIC_EVENT_NAMES, _ref("AnthropicStreamEvent"), "The event's data."
    )
    response_events = _sse_event(
        _RESPONSES_EVENT_NAMES,
        {
            "type": "object",
            "required": ["type", "sequence_number"],
            "properties": {
                "type": {"type": "string", "enum": _RESPONSES_EVENT_NAMES},
                "sequence_number": {"type": "integer"},
                "response": _ref("Response"),
            },
        },
        "The event's data: its `type`, `sequence_number` and fields.",
    )
    return {
        "/v1/chat/completions": {
            "post": {
                "operationId": "openai_chat_completions",
                "tags": ["openai"],
                "summary": "Create a chat completion (OpenAI's API), whole or streamed",
                "description": _COMPLETION_STREAM + "\n\n" + _SESSION_NOTE.strip(),
                "security": _KEY_SECURITY,
                "requestBody": _json_body("OpenAIChatCompletionRequest", COMPLETION_EXAMPLES),
                "responses": {
                    "200": _answer(
                        "A `chat.completion`, or its chunks as Server-Sent Events.",
                        "OpenAIChatCompletion",
                        completion_events,
                    ),
                    **openai_errors,
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "openai_models_list",
                "tags": ["openai"],
                "summary": "List every live provider's models, as provider/model",
                "description": (
                    "A key with a model allow-list sees only the models it may use. Lists are "
                    "kept a short while; a provider slower than 5 s shows the models its plugin "
                    "declares." + _SESSION_NOTE
                ),
                "security": _KEY_SECURITY,
                "responses": {
                    "200": {
                        "description": "The models.",
                        "content": {JSON: {"schema": _ref("OpenAIModelList")}},
                    },
                    **_errors("OpenAIError", "401", "403", "429"),
                },
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "operationId": "openai_models_retrieve",
                "tags": ["openai"],
                "summary": "Return one model (client.models.retrieve)",
                "security": _KEY_SECURITY,
                "parameters": [model_id],
                "responses": {
                    "200": {
                        "description": "The model.",
                        "content": {JSON: {"schema": _ref("OpenAIModel")}},
                    },
                    **_errors("OpenAIError", "401", "403", "404", "429"),
                },
            }
        },
        "/v1/embeddings": {
            "post": {
                "operationId": "openai_embeddings",
                "tags": ["openai"],
                "summary": "Embed texts with the provider the model names",
                "description": (
                    "One call on the provider the model names (no failover: vectors of another "
                    "model would not compare). A key with an allow-list may embed only with a "
                    "model it allows." + _SESSION_NOTE
                ),
                "security": _KEY_SECURITY,
                "requestBody": _json_body("OpenAIEmbeddingRequest"),
                "responses": {
                    "200": _answer("The vectors, in input order.", "OpenAIEmbeddingList"),
                    **openai_errors,
                },
            }
        },
        "/v1/responses": {
            "post": {
                "operationId": "openai_responses_create",
                "tags": ["openai"],
                "summary": "Create a response (OpenAI's Responses API), whole or streamed",
                "description": _RESPONSES_STREAM + "\n\n" + _SESSION_NOTE.strip(),
                "security": _KEY_SECURITY,
                "requestBody": _json_body("ResponsesRequest", RESPONSES_EXAMPLES),
                "responses": {
                    "200": _answer(
                        "The `response`, or its events as Server-Sent Events.",
                        "Response",
                        response_events,
                    ),
                    **openai_errors,
                },
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "operationId": "openai_responses_retrieve",
                "tags": ["openai"],
                "summary": "Return a stored response",
                "description": "Replaying a stream (`?stream=true`) is refused: 400 naming it.",
                "security": _KEY_SECURITY,
                "parameters": [response_id],
                "responses": {
                    "200": {
                        "description": "The stored response.",
                        "content": {JSON: {"schema": _ref("Response")}},
                    },
                    **_errors("OpenAIError", "400", "401", "403", "404", "429"),
                },
            },
            "delete": {
                "operationId": "openai_responses_delete",
                "tags": ["openai"],
                "summary": "Forget a stored response",
                "security": _KEY_SECURITY,
                "parameters": [response_id],
                "responses": {
                    "200": {
                        "description": "Deleted.",
                        "content": {JSON: {"schema": _ref("ResponseDeleted")}},
                    },
                    **_errors("OpenAIError", "401", "403", "404", "429"),
                },
            },
        },
        "/v1/messages": {
            "post": {
                "operationId": "anthropic_messages",
                "tags": ["anthropic"],
                "summary": "Create a message (Anthropic's Messages API), whole or streamed",
                "description": _MESSAGES_STREAM + "\n\n" + _SESSION_NOTE.strip(),
                "security": _KEY_SECURITY,
                "requestBody": _json_body("AnthropicMessagesRequest", MESSAGES_EXAMPLES),
                "responses": {
                    "200": _answer(
                        "The `message`, or its events as Server-Sent Events.",
                        "AnthropicMessage",
                        message_events,
                    ),
                    **anthropic_errors,
                },
            }
        },
        "/v1/messages/count_tokens": {
            "post": {
                "operationId": "anthropic_count_tokens",
                "tags": ["anthropic"],
                "summary": "Count a message's input tokens",
                "description": (
                    "An `anthropic` provider is asked itself (header `x-echo-token-count: "
                    "upstream`); for any other provider Echo estimates (a quarter of the "
                    "characters, 1,600 per image; `x-echo-token-count: estimate`). Counting "
                    "spends nothing: a key's budget is not checked." + _SESSION_NOTE
                ),
                "security": _KEY_SECURITY,
                "requestBody": _json_body("AnthropicCountTokensRequest"),
                "responses": {
                    "200": {
                        "description": "The count.",
                        "headers": {
                            **_ANSWERED_BY,
                            "x-echo-token-count": {
                                "description": "How it was counted.",
                                "schema": {"type": "string", "enum": ["upstream", "estimate"]},
                            },
                        },
                        "content": {JSON: {"schema": _ref("AnthropicTokenCount")}},
                    },
                    **_errors(
                        "AnthropicError",
                        "400",
                        "401",
                        "403",
                        "404",
                        "409",
                        "413",
                        "429",
                        "502",
                        "503",
                        "504",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["metrics"],
                "summary": "Echo's Prometheus metrics",
                "description": _METRICS_DESCRIPTION,
                "security": [*_KEY_SECURITY, {"staffSession": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus' text exposition format.",
                        "content": {
                            "text/plain": {
                                "schema": {"type": "string"},
                                "example": _METRICS_EXAMPLE,
                            }
                        },
                    },
                    "401": {
                        "description": "No key or login, or an unknown key.",
                        "content": {JSON: {"schema": _ref("Error")}},
                    },
                    "403": {
                        "description": "Not an admin key, nor a staff login.",
                        "content": {JSON: {"schema": _ref("Error")}},
                    },
                },
            }
        },
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "OpenAIError": _OPENAI_ERROR,
    "AnthropicError": _ANTHROPIC_ERROR,
    "Thinking": _THINKING,
    "OpenAIContentPart": _OPENAI_PART,
    "OpenAIToolCall": _OPENAI_TOOL_CALL,
    "OpenAIChatMessage": _OPENAI_MESSAGE,
    "OpenAITool": _OPENAI_TOOL,
    "OpenAIResponseFormat": _RESPONSE_FORMAT,
    "OpenAIChatCompletionRequest": _COMPLETION_REQUEST,
    "OpenAIUsage": _OPENAI_USAGE,
    "OpenAIChatCompletion": _COMPLETION,
    "OpenAIChatCompletionChunk": _COMPLETION_CHUNK,
    "OpenAIModel": _MODEL_OBJECT,
    "OpenAIModelList": _MODEL_LIST,
    "OpenAIEmbeddingRequest": _EMBEDDING_REQUEST,
    "OpenAIEmbeddingList": _EMBEDDING_LIST,
    "AnthropicContentBlock": _ANTHROPIC_BLOCK,
    "AnthropicInputMessage": _ANTHROPIC_MESSAGE,
    "AnthropicTool": _ANTHROPIC_TOOL,
    "AnthropicToolChoice": _ANTHROPIC_TOOL_CHOICE,
    "AnthropicMessagesRequest": _MESSAGES_REQUEST,
    "AnthropicMessage": _ANTHROPIC_ANSWER,
    "AnthropicStreamEvent": _ANTHROPIC_EVENT,
    "AnthropicCountTokensRequest": _COUNT_REQUEST,
    "AnthropicTokenCount": _TOKEN_COUNT,
    "ResponsesInputItem": _RESPONSES_ITEM,
    "ResponsesTool": _RESPONSES_TOOL,
    "ResponsesRequest": _RESPONSES_REQUEST,
    "Response": _RESPONSE,
    "ResponseDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["response"]},
            "deleted": {"type": "boolean", "enum": [True]},
        },
    },
}

#: ``x-api-key``: what Anthropic's SDK sends; every ``/v1`` route and ``/metrics`` take it.
X_API_KEY_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "x-api-key",
    "description": "An Echo client key, as Anthropic's SDK sends it.",
}


def document_compat_endpoints(result: dict[str, Any]) -> dict[str, Any]:
    """Add the ``/v1`` compatible APIs, ``/metrics``, their schemas and tags to RESULT."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components.setdefault("securitySchemes", {})["xApiKey"] = X_API_KEY_SCHEME
    result.setdefault("paths", {}).update(_paths())
    known = {tag.get("name") for tag in result.get("tags", [])}
    result.setdefault("tags", []).extend(tag for tag in TAGS if tag["name"] not in known)
    return result
