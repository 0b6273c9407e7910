"""One choice of the mock's answer: what it says, as tokens, before it is sent whole or streamed.

A choice is reasoning (when asked for), then either content — prose, or JSON under
``response_format`` — or tool calls, cut by ``stop`` (content only) and by the token budget
(``max_tokens`` / ``max_completion_tokens``, reasoning included; then ``finish_reason`` is
``"length"``).  Content tokens carry logprobs when the request asks for them.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from auditgate.engines.mock.logprobs import token_logprobs
from auditgate.engines.mock.structured import JsonFormat, json_tokens
from auditgate.engines.mock.text import between, split_tokens, words
from auditgate.engines.mock.tools import Call, ToolPlan, make_calls

__all__ = ["Choice", "Options", "generate", "message_of"]

_LOGPROB_SEED = 1 << 130
"""Added to a choice's seed for its logprob PRNG, so that logprobs never change the text."""


@dataclasses.dataclass(slots=True)
class Choice:
    """One choice's output, as tokens (deltas)."""

    index: int
    reasoning: list[str]
    content: list[str] | None
    """``None`` when the answer is tool calls."""
    calls: list[Call]
    """Tool calls that have at least one argument token within the budget."""
    finish_reason: str
    logprobs: list[dict[str, Any]] | None = None
    """One entry per content token when logprobs were asked for (text answers only)."""

    @property
    def tokens(self) -> int:
        count = len(self.reasoning) + len(self.content or ())
        if self.calls:
            count += sum(len(call.arguments) for call in self.calls)
        return count


@dataclasses.dataclass(slots=True)
class Options:
    """What shapes each choice's output, read from the request body (not frozen: a frozen
    dataclass's ``__init__`` costs a microsecond more, on every mock request)."""

    budget: int | None
    """``max_completion_tokens`` / ``max_tokens``."""
    stops: list[str]
    tools: ToolPlan | None
    reasoning: tuple[int, int] | None
    """Range of reasoning tokens, when ``reasoning_effort`` asks for reasoning."""
    json: JsonFormat | None = None
    top_logprobs: int | None = None
    """``None`` without ``logprobs: true``; else how many alternatives per token (0-20)."""


def generate(seed: int, index: int, options: Options) -> Choice:
    """One choice: reasoning, then content or tool calls, cut by ``stop`` and the budget."""
    rng = random.Random(seed)
    budget = options.budget
    reasoning = words(rng, between(rng, *options.reasoning)) if options.reasoning else []
    truncated = budget is not None and len(reasoning) >= budget
    if budget is not None:
        del reasoning[budget:]
    remaining = None if budget is None else budget - len(reasoning)
    if options.tools is not None:
        calls, cut = _within(make_calls(options.tools, rng), remaining)
        finish = "length" if cut or truncated else "tool_calls"
        return Choice(index, reasoning, None, calls, finish)
    if options.json is not None:
        content = json_tokens(options.json, rng)
    else:
        content = words(rng, between(rng, 8, 32))
    finish = "stop"
    if options.stops:
        text = "".join(content)
        cuts = [at for at in (text.find(s) for s in options.stops) if at >= 0]
        if cuts:
            content = split_tokens(text[: min(cuts)])
    if remaining is not None and len(content) > remaining:
        del content[remaining:]
        finish = "length"
    if truncated:
        finish = "length"
    logprobs = None
    if options.top_logprobs is not None:
        logprobs = token_logprobs(
            content, random.Random(seed + _LOGPROB_SEED), options.top_logprobs
        )
    return Choice(index, reasoning, content, [], finish, logprobs)


def _within(calls: list[Call], remaining: int | None) -> tuple[list[Call], bool]:
    """The calls whose arguments start within ``remaining`` tokens (the last one cut), and
    whether anything was cut."""
    if remaining is None:
        return calls, False
    kept: list[Call] = []
    for call in calls:
        if remaining <= 0:
            return kept, True
        if len(call.arguments) > remaining:
            del call.arguments[remaining:]
            kept.append(call)
            return kept, True
        remaining -= len(call.arguments)
        kept.append(call)
    return kept, False


def message_of(choice: Choice) -> dict[str, Any]:
    """The choice as a non-stream ``choices[]`` entry."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if choice.content is None else "".join(choice.content),
        "refusal": None,
    }
    if choice.reasoning:
        message["reasoning_content"] = "".join(choice.reasoning)
    if choice.calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": "".join(call.arguments)},
            }
            for call in choice.calls
        ]
    logprobs = None if choice.logprobs is None else {"content": choice.logprobs, "refusal": None}
    return {
        "index": choice.index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": choice.finish_reason,
    }
