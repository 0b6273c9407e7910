"""A record's conversation as chat turns: system, user, assistant and tool turns, tool calls with
their arguments, reasoning apart.

Text is markdown rendered by markdown-it with raw HTML off (``js-default``): whatever a prompt or
an answer holds, ``<script>`` or ``<img onerror>`` comes out as text, and links with a
``javascript:`` (or ``vbscript:``, ``file:``, ``data:``) target are not made links.  Templates
mark only this output safe.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final

from markdown_it import MarkdownIt
from markupsafe import Markup

_markdown: Final = MarkdownIt("js-default")


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the assistant made."""

    id: str
    name: str
    arguments: str
    """The arguments, pretty-printed when they are JSON."""


@dataclasses.dataclass(frozen=True, slots=True)
class Turn:
    """One message of the conversation."""

    role: str
    html: Markup
    """The content, rendered (empty when there is none)."""
    reasoning: str = ""
    """The model's reasoning, shown apart from the answer."""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    """For a tool turn: the call it answers."""
    name: str = ""
    """The message's ``name`` (or the tool's)."""
    answer: bool = False
    """Whether this turn is the response (not part of the request)."""


def render_markdown(text: str) -> Markup:
    """``text`` as safe HTML (see the module docstring)."""
    return Markup(_markdown.render(text))  # markdown-it escaped it: raw HTML is off


def conversation(record: dict[str, Any]) -> list[Turn]:
    """The turns of a record's request and response (none for a record without bodies)."""
    request = record.get("request") if isinstance(record.get("request"), dict) else {}
    response = record.get("response") if isinstance(record.get("response"), dict) else {}
    assert isinstance(request, dict) and isinstance(response, dict)
    turns: list[Turn] = []
    if isinstance(request.get("instructions"), str):
        turns.append(Turn("system", render_markdown(request["instructions"])))
    messages = request.get("messages")
    if isinstance(messages, list):
        turns.extend(_message(m) for m in messages if isinstance(m, dict))
    items = request.get("input")
    if isinstance(items, str):
        turns.append(Turn("user", render_markdown(items)))
    elif isinstance(items, list):
        turns.extend(_item(i) for i in items if isinstance(i, dict))
    if isinstance(request.get("prompt"), str):
        turns.append(Turn("user", render_markdown(request["prompt"])))
    for choice in response.get("choices") or []:
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            turns.append(dataclasses.replace(_message(choice["message"]), answer=True))
        elif isinstance(choice, dict) and isinstance(choice.get("text"), str):
            turns.append(Turn("assistant", render_markdown(choice["text"]), answer=True))
    for item in response.get("output") or []:
        if isinstance(item, dict):
            turns.append(dataclasses.replace(_item(item), answer=True))
    return turns


def _message(message: dict[str, Any]) -> Turn:
    calls = tuple(_tool_call(c) for c in message.get("tool_calls") or [] if isinstance(c, dict))
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    refusal = message.get("refusal")
    text = _text(message.get("content"))
    if isinstance(refusal, str) and refusal:
        text = f"{text}\n\n**Refused:** {refusal}" if text else f"**Refused:** {refusal}"
    return Turn(
        str(message.get("role", "")),
        render_markdown(text) if text else Markup(""),
        reasoning=reasoning if isinstance(reasoning, str) else _pretty(reasoning),
        tool_calls=calls,
        tool_call_id=str(message.get("tool_call_id") or ""),
        name=str(message.get("name") or ""),
    )


def _tool_call(call: dict[str, Any]) -> ToolCall:
    function = call.get("function")
    fn: dict[str, Any] = function if isinstance(function, dict) else {}
    return ToolCall(str(call.get("id", "")), str(fn.get("name", "")), _pretty(fn.get("arguments")))


def _item(item: dict[str, Any]) -> Turn:
    """A Responses API input or output item."""
    kind = item.get("type", "message")
    if kind == "function_call":
        call = ToolCall(
            str(item.get("call_id", "")), str(item.get("name", "")), _pretty(item.get("arguments"))
        )
        return Turn("assistant", Markup(""), tool_calls=(call,))
    if kind == "function_call_output":
        output = _text(item.get("output"))
        return Turn("tool", render_markdown(output), tool_call_id=str(item.get("call_id", "")))
    if kind == "reasoning":
        parts = [_text(item.get("content")), _text(item.get("summary"))]
        return Turn("assistant", Markup(""), reasoning="\n".join(p for p in parts if p))
    return Turn(str(item.get("role", "assistant")), render_markdown(_text(item.get("content"))))


def _text(content: Any) -> str:
    """The text of a message content: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and part.get("type"):
                texts.append(f"*[{part['type']}]*")
        return "\n\n".join(texts)
    return "" if content is None else json.dumps(content)


def _pretty(arguments: Any) -> str:
    """Tool-call arguments, indented when they are JSON (as text otherwise)."""
    if isinstance(arguments, str):
        try:
            return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
        except ValueError:
            return arguments
    return json.dumps(arguments, indent=2, ensure_ascii=False)
