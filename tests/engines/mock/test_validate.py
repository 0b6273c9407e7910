"""Values OpenAI's specification forbids are 400s from the mock, naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from auditgate.engines.mock import MockEngine
from auditgate.errors import InvalidRequestError
from tests.engines.mock.common import request

USER = {"role": "user", "content": "hi"}

FORBIDDEN: dict[str, tuple[dict[str, Any], str, str]] = {
    "role": ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role",
             "invalid_value"),
    "no-role": ({"messages": [{"content": "hi"}]}, "messages[0].role",
                "missing_required_parameter"),
    "role-list": ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role",
                  "invalid_value"),
    "user-without-content": ({"messages": [USER, {"role": "user"}]}, "messages[1].content",
                             "missing_required_parameter"),
    "system-null-content": ({"messages": [{"role": "system", "content": None}]},
                            "messages[0].content", "missing_required_parameter"),
    "tool-without-id": ({"messages": [{"role": "tool", "content": "4"}]},
                        "messages[0].tool_call_id", "missing_required_parameter"),
    "empty-parts": ({"messages": [{"role": "user", "content": []}]}, "messages[0].content",
                    "empty_array"),
    "part-without-text": ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
                          "messages[0].content[0].text", "missing_required_parameter"),
    "content-number": ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
                       "invalid_type"),
    "message-string": ({"messages": ["hi"]}, "messages[0]", "invalid_type"),
    "temperature": ({"temperature": 5}, "temperature", "decimal_above_max_value"),
    "temperature-negative": ({"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    "temperature-string": ({"temperature": "hot"}, "temperature", "invalid_type"),
    "top_p": ({"top_p": 7}, "top_p", "decimal_above_max_value"),
    "presence_penalty": ({"presence_penalty": -3}, "presence_penalty",
                         "decimal_below_min_value"),
    "frequency_penalty": ({"frequency_penalty": 2.5}, "frequency_penalty",
                          "decimal_above_max_value"),
    "top_logprobs": ({"logprobs": True, "top_logprobs": 1e6}, "top_logprobs",
                     "integer_above_max_value"),
    "top_logprobs-fraction": ({"logprobs": True, "top_logprobs": 1.5}, "top_logprobs",
                              "invalid_type"),
    "top_logprobs-alone": ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
    "logprobs-string": ({"logprobs": "yes"}, "logprobs", "invalid_type"),
    "parallel_tool_calls": ({"parallel_tool_calls": 1}, "parallel_tool_calls", "invalid_type"),
    "service_tier": ({"service_tier": "gold"}, "service_tier", "invalid_value"),
    "reasoning_effort": ({"reasoning_effort": "huge"}, "reasoning_effort", "invalid_value"),
}  # fmt: skip


@pytest.mark.parametrize("case", FORBIDDEN)
async def test_forbidden_values_are_400s_naming_the_parameter(case: str) -> None:
    """Each forbidden value is a 400 invalid_request_error with its parameter and code."""
    body, param, code = FORBIDDEN[case]
    with pytest.raises(InvalidRequestError) as caught:
        await MockEngine().complete(request(**body))
    error = caught.value.to_dict()["error"]
    assert (400, "invalid_request_error", param, code) == (
        caught.value.status_code,
        error["type"],
        error["param"],
        error["code"],
    )


async def test_openai_wording() -> None:
    """The message says what OpenAI says for an out-of-range value and an unknown role."""
    messages = []
    for body in ({"temperature": 5}, {"messages": [{"role": "wizard", "content": "hi"}]}):
        with pytest.raises(InvalidRequestError) as caught:
            await MockEngine().complete(request(**body))
        messages.append(caught.value.message)
    assert messages == [
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 5 "
        "instead.",
        "Invalid value: 'wizard'. Supported values are: 'system', 'assistant', 'user', "
        "'function', 'tool', and 'developer'.",
    ]


async def test_the_limits_themselves_are_accepted() -> None:
    """Values at the specification's limits, and every role with its fields, are answered."""
    messages = [
        {"role": "developer", "content": "d"},
        {"role": "system", "content": [{"type": "text", "text": "s"}]},
        USER,
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
        {"role": "function", "content": None, "name": "f"},
    ]
    body = {"messages": messages, "temperature": 2, "top_p": 0, "presence_penalty": -2,
            "frequency_penalty": 2.0, "logprobs": True, "top_logprobs": 20,
            "service_tier": "scale", "reasoning_effort": "xhigh", "verbosity": "low"}  # fmt: skip
    completion = await MockEngine().complete(request(**body))
    assert completion["choices"][0]["finish_reason"] == "stop"
