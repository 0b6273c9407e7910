"""Parsing and validating a ``POST /v1/responses`` body (OpenAI's Responses API).

The body stays the client's JSON (a dict, unknown fields kept); validation checks the fields the
gateway reads, turns ``input`` into typed items, and raises every problem as an OpenAI-style 400
naming the parameter as OpenAI does (``input[2].content[0].type``).  :func:`parse_body` (shared
with chat) decodes the raw bytes first.

What the gateway refuses, with a 400 that says so (``code: "unsupported_parameter"`` or
``"invalid_value"``), rather than answering something else than was asked:

- ``background: true`` — the gateway answers within the request; there is nothing to poll.
- ``conversation`` — there is no Conversations API here; ``previous_response_id`` continues a
  stored conversation instead.
- ``prompt`` — hosted prompt templates live at OpenAI.
- tools other than ``function`` (``web_search``, ``file_search``, ``mcp``, ...), and a
  ``tool_choice`` that names one: hosted tools need OpenAI's platform.
- the input items and content parts :mod:`~auditgate.endpoints.responses.items` refuses.

Limits as for chat: ``metadata`` at most 16 pairs, keys up to 64 characters, values up to 512;
``max_output_tokens`` at least 1 (OpenAI asks 16; small limits are useful in front of small
models); ``top_logprobs`` 0 to 20.  ``store`` defaults to true, as at OpenAI.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal

import msgspec

from auditgate.endpoints.responses.items import (
    Item,
    Message,
    convert,
    invalid_value,
    parse_items,
    validation_error,
)
from auditgate.errors import InvalidRequestError
from auditgate.pipeline.request import parse_body, validate_metadata

__all__ = [
    "FunctionTool",
    "ResponsesParams",
    "ResponsesRequest",
    "TextFormat",
    "parse_body",
    "validate_responses",
]


class FunctionTool(msgspec.Struct, kw_only=True):
    """A ``{"type": "function", ...}`` tool: the only tool type the gateway serves."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(msgspec.Struct, kw_only=True):
    type: str
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(msgspec.Struct, kw_only=True):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None
    """Deprecated spelling of ``summary``."""


class StreamOptions(msgspec.Struct, kw_only=True):
    include_obfuscation: bool | None = None


class ResponsesParams(msgspec.Struct, kw_only=True):
    """The fields of a Responses request the gateway reads; the rest stays in the body."""

    model: str
    input: str | list[Any]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    top_logprobs: int | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """One validated Responses request."""

    body: dict[str, Any]
    """The request body as received; never mutated."""
    params: ResponsesParams
    """The validated fields of ``body``."""
    items: list[Item]
    """``input`` as items (a string input is one user message)."""
    tools: list[FunctionTool]
    """The function tools of ``tools``, in order."""

    @property
    def store(self) -> bool:
        """Whether the response is stored: ``store`` defaults to true, as at OpenAI."""
        return self.params.store is not False

    @property
    def logprobs(self) -> bool:
        """Whether the client asked for the output text's log probabilities."""
        include = self.params.include
        return include is not None and "message.output_text.logprobs" in include


_TOOL_CHOICE_MODES: Final = ("none", "auto", "required")
_TEXT_FORMATS: Final = ("text", "json_object", "json_schema")


def validate_responses(body: dict[str, Any]) -> ResponsesRequest:
    """Check the fields the gateway reads; raise a 400 naming the parameter."""
    try:
        params = msgspec.convert(body, ResponsesParams)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    _refuse_unsupported(params)
    if isinstance(params.input, str):
        items: list[Item] = [Message(role="user", content=params.input)]
    else:
        items = parse_items(params.input)
        if not items and params.previous_response_id is None:
            raise InvalidRequestError(
                "'input' must contain at least one item.", param="input", code="invalid_value"
            )
    tools = [_parse_tool(tool, f"tools[{i}]") for i, tool in enumerate(params.tools or ())]
    if params.tool_choice is not None:
        _check_tool_choice(params.tool_choice)
    _check_ranges(params)
    if params.metadata is not None:
        validate_metadata(params.metadata)
    if params.text is not None and params.text.format is not None:
        _check_text_format(params.text.format)
    return ResponsesRequest(body=body, params=params, items=items, tools=tools)


def _refuse_unsupported(params: ResponsesParams) -> None:
    refusals = (
        (
            params.background,
            "background",
            "Background responses are not supported by this gateway: it answers within "
            "the request.",
        ),
        (
            params.conversation is not None,
            "conversation",
            "Conversations are not supported by this gateway: continue a stored "
            "conversation with 'previous_response_id'.",
        ),
        (
            params.prompt is not None,
            "prompt",
            "Prompt templates ('prompt') are not supported by this gateway.",
        ),
    )
    for refused, param, message in refusals:
        if refused:
            raise InvalidRequestError(message, param=param, code="unsupported_parameter")


def _parse_tool(tool: dict[str, Any], where: str) -> FunctionTool:
    kind = tool.get("type")
    if kind != "function":
        if not isinstance(kind, str):
            raise InvalidRequestError(
                f"Missing required parameter: '{where}.type'.",
                param=f"{where}.type",
                code="missing_required_parameter",
            )
        raise InvalidRequestError(
            f"The tool type {kind!r} is not supported by this gateway: only 'function' tools are.",
            param=f"{where}.type",
            code="invalid_value",
        )
    return convert(tool, FunctionTool, where)


def _check_tool_choice(choice: str | dict[str, Any]) -> None:
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            raise invalid_value(choice, _TOOL_CHOICE_MODES, "tool_choice")
        return
    kind = choice.get("type")
    if kind == "function":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequestError(
                "Missing required parameter: 'tool_choice.name'.",
                param="tool_choice.name",
                code="missing_required_parameter",
            )
    elif kind == "allowed_tools":
        _check_allowed_tools(choice)
    elif kind is None:
        raise InvalidRequestError(
            "Missing required parameter: 'tool_choice.type'.",
            param="tool_choice.type",
            code="missing_required_parameter",
        )
    else:
        raise InvalidRequestError(
            f"The tool choice type {kind!r} is not supported by this gateway: only 'none', "
            "'auto', 'required', a function or 'allowed_tools' are.",
            param="tool_choice.type",
            code="invalid_value",
        )


def _check_allowed_tools(choice: dict[str, Any]) -> None:
    if choice.get("mode") not in ("auto", "required"):
        raise invalid_value(choice.get("mode"), ("auto", "required"), "tool_choice.mode")
    allowed = choice.get("tools")
    if not isinstance(allowed, list):
        raise InvalidRequestError(
            "Missing required parameter: 'tool_choice.tools'.",
            param="tool_choice.tools",
            code="missing_required_parameter",
        )
    for i, tool in enumerate(allowed):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequestError(
                "Only 'function' tools can be allowed by this gateway.",
                param=f"tool_choice.tools[{i}].type",
                code="invalid_value",
            )
        if not isinstance(tool.get("name"), str):
            raise InvalidRequestError(
                f"Missing required parameter: 'tool_choice.tools[{i}].name'.",
                param=f"tool_choice.tools[{i}].name",
                code="missing_required_parameter",
            )


def _check_ranges(params: ResponsesParams) -> None:
    for name, value, low, high in (
        ("max_output_tokens", params.max_output_tokens, 1, None),
        ("max_tool_calls", params.max_tool_calls, 0, None),
        ("top_logprobs", params.top_logprobs, 0, 20),
    ):
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            expected = f"at least {low}" if high is None else f"{low} to {high}"
            raise InvalidRequestError(
                f"{value} is not a valid value for '{name}': expected {expected}.",
                param=name,
                code="invalid_value",
            )


def _check_text_format(fmt: TextFormat) -> None:
    if fmt.type not in _TEXT_FORMATS:
        raise invalid_value(fmt.type, _TEXT_FORMATS, "text.format.type")
    if fmt.type == "json_schema":
        for name, value in (("name", fmt.name), ("schema", fmt.schema)):
            if value is None:
                raise InvalidRequestError(
                    f"Missing required parameter: 'text.format.{name}'.",
                    param=f"text.format.{name}",
                    code="missing_required_parameter",
                )
