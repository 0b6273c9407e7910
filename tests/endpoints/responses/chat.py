"""OpenAI-shaped chat completion output for the tests: one answer, as a stream or a completion.

An :class:`Output` is what an engine produced (reasoning, text, tool calls as fragments, the
finish reason, usage); :func:`chunks` streams it the way OpenAI and vLLM do, one fragment per
chunk, and :func:`completion` is the same output not streamed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

TOP = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "engine-m",
}
USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 3},
}


@dataclasses.dataclass
class Call:
    """One tool call: its id, function name, and arguments as streamed fragments."""

    id: str
    name: str
    arguments: list[str]


@dataclasses.dataclass
class Output:
    """One answer, each text as the fragments an engine streams."""

    reasoning: list[str] = dataclasses.field(default_factory=list)
    content: list[str] = dataclasses.field(default_factory=list)
    calls: list[Call] = dataclasses.field(default_factory=list)
    finish_reason: str | None = "stop"
    usage: dict[str, Any] | None = dataclasses.field(default_factory=lambda: dict(USAGE))
    logprobs: bool = False
    """Give each content fragment a logprob entry (``bytes`` null on odd fragments)."""


def logprob(index: int, token: str) -> dict[str, Any]:
    """A chat logprob entry for content fragment ``index``."""
    raw = None if index % 2 else list(token.encode())
    top = [{"token": token, "logprob": -0.5, "bytes": raw}]
    return {"token": token, "logprob": -0.5 - index, "bytes": raw, "top_logprobs": top}


def chunk(
    delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None
) -> dict[str, Any]:
    """One chunk of choice 0."""
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {**TOP, "choices": [choice]}


def chunks(output: Output) -> list[dict[str, Any]]:
    """The stream of ``output``: role first, one chunk per fragment, finish, then usage."""
    first: dict[str, Any] = {"role": "assistant", "content": ""}
    if output.calls and not output.content and not output.reasoning:
        first["content"] = None
    out = [chunk(first)]
    out += [chunk({"reasoning_content": r}) for r in output.reasoning]
    for i, text in enumerate(output.content):
        logprobs = {"content": [logprob(i, text)], "refusal": None} if output.logprobs else None
        out.append(chunk({"content": text}, logprobs=logprobs))
    for index, call in enumerate(output.calls):
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        out.append(chunk({"tool_calls": [head]}))
        out += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": a}}]})
            for a in call.arguments
        ]
    out.append(chunk({}, output.finish_reason))
    if output.usage is not None:
        out.append({**TOP, "choices": [], "usage": output.usage})
    return out


def completion(output: Output) -> dict[str, Any]:
    """The non-stream ``chat.completion`` of ``output``."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(output.content) or None}
    if output.reasoning:
        message["reasoning_content"] = "".join(output.reasoning)
    if output.calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": "".join(c.arguments)},
            }
            for c in output.calls
        ]
    logprobs = None
    if output.logprobs:
        logprobs = {
            "content": [logprob(i, t) for i, t in enumerate(output.content)],
            "refusal": None,
        }
    return {
        **TOP,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": output.finish_reason,
            }
        ],
        "usage": output.usage,
    }
