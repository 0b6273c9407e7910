"""The mock's tokenizer, vocabulary and prose: what its tokens are and how it counts them.

One tokenizer (:func:`split_tokens`: a word or a punctuation mark with the whitespace before it)
counts the prompt (message texts, names, tool calls, tool definitions) and the completion, so
``usage`` agrees with the deltas streamed whatever the text is (prose, JSON, tool arguments).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Final

__all__ = [
    "SPACED",
    "VOCABULARY",
    "between",
    "count_tokens",
    "prompt_tokens",
    "split_tokens",
    "words",
]

_TOKEN: Final = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
_WORDS: Final = (
    "the a of and to in is that it for on with as was at by this be from or are an which "
    "model token stream audit record gateway request response answer question data system "
    "light river stone cloud forest signal bridge garden window morning quiet bright swift "
    "ancient simple careful steady open clear small large early late north south blue green "
    "runs holds builds keeps turns finds makes shows reads writes moves grows"
)
VOCABULARY: Final = tuple(_WORDS.split())
"""The words the mock writes with."""
SPACED: Final = tuple(f" {word}" for word in VOCABULARY)
"""The vocabulary as tokens that follow another word (a leading space)."""
_CAPITALISED: Final = {word: word.title() for word in SPACED}


def split_tokens(text: str) -> list[str]:
    """The mock's tokens of ``text``; they concatenate back to ``text`` exactly."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens the mock counts in ``text``."""
    return len(_TOKEN.findall(text))


def between(rng: random.Random, low: int, high: int) -> int:
    """An integer in ``[low, high]``: ``rng.randint`` in one C call instead of three Python ones
    (the mock draws a dozen per request)."""
    return low + int(rng.random() * (high - low + 1))


def words(rng: random.Random, count: int) -> list[str]:
    """``count`` tokens of sentence-like text: capitalised words, commas, full stops."""
    # One bulk draw of words and two draws per sentence: this runs for every mock request.
    drawn = rng.choices(SPACED, k=count)
    draw = rng.random
    tokens: list[str] = []
    length, target, comma = 0, 4 + int(draw() * 9), 3 + int(draw() * 14)
    for position, word in enumerate(drawn):
        if length and tokens[-1] != "," and (length >= target or position == count - 1):
            tokens.append(".")
            length, target, comma = 0, 4 + int(draw() * 9), 3 + int(draw() * 14)
        elif length == comma:
            tokens.append(",")
            comma = -1
        else:
            token = _CAPITALISED[word] if length == 0 else word
            tokens.append(token if position else token[1:])
            length += 1
    return tokens


def prompt_tokens(
    messages: list[Any], tools: Any, response_schema: dict[str, Any] | None = None
) -> int:
    """Tokens of a conversation, its tool definitions and its ``response_format`` schema, as
    the mock counts them."""
    total = 0 if response_schema is None else count_tokens(json.dumps(response_schema))
    for message in messages:
        if not isinstance(message, dict):
            continue
        for key in ("role", "name", "content", "tool_call_id"):
            total += _text_tokens(message.get(key))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += _text_tokens(function.get("name")) + _text_tokens(
                    function.get("arguments")
                )
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            total += _text_tokens(function.get("name")) + _text_tokens(function.get("description"))
            if "parameters" in function:
                total += count_tokens(json.dumps(function["parameters"], sort_keys=True))
    return total


def _text_tokens(value: Any) -> int:
    """Tokens of a message field: a string, or the texts of a list of content parts."""
    if isinstance(value, str):
        return count_tokens(value)
    if isinstance(value, list):
        return sum(
            _text_tokens(part.get("text") or part.get("refusal"))
            for part in value
            if isinstance(part, dict)
        )
    return 0
