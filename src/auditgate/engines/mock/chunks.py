"""The mock's answer as a stream of ``chat.completion.chunk`` dicts, shaped like OpenAI's.

Per choice: a first chunk ``{"role": "assistant", "content": "", "refusal": null}`` (for tool
calls ``content: null`` and, unless reasoning comes first, the first call's header: id, type,
name, empty arguments), then one chunk per token (reasoning, content, or an argument fragment;
the first fragment of every later call carries that call's header), then one chunk with the
``finish_reason``, and with ``stream_options.include_usage`` OpenAI's final usage chunk.  With
logprobs, the first chunk of a text choice carries ``{"content": [], "refusal": null}`` and each
content chunk its token's entry.  The chunks of all choices are interleaved token step by token
step; the aggregate of the stream equals the non-stream response.
"""

from __future__ import annotations

from typing import Any

from auditgate.engines.mock.choices import Choice

__all__ = ["Top", "chunks"]

Top = dict[str, Any]
"""The fields every chunk of a response repeats (``id``, ``object``, ``created``, ...)."""


def chunks(
    top: Top, choices: list[Choice], usage: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every chunk of the stream, and where each timed batch ends (one token step per batch).

    ``usage``: the final usage chunk's usage, ``None`` when the client did not ask for one (then
    no chunk has a ``usage`` key)."""
    with_usage = usage is not None
    out: list[dict[str, Any]] = []
    # Per choice: its deltas after the first chunk, and their logprobs (None: none asked).
    steps: list[tuple[int, list[dict[str, Any]], list[Any] | None]] = []
    for c in choices:
        deltas: list[dict[str, Any]] = [{"reasoning_content": t} for t in c.reasoning]
        logprobs: list[Any] | None = None
        if c.content is not None:
            first = {"role": "assistant", "content": "", "refusal": None}
            opening: dict[str, Any] | None = None
            if c.logprobs is not None:
                opening = {"content": [], "refusal": None}
                logprobs = [None] * len(deltas)
                logprobs += [{"content": [entry], "refusal": None} for entry in c.logprobs]
            out.append(_chunk(top, c.index, first, opening, None, with_usage))
            deltas += [{"content": t} for t in c.content]
        else:
            out.append(_chunk(top, c.index, _opening_call(c), None, None, with_usage))
            deltas += [{"tool_calls": [f]} for f in _fragments(c)]
        steps.append((c.index, deltas, logprobs))
    ends: list[int] = []
    for position in range(max(len(deltas) for _, deltas, _ in steps)):
        for index, deltas, logprobs in steps:
            if position < len(deltas):
                lp = None if logprobs is None else logprobs[position]
                out.append(_chunk(top, index, deltas[position], lp, None, with_usage))
        ends.append(len(out))
    out += [_chunk(top, c.index, {}, None, c.finish_reason, with_usage) for c in choices]
    if usage is not None:
        out.append({**top, "choices": [], "usage": usage})
    # The finish and usage chunks go out with the last token.
    if ends:
        ends[-1] = len(out)
    else:
        ends.append(len(out))
    return out, ends


def _chunk(  # noqa: PLR0917 - per token: positional arguments are the cheap call
    top: Top,
    index: int,
    delta: dict[str, Any],
    logprobs: Any,
    finish: str | None,
    with_usage: bool,
) -> dict[str, Any]:
    out = {
        **top,
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        ],
    }
    if with_usage:
        out["usage"] = None
    return out


def _opening_call(c: Choice) -> dict[str, Any]:
    """A tool-call choice's first delta: OpenAI's ``content: null``, and the first call's
    header unless reasoning comes first."""
    first: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if c.calls and not c.reasoning:
        call = c.calls[0]
        first["tool_calls"] = [
            {"index": 0, "id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": ""}}
        ]  # fmt: skip
    return first


def _fragments(c: Choice) -> list[dict[str, Any]]:
    """One tool-call fragment per argument token; a call's header rides with its first
    fragment when the opening chunk did not carry it, so every token step carries one token."""
    fragments: list[dict[str, Any]] = []
    for number, call in enumerate(c.calls):
        for position, token in enumerate(call.arguments):
            fragment: dict[str, Any] = {"index": number, "function": {"arguments": token}}
            if position == 0 and (number or c.reasoning):
                fragment = {"index": number, "id": call.id, "type": "function",
                            "function": {"name": call.name, "arguments": token}}  # fmt: skip
            fragments.append(fragment)
    return fragments
