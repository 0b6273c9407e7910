"""The ``mock`` engine: deterministic chat completions for demos, tests and benchmarks (DESIGN §5).

Output is a pure function of the request: words from a fixed vocabulary drawn by a PRNG seeded
with a BLAKE2b hash of ``model``, ``messages``, ``tools``, ``seed`` and the choice index, so the
same request gives the same text and a different seed or conversation a different one.  Knobs
that only cut the output (``max_tokens``, ``stop``) are not hashed: they truncate the text the
request would otherwise get.

Tokens: one tokenizer (:func:`split_tokens`: a word or a punctuation mark with the whitespace
before it) counts the prompt (message texts, names, tool calls, tool definitions) and the
completion.  One generated token is one chunk delta, so ``completion_tokens`` is the number of
``content`` / ``reasoning_content`` / ``arguments`` deltas streamed, and equals the tokenizer's
count of the texts they add up to.

Behaviour: 8-32 content tokens by default; ``max_tokens`` / ``max_completion_tokens`` (reasoning
included) truncate with ``finish_reason: "length"``; ``stop`` cuts the content before the first
stop string (``"stop"``); every one of ``n`` choices differs; ``reasoning_effort`` (other than
``"none"``) first emits ``reasoning_content`` (more for higher efforts); ``tools`` with
``tool_choice`` other than ``"none"`` call the named tool (or the first) with arguments generated
from its JSON-schema ``parameters``, streamed in several fragments (``"tool_calls"``);
``stream_options.include_usage`` adds OpenAI's final usage chunk.  ``logprobs`` are not produced
(always ``null``).

Streaming: the first chunk of a choice is ``{"role": "assistant", "content": ""}`` (for a tool
call, OpenAI's ``content: null`` plus the call's id and name, or the name rides with the first
argument fragment when reasoning came first), then one chunk per token, then one with the
``finish_reason``.  With no delays the whole stream is one batch; otherwise the engine sleeps
``ttft_s`` before the first token batch and ``itl_s`` before each next one, a batch holding one
token of every choice still generating.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from auditgate.engines.base import EngineRequest
from auditgate.engines.schema_values import fake_value
from auditgate.errors import ConfigError, InvalidRequestError, NotFoundError

__all__ = ["MockEngine", "count_tokens", "split_tokens"]

SYSTEM_FINGERPRINT: Final = "fp_auditgate_mock"
_TOKEN: Final = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
_WORDS: Final = (
    "the a of and to in is that it for on with as was at by this be from or are an which "
    "model token stream audit record gateway request response answer question data system "
    "light river stone cloud forest signal bridge garden window morning quiet bright swift "
    "ancient simple careful steady open clear small large early late north south blue green "
    "runs holds builds keeps turns finds makes shows reads writes moves grows"
)
_VOCABULARY: Final = tuple(_WORDS.split())
_SPACED: Final = tuple(f" {word}" for word in _VOCABULARY)
_CAPITALISED: Final = {word: word.title() for word in _SPACED}
_REASONING: Final = {"minimal": (2, 6), "low": (4, 12), "medium": (8, 24), "high": (16, 48)}


def split_tokens(text: str) -> list[str]:
    """The mock's tokens of ``text``; they concatenate back to ``text`` exactly."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens the mock counts in ``text``."""
    return len(_TOKEN.findall(text))


@dataclasses.dataclass(slots=True)
class _Choice:
    """One choice's output, as tokens (deltas)."""

    index: int
    reasoning: list[str]
    content: list[str] | None
    """``None`` when the answer is a tool call."""
    tool: tuple[str, str] | None
    """``(call id, function name)``, when a tool is called and at least one argument token fits."""
    arguments: list[str]
    finish_reason: str

    @property
    def tokens(self) -> int:
        return len(self.reasoning) + len(self.content or ()) + len(self.arguments)


@dataclasses.dataclass(frozen=True, slots=True)
class _Options:
    """What shapes each choice's output, read from the request body."""

    budget: int | None
    """``max_completion_tokens`` / ``max_tokens``."""
    stops: list[str]
    tool: dict[str, Any] | None
    """The function definition to call."""
    reasoning: tuple[int, int] | None
    """Range of reasoning tokens, when ``reasoning_effort`` asks for reasoning."""


@dataclasses.dataclass(slots=True)
class _Plan:
    """Everything a request produces, computed once for ``complete`` and ``stream`` alike."""

    model: str
    created: int
    choices: list[_Choice]
    usage: dict[str, Any]
    include_usage: bool


class MockEngine:
    """A deterministic engine serving ``models``; see the module docstring for the behaviour."""

    name = "mock"

    def __init__(
        self, models: Sequence[str] = ("mock",), *, ttft_s: float = 0.0, itl_s: float = 0.0
    ) -> None:
        if not models:
            raise ConfigError("AUDITGATE_MODELS: the mock engine needs at least one model id")
        if ttft_s < 0 or itl_s < 0:
            raise ConfigError("mock engine delays must be >= 0")
        self._models = tuple(models)
        self._known = frozenset(models)
        self._ttft_s = ttft_s
        self._itl_s = itl_s
        self._created = int(time.time())

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to release."""

    def models(self) -> list[dict[str, Any]]:
        """OpenAI model objects for the served models."""
        return [
            {"id": m, "object": "model", "created": self._created, "owned_by": "auditgate"}
            for m in self._models
        ]

    async def complete(self, request: EngineRequest) -> dict[str, Any]:
        """The non-stream ``chat.completion``: the aggregate of :meth:`stream` for this request."""
        plan = self._plan(request.body)
        choices = []
        for c in plan.choices:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if c.content is None else "".join(c.content),
            }
            if c.reasoning:
                message["reasoning_content"] = "".join(c.reasoning)
            if c.tool is not None:
                message["tool_calls"] = [
                    {
                        "id": c.tool[0],
                        "type": "function",
                        "function": {"name": c.tool[1], "arguments": "".join(c.arguments)},
                    }
                ]
            choices.append(
                {
                    "index": c.index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
            )
        return {
            "id": request.response_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": choices,
            "usage": plan.usage,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    async def stream(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of ``chat.completion.chunk`` dicts; errors are raised at the first batch."""
        plan = self._plan(request.body)
        chunks, ends = _chunks(plan, request.response_id)
        if not (self._ttft_s or self._itl_s):
            yield chunks
            return
        start = 0
        for number, end in enumerate(ends):
            await asyncio.sleep(self._itl_s if number else self._ttft_s)
            yield chunks[start:end]
            start = end

    def _plan(self, body: dict[str, Any]) -> _Plan:
        model = body.get("model")
        if not isinstance(model, str):
            raise InvalidRequestError("you must provide a model parameter", param="model")
        if model not in self._known:
            raise NotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise InvalidRequestError("'messages' must be an array", param="messages")
        n = _integer(body, "n", 128) or 1
        limit = (
            "max_tokens" if body.get("max_completion_tokens") is None else "max_completion_tokens"
        )
        effort = body.get("reasoning_effort")
        options = _Options(
            budget=_integer(body, limit, 1 << 31),
            stops=_stops(body.get("stop")),
            tool=_tool(body.get("tools"), body.get("tool_choice")),
            reasoning=None
            if effort is None or effort == "none"
            else _REASONING.get(effort if isinstance(effort, str) else "", _REASONING["medium"]),
        )
        material = [model, messages, body.get("tools"), body.get("seed")]
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
        base = int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=16).digest(), "big")
        choices = [_generate(random.Random(base + i), i, options) for i in range(n)]
        prompt = _prompt_tokens(messages, body.get("tools"))
        completion = sum(c.tokens for c in choices)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        thought = sum(len(c.reasoning) for c in choices)
        if thought:
            usage["completion_tokens_details"] = {"reasoning_tokens": thought}
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        return _Plan(model, int(time.time()), choices, usage, include_usage)


def _integer(body: dict[str, Any], key: str, high: int) -> int | None:
    """``body[key]``: ``None`` or an integer in ``[1, high]``."""
    value = body.get(key)
    if value is not None and (type(value) is not int or not 1 <= value <= high):
        raise InvalidRequestError(
            f"Invalid '{key}': expected an integer between 1 and {high}, got {value!r}.",
            param=key,
        )
    return value


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError(
            "'stop' must be a string or an array of up to 4 strings", param="stop"
        )
    return [s for s in stops if s]


def _tool(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    """The function definition to call, or ``None`` for a text answer."""
    if tools is None or tool_choice == "none":
        return None
    if not isinstance(tools, list):
        raise InvalidRequestError("'tools' must be an array", param="tools")
    functions = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise InvalidRequestError("every tool must be an object", param="tools")
        function = tool.get("function")
        if tool.get("type", "function") == "function" and isinstance(function, dict):
            if not isinstance(function.get("name"), str):
                raise InvalidRequestError("every function tool needs a name", param="tools")
            functions.append(function)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        chosen = tool_choice.get("function")
        name = chosen.get("name") if isinstance(chosen, dict) else None
        for function in functions:
            if function["name"] == name:
                return function
        raise InvalidRequestError(
            f"Invalid value for 'tool_choice': no function named '{name}' was specified in the "
            "'tools' parameter.",
            param="tool_choice",
        )
    return functions[0] if functions else None


def _generate(rng: random.Random, index: int, options: _Options) -> _Choice:
    """One choice: reasoning, then content or a tool call, cut by ``stop`` and the budget."""
    budget, stops, tool = options.budget, options.stops, options.tool
    reasoning = _words(rng, rng.randint(*options.reasoning)) if options.reasoning else []
    truncated = budget is not None and len(reasoning) >= budget
    if budget is not None:
        del reasoning[budget:]
    remaining = None if budget is None else budget - len(reasoning)
    if tool is not None:
        call_id = f"call_{rng.getrandbits(96):024x}"
        try:
            arguments = split_tokens(
                json.dumps(fake_value(tool.get("parameters"), rng, _VOCABULARY))
            )
        except (TypeError, ValueError) as exc:
            # A schema with contradictory or mistyped bounds (minimum > maximum, ...).
            raise InvalidRequestError(
                f"Invalid 'parameters' schema for function '{tool['name']}': {exc}", param="tools"
            ) from exc
        finish = "tool_calls"
        if remaining is not None and len(arguments) > remaining:
            del arguments[remaining:]
            finish = "length"
        if truncated:
            finish = "length"
        called = (call_id, tool["name"]) if arguments else None
        return _Choice(index, reasoning, None, called, arguments, finish)
    content = _words(rng, rng.randint(8, 32))
    finish = "stop"
    if stops:
        text = "".join(content)
        cuts = [at for at in (text.find(s) for s in stops) if at >= 0]
        if cuts:
            content = split_tokens(text[: min(cuts)])
    if remaining is not None and len(content) > remaining:
        del content[remaining:]
        finish = "length"
    if truncated:
        finish = "length"
    return _Choice(index, reasoning, content, None, [], finish)


def _words(rng: random.Random, count: int) -> list[str]:
    """``count`` tokens of sentence-like text: capitalised words, commas, full stops."""
    # One bulk draw of words and two draws per sentence: this runs for every mock request.
    words = rng.choices(_SPACED, k=count)
    tokens: list[str] = []
    length, target, comma = 0, rng.randint(4, 12), rng.randint(3, 16)
    for position, word in enumerate(words):
        if length and tokens[-1] != "," and (length >= target or position == count - 1):
            tokens.append(".")
            length, target, comma = 0, rng.randint(4, 12), rng.randint(3, 16)
        elif length == comma:
            tokens.append(",")
            comma = -1
        else:
            token = _CAPITALISED[word] if length == 0 else word
            tokens.append(token if position else token[1:])
            length += 1
    return tokens


def _prompt_tokens(messages: list[Any], tools: Any) -> int:
    total = 0
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


def _chunks(plan: _Plan, response_id: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Every chunk of the stream, and where each timed batch ends (one token step per batch)."""
    model, created, include_usage = plan.model, plan.created, plan.include_usage

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if include_usage:
            out["usage"] = None
        return out

    chunks: list[dict[str, Any]] = []
    steps: list[tuple[int, list[dict[str, Any]]]] = []
    for c in plan.choices:
        deltas: list[dict[str, Any]] = [{"reasoning_content": t} for t in c.reasoning]
        if c.content is not None:
            chunks.append(chunk(c.index, {"role": "assistant", "content": ""}))
            deltas += [{"content": t} for t in c.content]
        else:
            first: dict[str, Any] = {"role": "assistant", "content": None}
            calls: list[dict[str, Any]] = [
                {"index": 0, "function": {"arguments": t}} for t in c.arguments
            ]
            if c.tool is not None:
                call_id, name = c.tool
                # OpenAI's header (id, type, name) rides with the role chunk; after reasoning,
                # with the first argument fragment, so every token step carries one token.
                header = {"index": 0, "id": call_id, "type": "function"}
                if c.reasoning:
                    calls[0] = header | {"function": {"name": name, "arguments": c.arguments[0]}}
                else:
                    first["tool_calls"] = [header | {"function": {"name": name, "arguments": ""}}]
            chunks.append(chunk(c.index, first))
            deltas += [{"tool_calls": [call]} for call in calls]
        steps.append((c.index, deltas))
    ends: list[int] = []
    for position in range(max(len(deltas) for _, deltas in steps)):
        for index, deltas in steps:
            if position < len(deltas):
                chunks.append(chunk(index, deltas[position]))
        ends.append(len(chunks))
    chunks += [chunk(c.index, {}, c.finish_reason) for c in plan.choices]
    if include_usage:
        chunks.append(
            {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [],
                "usage": plan.usage,
            }
        )
    # The finish and usage chunks go out with the last token.
    if ends:
        ends[-1] = len(chunks)
    else:
        ends.append(len(chunks))
    return chunks, ends
