"""The smallest valid body of each chat endpoint, for tests that only need a call to go through."""

from __future__ import annotations

MINIMAL_CALLS = {
    "/chat": {"prompt": "hi"},
    "/v1/chat/completions": {
        "model": "echo/echo-1",
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/v1/messages": {
        "model": "echo/echo-1",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    },
}
