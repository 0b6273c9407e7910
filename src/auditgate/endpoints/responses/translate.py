"""Translation between the Responses API and chat completions, for engines that speak only chat.

:func:`to_chat_body` makes the chat completion request a Responses request amounts to;
:func:`to_response` makes the ``response`` object a ``chat.completion`` amounts to.

Request mapping:

- ``instructions`` -> a leading ``system`` message.  OpenAI defines instructions as a system (or
  developer) message; chat treats ``system`` as ``developer`` on models that have the latter,
  and every open-weights chat template knows ``system``.  Only the current request's
  instructions apply: earlier turns' are not carried over (OpenAI's rule).
- items, oldest first (a stored conversation, then ``input``): messages keep their role, their
  parts become chat parts (``input_text`` -> ``text``, a lone one a plain string;
  ``input_image`` -> ``image_url``; ``input_file`` -> ``file``); an assistant message's text
  parts are joined into its ``content`` and its refusals into ``refusal``; ``function_call``
  items become the ``tool_calls`` of the assistant message they follow (or of a new one); a
  ``function_call_output`` becomes a ``tool`` message; a ``reasoning`` item's
  ``reasoning_text`` becomes the ``reasoning_content`` of the assistant message that follows
  it (dropped when none follows; summaries are not the chain of thought and are not sent).
- ``tools`` -> chat function tools; ``tool_choice`` (``none``/``auto``/``required``, a
  function, ``allowed_tools``) and ``parallel_tool_calls`` -> the same in chat's shape;
  ``max_output_tokens`` -> ``max_completion_tokens``; ``text.format`` -> ``response_format``
  and ``text.verbosity`` -> ``verbosity``; ``reasoning.effort`` -> ``reasoning_effort``;
  ``include: ["message.output_text.logprobs"]`` -> ``logprobs: true`` (with ``top_logprobs``);
  ``temperature``, ``top_p``, ``user``, ``service_tier``, ``safety_identifier``,
  ``prompt_cache_key`` and ``prompt_cache_retention`` as they are; a stream asks for usage
  (``stream_options.include_usage``) so the final event has it.
- The gateway's own fields (``store``, ``metadata``, ``previous_response_id``, ``truncation``,
  ``include``, ``stream_options``, ``background``) are not forwarded, nor are chat fields the
  translation owns (``messages``, ``n``, ``max_tokens``, ...).  Any other field (an engine's
  extension such as vLLM's ``top_k``) is forwarded as the client sent it.  ``truncation:
  "auto"`` is echoed in the response but not applied: the engine's context limit decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from auditgate.endpoints.responses.items import (
    AssistantMessage,
    FunctionCall,
    FunctionCallOutput,
    InputContent,
    InputFile,
    InputImage,
    InputText,
    Item,
    Message,
    OutputText,
    Reasoning,
    parse_items,
)
from auditgate.endpoints.responses.objects import (
    INCOMPLETE_REASONS,
    final_response,
    function_call_item,
    item_id,
    message_item,
    output_logprobs,
    reasoning_item,
    response_shell,
    text_part,
)
from auditgate.endpoints.responses.protocol import FunctionTool, ResponsesRequest, TextFormat
from auditgate.errors import InvalidRequestError

__all__ = ["chat_messages", "to_chat_body", "to_response"]

_NOT_FORWARDED: Final = frozenset(
    {
        # Responses fields, mapped below or the gateway's own.
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "store",
        "stream",
        "stream_options",
        "previous_response_id",
        "text",
        "reasoning",
        "truncation",
        "include",
        "top_logprobs",
        "background",
        "conversation",
        "prompt",
        "context_management",
        # Chat fields the translation owns, or that would change the response's shape.
        "messages",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "logprobs",
        "response_format",
        "reasoning_effort",
        "verbosity",
        "functions",
        "function_call",
        "modalities",
        "audio",
    }
)
_AS_IS: Final = (
    "temperature",
    "top_p",
    "user",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
)


def to_chat_body(
    request: ResponsesRequest, history: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The chat completion request for ``request``, after the stored conversation ``history``
    (the items of :func:`~auditgate.endpoints.responses.history.context_items`)."""
    p = request.params
    earlier = _stored_items(history) if history else []
    body: dict[str, Any] = {
        "model": p.model,
        "messages": chat_messages(p.instructions, [*earlier, *request.items]),
    }
    if p.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.tools:
        body["tools"] = [_chat_tool(tool) for tool in request.tools]
    if p.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(p.tool_choice)
    if p.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = p.parallel_tool_calls
    if p.max_output_tokens is not None:
        body["max_completion_tokens"] = p.max_output_tokens
    if p.text is not None:
        if p.text.format is not None and p.text.format.type != "text":
            body["response_format"] = _response_format(p.text.format)
        if p.text.verbosity is not None:
            body["verbosity"] = p.text.verbosity
    if p.reasoning is not None and p.reasoning.effort is not None:
        body["reasoning_effort"] = p.reasoning.effort
    if request.logprobs:
        body["logprobs"] = True
        if p.top_logprobs is not None:
            body["top_logprobs"] = p.top_logprobs
    for name in _AS_IS:
        value = request.body.get(name)
        if value is not None:
            body[name] = value
    for name, value in request.body.items():
        if name not in _NOT_FORWARDED and name not in body and name not in _AS_IS:
            body[name] = value
    return body


def to_response(
    completion: dict[str, Any],
    request: ResponsesRequest,
    *,
    request_id: str,
    created_at: int,
    completed_at: int,
) -> dict[str, Any]:
    """The ``response`` object for a (non-streamed) ``chat.completion`` of ``request``.

    It is the object :class:`~auditgate.endpoints.responses.events.ResponseStreamWriter` ends
    with when the completion is streamed to it as one chunk — the same items, ids, parts and
    statuses (the tests hold the two equal over every kind of output) — built directly, without
    the events a stream needs: a non-stream request pays for the object only (a quarter of the
    writer's cost).
    """
    choices = completion.get("choices") or []
    choice = next((c for c in choices if c.get("index", 0) == 0), None)
    output: list[dict[str, Any]] = []
    finish_reason = None
    if choice is not None:
        finish_reason = choice.get("finish_reason")
        message = choice.get("message") or {}
        _output_items(message, choice.get("logprobs"), request, request_id, output)
    reason = INCOMPLETE_REASONS.get(finish_reason) if finish_reason is not None else None
    status = "completed" if finish_reason is not None and reason is None else "incomplete"
    if output:
        output[-1]["status"] = status  # the last item ends as the response does
    return final_response(
        response_shell(request, request_id=request_id, created_at=created_at),
        status=status,
        output=output,
        usage=completion.get("usage"),
        model=completion.get("model"),
        service_tier=completion.get("service_tier"),
        completed_at=completed_at,
        incomplete_reason=reason,
    )


def _output_items(
    message: dict[str, Any],
    logprobs: dict[str, Any] | None,
    request: ResponsesRequest,
    request_id: str,
    output: list[dict[str, Any]],
) -> None:
    """Append the items of one assistant ``message`` to ``output`` (statuses ``completed``),
    in the writer's order: reasoning, the message (text, then refusal), each tool call."""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        summary = request.params.reasoning is not None and bool(
            request.params.reasoning.summary or request.params.reasoning.generate_summary
        )
        kind = "summary_text" if summary else "reasoning_text"
        index = len(output)
        parts = [{"type": kind, "text": reasoning}]
        output.append(reasoning_item(item_id("rs", request_id, index), parts, "completed"))
    content = message.get("content")
    refusal = message.get("refusal")
    if content or refusal:
        parts = []
        if content:
            entries = logprobs.get("content") if logprobs else None
            parts.append(text_part(content, output_logprobs(entries) if entries else []))
        if refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        index = len(output)
        output.append(message_item(item_id("msg", request_id, index), parts, "completed"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        index = len(output)
        output.append(
            function_call_item(
                item_id("fc", request_id, index),
                call.get("id") or item_id("call", request_id, index),
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )


def chat_messages(instructions: str | None, items: Sequence[Item]) -> list[dict[str, Any]]:
    """Chat messages for ``instructions`` and ``items`` (see the module's mapping)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    reasoning: list[str] = []
    for item in items:
        if isinstance(item, Message):
            messages.append({"role": item.role, "content": _chat_content(item.content)})
        elif isinstance(item, AssistantMessage):
            messages.append(_assistant(item, reasoning))
            reasoning = []
        elif isinstance(item, FunctionCall):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not reasoning:
                last.setdefault("tool_calls", []).append(call)
            else:
                message: dict[str, Any] = {"role": "assistant", "content": None}
                if reasoning:
                    message["reasoning_content"] = "".join(reasoning)
                    reasoning = []
                message["tool_calls"] = [call]
                messages.append(message)
        elif isinstance(item, FunctionCallOutput):
            content = _chat_content(item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": content})
        elif isinstance(item, Reasoning):
            reasoning.extend(part.text for part in item.content or ())
    return messages


def _assistant(item: AssistantMessage, reasoning: list[str]) -> dict[str, Any]:
    content = item.content
    if isinstance(content, str):
        text, refusal = content, ""
    else:
        text = "".join(p.text for p in content if isinstance(p, OutputText))
        refusal = "".join(p.refusal for p in content if not isinstance(p, OutputText))
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if refusal:
        message["refusal"] = refusal
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return message


def _chat_content(content: str | list[InputContent]) -> str | list[dict[str, Any]]:
    """Chat content: one text part is sent as a string, which every chat template reads."""
    if isinstance(content, str):
        return content
    if len(content) == 1 and isinstance(content[0], InputText):
        return content[0].text
    return [_chat_part(part) for part in content]


def _chat_part(part: InputContent) -> dict[str, Any]:
    if isinstance(part, InputText):
        return {"type": "text", "text": part.text}
    if isinstance(part, InputImage):
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    assert isinstance(part, InputFile)
    file = {
        name: value
        for name, value in (
            ("file_data", part.file_data),
            ("file_id", part.file_id),
            ("filename", part.filename),
        )
        if value is not None
    }
    return {"type": "file", "file": file}


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice["type"] == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    tools = [{"type": "function", "function": {"name": t["name"]}} for t in choice["tools"]]
    return {"type": "allowed_tools", "allowed_tools": {"mode": choice["mode"], "tools": tools}}


def _response_format(fmt: TextFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _stored_items(history: Sequence[dict[str, Any]]) -> list[Item]:
    try:
        return parse_items(list(history), "previous_response_id")
    except InvalidRequestError as exc:
        # Stored items were validated (or made) by the gateway; one it cannot read now is
        # damage in the store, reported against the parameter that brought it in.
        raise InvalidRequestError(
            f"The conversation of 'previous_response_id' holds an item this gateway cannot "
            f"read: {exc.message}",
            param="previous_response_id",
            code="invalid_value",
        ) from None
