"""Parsing and validating Responses request bodies: what is accepted, and the 400s OpenAI-style."""

from __future__ import annotations

from typing import Any

import pytest

import auditgate.endpoints.responses as package
from auditgate.endpoints.responses import parse_body, validate_responses
from auditgate.endpoints.responses.items import (
    AssistantMessage,
    FunctionCall,
    FunctionCallOutput,
    InputFile,
    InputImage,
    InputText,
    Message,
    OutputText,
    Reasoning,
    ReasoningText,
    Refusal,
    SummaryText,
)
from auditgate.errors import InvalidRequestError


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI error body validating ``body`` raises."""
    with pytest.raises(InvalidRequestError) as caught:
        validate_responses(body)
    return caught.value.to_dict()["error"]


def bad(message: str, param: str | None, code: str) -> dict[str, Any]:
    """An ``invalid_request_error`` body."""
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def test_package_exports() -> None:
    """The package's ``__all__`` names exactly what it exports, and each name exists."""
    public = {n for n in vars(package) if not n.startswith("_")} - {
        "aggregate",
        "dataset",
        "events",
        "history",
        "items",
        "objects",
        "passthrough",
        "protocol",
        "service",
        "sse",
        "stored",
        "translate",
    }
    assert sorted(public) == sorted(package.__all__)


def test_string_input_is_one_user_message() -> None:
    """A string ``input`` is one user message; ``store`` defaults to true; the body is kept."""
    body = {"model": "m", "input": "hi", "x_vendor": {"k": 1}}
    request = validate_responses(body)
    assert request.items == [Message(role="user", content="hi")]
    assert request.store is True
    assert request.body is body
    assert request.logprobs is False


def test_every_item_and_part_type() -> None:
    """Every supported item and content part parses into its typed form, unknown fields aside."""
    body = {
        "model": "m",
        "store": False,
        "include": ["message.output_text.logprobs"],
        "input": [
            {"role": "developer", "content": "be brief"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look", "cache": "x"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,AA",
                        "detail": "low",
                    },
                    {"type": "input_file", "file_data": "data:application/pdf;base64,AA"},
                ],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "s"}],
                "content": [{"type": "reasoning_text", "text": "r"}],
            },
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "ok", "annotations": []},
                    {"type": "refusal", "refusal": "no"},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [{"type": "input_text", "text": "1"}],
            },
        ],
    }
    request = validate_responses(body)
    assert request.items == [
        Message(role="developer", content="be brief"),
        Message(
            role="user",
            content=[
                InputText(text="look"),
                InputImage(image_url="data:image/png;base64,AA", detail="low"),
                InputFile(file_data="data:application/pdf;base64,AA"),
            ],
        ),
        Reasoning(id="rs_1", summary=[SummaryText(text="s")], content=[ReasoningText(text="r")]),
        AssistantMessage(id="msg_1", content=[OutputText(text="ok"), Refusal(refusal="no")]),
        FunctionCall(call_id="c1", name="f", arguments="{}"),
        FunctionCallOutput(call_id="c1", output=[InputText(text="1")]),
    ]
    assert (request.store, request.logprobs) == (False, True)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"input": "hi"},
            bad("Missing required parameter: 'model'.", "model", "missing_required_parameter"),
        ),
        (
            {"model": "m", "input": 3},
            bad(
                "Invalid type for 'input': expected `str | array`, got `int`.",
                "input",
                "invalid_type",
            ),
        ),
        (
            {"model": "m", "input": "hi", "max_output_tokens": "9"},
            bad(
                "Invalid type for 'max_output_tokens': expected `int | null`, got `str`.",
                "max_output_tokens",
                "invalid_type",
            ),
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            bad(
                "Missing required parameter: 'input[0].content[0].text'.",
                "input[0].content[0].text",
                "missing_required_parameter",
            ),
        ),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}],
            },
            bad(
                "Invalid value: 'tool'. Supported values are: 'user', 'assistant', 'system', "
                "and 'developer'.",
                "input[1].role",
                "invalid_value",
            ),
        ),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}],
            },
            bad(
                "Invalid value: 'output_text'. Supported values are: 'input_text', "
                "'input_image', and 'input_file'.",
                "input[0].content[0].type",
                "invalid_value",
            ),
        ),
        (
            {
                "model": "m",
                "input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}],
            },
            bad(
                "Invalid value: 'input_text'. Supported values are: 'output_text' and 'refusal'.",
                "input[0].content[0].type",
                "invalid_value",
            ),
        ),
        (
            {"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
            bad(
                "Missing required parameter: 'input[0].arguments'.",
                "input[0].arguments",
                "missing_required_parameter",
            ),
        ),
        (
            {"model": "m", "input": ["hi"]},
            bad(
                "Invalid type for 'input[0]': expected an object, but got a string instead.",
                "input[0]",
                "invalid_type",
            ),
        ),
        (
            {"model": "m", "input": []},
            bad("'input' must contain at least one item.", "input", "invalid_value"),
        ),
        (
            {"model": "m", "input": "hi", "truncation": "sometimes"},
            bad(
                "Invalid value for 'truncation': invalid enum value 'sometimes'.",
                "truncation",
                "invalid_value",
            ),
        ),
        (
            {"model": "m", "input": "hi", "max_output_tokens": 0},
            bad(
                "0 is not a valid value for 'max_output_tokens': expected at least 1.",
                "max_output_tokens",
                "invalid_value",
            ),
        ),
        (
            {"model": "m", "input": "hi", "top_logprobs": 21},
            bad(
                "21 is not a valid value for 'top_logprobs': expected 0 to 20.",
                "top_logprobs",
                "invalid_value",
            ),
        ),
        (
            {"model": "m", "input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}},
            bad(
                "Invalid 'metadata': too many properties. Expected at most 16, but got 17.",
                "metadata",
                "invalid_value",
            ),
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "schema": {}}},
            },
            bad(
                "Missing required parameter: 'text.format.name'.",
                "text.format.name",
                "missing_required_parameter",
            ),
        ),
        (
            {"model": "m", "input": "hi", "text": {"format": {"type": "yaml"}}},
            bad(
                "Invalid value: 'yaml'. Supported values are: 'text', 'json_object', and "
                "'json_schema'.",
                "text.format.type",
                "invalid_value",
            ),
        ),
        (
            {"model": "m", "input": "hi", "tool_choice": "sometimes"},
            bad(
                "Invalid value: 'sometimes'. Supported values are: 'none', 'auto', and 'required'.",
                "tool_choice",
                "invalid_value",
            ),
        ),
    ],
)
def test_invalid_bodies_name_the_parameter(body: dict[str, Any], expected: dict[str, Any]) -> None:
    """Each invalid body is a 400 whose message, param and code say what is wrong, and where."""
    assert error_of(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"model": "m", "input": "hi", "background": True},
            bad(
                "Background responses are not supported by this gateway: it answers within "
                "the request.",
                "background",
                "unsupported_parameter",
            ),
        ),
        (
            {"model": "m", "input": "hi", "conversation": "conv_1"},
            bad(
                "Conversations are not supported by this gateway: continue a stored "
                "conversation with 'previous_response_id'.",
                "conversation",
                "unsupported_parameter",
            ),
        ),
        (
            {"model": "m", "input": "hi", "prompt": {"id": "pmpt_1"}},
            bad(
                "Prompt templates ('prompt') are not supported by this gateway.",
                "prompt",
                "unsupported_parameter",
            ),
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}],
            },
            bad(
                "The tool type 'web_search' is not supported by this gateway: only 'function' "
                "tools are.",
                "tools[1].type",
                "invalid_value",
            ),
        ),
        (
            {"model": "m", "input": "hi", "tool_choice": {"type": "file_search"}},
            bad(
                "The tool choice type 'file_search' is not supported by this gateway: only "
                "'none', 'auto', 'required', a function or 'allowed_tools' are.",
                "tool_choice.type",
                "invalid_value",
            ),
        ),
        (
            {"model": "m", "input": [{"id": "msg_1"}]},
            bad(
                "Input items of type 'item_reference' are not supported by this gateway: it "
                "takes messages, 'function_call', 'function_call_output' and 'reasoning' items.",
                "input[0].type",
                "invalid_value",
            ),
        ),
        (
            {"model": "m", "input": [{"type": "web_search_call", "id": "ws_1"}]},
            bad(
                "Input items of type 'web_search_call' are not supported by this gateway: it "
                "takes messages, 'function_call', 'function_call_output' and 'reasoning' items.",
                "input[0].type",
                "invalid_value",
            ),
        ),
        (
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}
                ],
            },
            bad(
                "An 'input_image' needs an 'image_url' (a URL or a data URL): images by "
                "'file_id' are not supported by this gateway.",
                "input[0].content[0].image_url",
                "invalid_value",
            ),
        ),
        (
            {
                "model": "m",
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_file", "file_url": "https://x/y.pdf"}],
                    }
                ],
            },
            bad(
                "An 'input_file' needs 'file_data' or 'file_id': files by 'file_url' are not "
                "supported by this gateway.",
                "input[0].output[0].file_data",
                "invalid_value",
            ),
        ),
    ],
)
def test_unsupported_features_are_refused_clearly(
    body: dict[str, Any], expected: dict[str, Any]
) -> None:
    """What the gateway cannot serve is a 400 that says so, never a silently different answer."""
    assert error_of(body) == expected


def test_empty_input_continues_a_stored_conversation() -> None:
    """An empty ``input`` is accepted when ``previous_response_id`` brings the conversation."""
    request = validate_responses({"model": "m", "input": [], "previous_response_id": "resp_1"})
    assert request.items == []


def test_function_tools_and_tool_choices() -> None:
    """Function tools parse in order; every tool choice OpenAI defines for functions is valid."""
    tools = [
        {"type": "function", "name": "a", "parameters": {"type": "object"}, "strict": True},
        {"type": "function", "name": "b", "description": "B"},
    ]
    for choice in (
        "none",
        "auto",
        "required",
        {"type": "function", "name": "a"},
        {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]},
    ):
        request = validate_responses(
            {"model": "m", "input": "x", "tools": tools, "tool_choice": choice}
        )
        assert [(t.name, t.description, t.parameters, t.strict) for t in request.tools] == [
            ("a", None, {"type": "object"}, True),
            ("b", "B", None, None),
        ]


def test_parse_body_is_chats() -> None:
    """The raw body is decoded by chat's decoder, with its errors."""
    assert parse_body(b'{"model": "m", "input": "hi"}') == {"model": "m", "input": "hi"}
    with pytest.raises(InvalidRequestError) as caught:
        parse_body(b"[1]")
    assert caught.value.to_dict()["error"] == bad(
        "The request body must be a JSON object.", None, "invalid_json"
    )
