"""``ChatResponse.as_dict`` is written out for speed: it must stay what ``dataclasses.asdict`` gives."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from providers.types import ChatResponse, ToolCall, Usage


@pytest.mark.parametrize(
    "answer",
    [
        ChatResponse(content="hi", model="m"),
        ChatResponse(
            content="",
            model="m",
            provider="p",
            usage=Usage(prompt_tokens=3, completion_tokens=4),
            finish_reason="tool_calls",
            tool_calls=[ToolCall(id="c1", name="f", arguments='{"a": 1}')],
            metadata={"nested": {"n": [1, 2]}},
        ),
    ],
)
def test_as_dict_is_asdict_with_the_usage_totalled(answer: ChatResponse) -> None:
    expected = asdict(answer)
    expected["usage"] = answer.usage.as_dict()
    data = answer.as_dict()
    assert data == expected
    assert list(data) == [f.name for f in fields(ChatResponse)]  # every field, in order
    data["metadata"]["added"] = 1
    assert "added" not in answer.metadata  # a copy: the caller may change it
