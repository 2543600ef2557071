"""Anthropic's token counting, served by Echo: ``POST /v1/messages/count_tokens`` for any provider.

The Anthropic SDK's ``client.messages.count_tokens`` sends the body of a
``/v1/messages`` call without ``max_tokens`` (``model``, ``system``,
``messages``, ``tools``, ``tool_choice``) and reads ``{"input_tokens": N}``.
Echo reads that body with ``/v1/messages``' own parsers
(``compat.anthropic_api``), checks the key and its model access as for a
chat, and routes the ``model`` as a chat would (``anthropic/claude-...``, or
a bare name for the routing default). Any other field is refused with a 400
naming it (``thinking`` included: Echo's requests do not carry it yet).

How the count is made depends on the provider the model routes to, and the
``x-echo-token-count`` header says which one was used:

- ``upstream``: a provider of the ``anthropic`` plugin is asked itself (its
  ``POST /v1/messages/count_tokens``, with the body the plugin would send for
  the chat): Anthropic's exact count.
- ``estimate``: any other provider (OpenAI, Ollama, echo, a plugin) has no
  counting endpoint Echo can call, so Echo estimates: a quarter of the
  characters of the system prompt, the messages' text, tool calls and tool
  results and the tool definitions (as JSON), rounded up, plus
  ``IMAGE_TOKENS`` per image. It is a rough guide (within about a third of
  a real tokenizer for English prose), not a bill.

Counting spends no money, so a key's budget is not checked; it counts as a
request against the key's rate limits (and holds no concurrency slot), and
no usage row is written. Errors have Anthropic's shape
(``compat.anthropic_api``).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from plugins_api.access.request_auth import Denial, check_model_access
from plugins_api.compat.anthropic_api import (
    ANTHROPIC_ERRORS,
    anthropic_denial,
    anthropic_provider_error,
    parse_anthropic_messages,
    parse_anthropic_tool_choice,
    parse_anthropic_tools,
)
from plugins_api.compat.dispatch import admit, answered_by, limit, with_limit_headers
from plugins_api.edge.chat_requests import RequestFieldError, bounded_name, reject_upstream_settings
from providers.errors import ProtocolError, ProviderError, ProviderTimeoutError
from providers.plugins.anthropic_provider import AnthropicProvider
from providers.runtime import process as runtime
from providers.runtime.manager import Route, plugin_failure
from providers.runtime.retry_policy import routing_setting
from providers.types import ChatMessage, ChatRequest

#: The header that says how the count was made: ``upstream`` or ``estimate``.
METHOD_HEADER = "x-echo-token-count"
#: The upstream's counting path (Anthropic's Messages API).
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
#: The fields of the count body (the Messages body less what does not change the input).
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice"})
#: Characters per token in the estimate.
CHARS_PER_TOKEN = 4
#: Tokens an image counts in the estimate (Anthropic's size for about 1.15 megapixels).
IMAGE_TOKENS = 1_600


def parse_count_request(data: dict[str, Any]) -> ChatRequest:
    """Return the ChatRequest whose input a ``count_tokens`` body asks to count."""
    reject_upstream_settings(data)
    for key, value in data.items():
        if key not in COUNT_FIELDS and value is not None:
            raise RequestFieldError(
                key, f"Echo's count_tokens does not take {key!r}; leave it out."
            )
    model = bounded_name(data.get("model"), "model", "a model name")
    if model is None or not model.strip():
        raise RequestFieldError("model", "Field required.")
    return ChatRequest(
        messages=parse_anthropic_messages(data.get("messages"), data.get("system")),
        model=model.strip(),
        tools=parse_anthropic_tools(data.get("tools")),
        tool_choice=parse_anthropic_tool_choice(data.get("tool_choice")),
    )


# --- counting -----------------------------------------------------------------


def _message_size(message: ChatMessage) -> tuple[int, int]:
    """Return (characters, images) of one message."""
    characters, images = 0, 0
    if isinstance(message.content, str):
        characters += len(message.content)
    else:
        for part in message.content:
            if part.get("type") == "image_url":
                images += 1
            else:
                characters += len(str(part.get("text") or ""))
    for call in message.tool_calls or []:
        characters += len(call.name) + len(call.arguments or "")
    return characters, images


def estimate_tokens(request: ChatRequest) -> int:
    """Return the estimated input tokens of REQUEST (see the module docstring); at least 1."""
    characters, images = 0, 0
    for message in request.messages:
        text, pictures = _message_size(message)
        characters += text
        images += pictures
    for tool in request.tools or []:
        characters += len(json.dumps(tool.get("function", tool), separators=(",", ":")))
    return max(1, math.ceil(characters / CHARS_PER_TOKEN) + images * IMAGE_TOKENS)


async def upstream_count(provider: AnthropicProvider, request: ChatRequest) -> int:
    """Return Anthropic's own count for REQUEST, asked of PROVIDER's upstream."""
    body = provider.build_body(request, stream=False)
    counted = await provider.post_json(
        COUNT_TOKENS_PATH, {key: value for key, value in body.items() if key in COUNT_FIELDS}
    )
    tokens = counted.get("input_tokens") if isinstance(counted, dict) else None
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ProtocolError(
            f"{provider.display_name} answered count_tokens without a number of input_tokens.",
            provider=provider.name,
        )
    return tokens


async def count_input_tokens(route: Route, request: ChatRequest) -> tuple[int, str, str | None]:
    """Return (tokens, method, model) for REQUEST on ROUTE's provider.

    The method is ``upstream`` for an ``anthropic`` provider, ``estimate``
    otherwise; the call to the upstream is bounded by the provider's
    ``deadline_seconds`` and its failures are typed ProviderErrors.
    """
    async with runtime.registry.lease(route.provider) as provider:
        model = route.model or provider.config.get("default_model")
        if not isinstance(provider, AnthropicProvider):
            return estimate_tokens(request), "estimate", model
        return (
            await _ask_upstream(provider, route, request.with_model(route.model)),
            "upstream",
            model,
        )


async def _ask_upstream(provider: AnthropicProvider, route: Route, request: ChatRequest) -> int:
    """Return PROVIDER's upstream count for REQUEST, within its deadline, failures typed."""
    deadline = float(routing_setting(provider.config, "deadline_seconds"))
    try:
        async with asyncio.timeout(deadline):
            return await upstream_count(provider, request)
    except ProviderError as exc:
        exc.provider = exc.provider or route.provider
        raise
    except TimeoutError:
        raise ProviderTimeoutError(
            f"Provider {route.provider!r} did not answer within {deadline:g}s.",
            provider=route.provider,
        ) from None
    except Exception as unexpected:
        raise plugin_failure(route, unexpected) from unexpected


# --- view ---------------------------------------------------------------------


@csrf_exempt  # key clients carry no CSRF token; session callers are checked in check_chat_client
@require_POST
async def count_tokens(request: HttpRequest) -> HttpResponse:
    """Answer ``POST /v1/messages/count_tokens`` as Anthropic does: ``{"input_tokens": N}``."""
    chat = await admit(request, ANTHROPIC_ERRORS, parse_count_request)
    if isinstance(chat, HttpResponse):
        return chat
    checked = check_model_access(getattr(request, "client", None), chat)
    if isinstance(checked, Denial):
        return anthropic_denial(checked)
    admission = await limit(request, ANTHROPIC_ERRORS, spends=False)
    if isinstance(admission, HttpResponse):
        return admission
    try:
        route = runtime.manager.resolve(checked)
        tokens, method, model = await count_input_tokens(route, checked)
    except ProviderError as exc:
        return anthropic_provider_error(exc, model=checked.model)
    finally:
        if admission is not None:
            admission.finish()  # no tokens spent: it counts as a request, holds no slot
    response = JsonResponse({"input_tokens": tokens})
    response[METHOD_HEADER] = method
    answered_by(response, route.provider, model)
    with_limit_headers(response, admission, ANTHROPIC_ERRORS)
    return response
