"""The common request type's copies."""

from __future__ import annotations

import dataclasses

from providers.types import ChatMessage, ChatRequest


def test_with_model_is_the_copy_replace_makes() -> None:
    """Every field kept (none forgotten when one is added), the model changed, the original untouched."""
    values = {
        f.name: object() for f in dataclasses.fields(ChatRequest) if f.name not in ("messages",)
    }
    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")], **values)

    copy = request.with_model("other")

    assert copy == dataclasses.replace(request, model="other")
    assert copy is not request
    assert request.model is values["model"]
    copy.temperature = 0.5
    assert request.temperature is values["temperature"]
