"""Which URL paths are Echo's API, as opposed to pages for a browser.

One list, read by every layer that treats the two differently: the ASGI body
limit (API paths need a credential before their body is read), the browser
middleware (API clients with a key skip sessions and CSRF), and the error
views (API paths get JSON errors, browsers get pages).
"""

from __future__ import annotations

#: Exact API paths. ``/chat/`` (with the slash) is the chat page, not the API.
API_PATHS = frozenset({"/chat", "/metrics", "/health", "/plugins"})
#: Prefixes under which every route is API.
API_PATH_PREFIXES = ("/api/", "/plugins/", "/health/", "/v1/")
#: API paths anyone may call: the load balancer's probes.
PUBLIC_API_PATHS = frozenset({"/health", "/health/live", "/health/ready"})


def is_api_path(path: str) -> bool:
    """Return whether PATH belongs to the API."""
    return path in API_PATHS or path.startswith(API_PATH_PREFIXES)


#: Whose error shape an API path answers in: Anthropic's, OpenAI's (the rest of /v1), or Echo's.
ANTHROPIC_SHAPE, OPENAI_SHAPE, ECHO_SHAPE = "anthropic", "openai", "echo"


def error_shape(path: str) -> str:
    """Return whose error shape PATH answers in: ``/v1/messages`` and below Anthropic's, else under ``/v1/`` OpenAI's, else Echo's."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return ANTHROPIC_SHAPE
    if path.startswith("/v1/"):
        return OPENAI_SHAPE
    return ECHO_SHAPE


def requires_credential(path: str) -> bool:
    """Return whether every route under PATH needs a client key or a session."""
    return path not in PUBLIC_API_PATHS and is_api_path(path)
