"""Translation: Responses requests (and stored conversations) to chat, chat completions back."""

from __future__ import annotations

from typing import Any

from openai.types.responses import Response

from auditgate.endpoints.responses import (
    context_items,
    to_chat_body,
    to_response,
    validate_responses,
)
from auditgate.endpoints.responses.objects import OMITTED_WHEN_NULL
from tests.endpoints.responses.chat import USAGE, Call, Output, completion
from tests.endpoints.responses.sdk import extras, response_model

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def respond(body: dict[str, Any], output: Output, request_id: str) -> dict[str, Any]:
    """The response the gateway gives ``body`` when the engine answers ``output``."""
    request = validate_responses(body)
    return to_response(
        completion(output), request, request_id=request_id, created_at=10, completed_at=11
    )


def test_request_maps_to_chat() -> None:
    """Every mapped field lands in chat's spelling; the gateway's fields stay home; an engine's
    extension field is forwarded as sent."""
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look:"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "high"},
                    {"type": "input_file", "file_id": "file_1", "filename": "a.pdf"},
                ],
            },
        ],
        "tools": [WEATHER],
        "tool_choice": {
            "type": "allowed_tools",
            "mode": "auto",
            "tools": [{"type": "function", "name": "get_weather"}],
        },
        "parallel_tool_calls": False,
        "max_output_tokens": 50,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "w",
                "schema": {"type": "object"},
                "strict": True,
            },
            "verbosity": "low",
        },
        "reasoning": {"effort": "high", "summary": "auto"},
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 3,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "service_tier": "flex",
        "safety_identifier": "s1",
        "prompt_cache_key": "k1",
        "stream": True,
        "stream_options": {"include_obfuscation": False},
        "store": True,
        "metadata": {"team": "a"},
        "previous_response_id": None,
        "truncation": "auto",
        "top_k": 20,
        "n": 3,
        "messages": [{"role": "user", "content": "smuggled"}],
    }
    assert to_chat_body(validate_responses(body)) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/y.png", "detail": "high"},
                    },
                    {"type": "file", "file": {"file_id": "file_1", "filename": "a.pdf"}},
                ],
            },
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather in a city.",
                    "parameters": WEATHER["parameters"],
                    "strict": True,
                },
            }
        ],
        "tool_choice": {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "auto",
                "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            },
        },
        "parallel_tool_calls": False,
        "max_completion_tokens": 50,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "verbosity": "low",
        "reasoning_effort": "high",
        "logprobs": True,
        "top_logprobs": 3,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "service_tier": "flex",
        "safety_identifier": "s1",
        "prompt_cache_key": "k1",
        "top_k": 20,
    }


def test_minimal_request_and_choices() -> None:
    """A plain request is model and messages only; a named function and json_object map too."""
    assert to_chat_body(validate_responses({"model": "m", "input": "hi"})) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
    }
    body = {
        "model": "m",
        "input": "hi",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_object"}},
    }
    chat = to_chat_body(validate_responses(body))
    assert (chat["tool_choice"], chat["response_format"]) == (
        {"type": "function", "function": {"name": "get_weather"}},
        {"type": "json_object"},
    )


def test_three_turns_with_tool_calls() -> None:
    """A conversation continued by ``previous_response_id`` over three turns becomes the chat
    history a chat-only engine needs: earlier instructions dropped, the call and its result in
    place, reasoning given back with the answer it led to."""
    first_body = {
        "model": "m",
        "instructions": "Old rules.",
        "input": "Weather in Paris?",
        "tools": [WEATHER],
    }
    first = respond(
        first_body,
        Output(
            reasoning=["Need", " a tool."],
            calls=[Call("call_1", "get_weather", ['{"city": "Paris"}'])],
            finish_reason="tool_calls",
        ),
        "r1",
    )
    second_body = {
        "model": "m",
        "previous_response_id": first["id"],
        "input": [{"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 21}'}],
        "tools": [WEATHER],
    }
    second = respond(second_body, Output(content=["21 degrees."]), "r2")
    third_body = {
        "model": "m",
        "instructions": "New rules.",
        "previous_response_id": second["id"],
        "input": "And tomorrow?",
    }
    history = context_items([(first_body, first), (second_body, second)])
    assert to_chat_body(validate_responses(third_body), history)["messages"] == [
        {"role": "system", "content": "New rules."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Need a tool.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 degrees."},
        {"role": "user", "content": "And tomorrow?"},
    ]


def test_assistant_turn_round_trips() -> None:
    """A chat answer (reasoning, text, two calls) turned into a response and given back as
    history is the same chat assistant message again."""
    answer = Output(
        reasoning=["think"],
        content=["Checking both."],
        calls=[
            Call("call_a", "get_weather", ['{"city": "Oslo"}']),
            Call("call_b", "get_weather", ["{}"]),
        ],
        finish_reason="tool_calls",
    )
    body = {"model": "m", "input": "Oslo and here?", "tools": [WEATHER]}
    response = respond(body, answer, "r1")
    follow_up = {"model": "m", "input": [], "previous_response_id": response["id"]}
    messages = to_chat_body(validate_responses(follow_up), context_items([(body, response)]))[
        "messages"
    ]
    assert messages[1] == {
        **completion(answer)["choices"][0]["message"],
        "reasoning_content": "think",
    }


def test_response_has_every_sdk_field() -> None:
    """The response object carries every field of the SDK's ``Response`` (and ``store``, which
    OpenAI sends) but those the specification types non-nullable and that have no value here,
    echoing the request as the gateway used it."""
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": "hi",
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 64,
        "metadata": {"team": "a"},
        "previous_response_id": "resp_0",
        "reasoning": {"effort": "low", "generate_summary": "concise"},
        "temperature": 0.5,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        "store": False,
        "user": "u1",
        "truncation": "auto",
        "top_logprobs": 2,
    }
    response = respond(body, Output(content=["Hi"]), "r9")
    model = response_model(response)
    assert extras(model) == {("Response", "store")}
    fields = {f.alias or name for name, f in Response.model_fields.items()}
    assert fields - set(OMITTED_WHEN_NULL) <= response.keys()
    assert (fields - response.keys()) == {"prompt_cache_options"}
    assert (response.keys() - fields) == {"store"}
    echoed = {
        k: response[k]
        for k in ("id", "object", "created_at", "completed_at", "status", "background")
    }
    assert echoed == {
        "id": "resp_r9",
        "object": "response",
        "created_at": 10,
        "completed_at": 11,
        "status": "completed",
        "background": False,
    }
    assert {k: response[k] for k in body if k not in ("input", "stream")} == {
        "model": "engine-m",
        "instructions": "Be brief.",
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather in a city.",
                "parameters": WEATHER["parameters"],
                "strict": True,
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 64,
        "metadata": {"team": "a"},
        "previous_response_id": "resp_0",
        "reasoning": {"effort": "low", "summary": "concise"},
        "temperature": 0.5,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "w",
                "schema": {"type": "object"},
                "strict": None,
            },
            "verbosity": None,
        },
        "store": False,
        "user": "u1",
        "truncation": "auto",
        "top_logprobs": 2,
    }
    assert response["usage"]["total_tokens"] == USAGE["total_tokens"]


def test_completion_without_choices() -> None:
    """A completion with no choice is an incomplete response with no output, not a crash."""
    empty = {"id": "x", "object": "chat.completion", "model": "m", "choices": [], "usage": None}
    response = to_response(
        empty,
        validate_responses({"model": "m", "input": "hi"}),
        request_id="r",
        created_at=1,
        completed_at=2,
    )
    response_model(response)
    assert (response["status"], response["output"], response.get("usage")) == (
        "incomplete",
        [],
        None,
    )
