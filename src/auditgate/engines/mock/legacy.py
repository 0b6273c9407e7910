"""The mock's legacy text completions (``POST /v1/completions``), shaped like OpenAI's.

The same generator as chat (:func:`~auditgate.engines.mock.choices.generate`) writes every
choice, seeded with a hash of ``model``, the prompt, ``suffix``, ``seed`` and the choice index:
the same request gives the same text.  Semantics, as OpenAI's legacy endpoint:

- ``prompt``: a string, a list of strings, a list of token ids, or a list of token-id lists;
  every prompt gets ``n`` choices, indexed ``prompt_number * n + j``.  Token ids become text
  through the mock's vocabulary (id ``i`` is the word ``VOCABULARY[i % len]``), one token each.
- At most :data:`MAX_CHOICES` choices (prompts times ``n``) a request.
- ``max_tokens`` defaults to 16 (OpenAI's default); 0 produces no text (``"length"``).
- ``echo``: the prompt is prepended to the text (and, with ``logprobs``, its tokens to the
  logprobs, the first one's ``null`` as at OpenAI).
- ``logprobs`` (0-5): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``, the
  top alternatives a ``{token: logprob}`` map of that many entries (the token itself among them);
  ``text_offset`` counts characters from the start of the choice's text.
- The generated text starts with a space: it continues the prompt.
- ``suffix`` is hashed (a different suffix, a different insertion) but never part of the text.
- Streams: one chunk per token per choice, the chunks of all choices interleaved token step by
  token step, then one ``{"text": "", "finish_reason": ...}`` chunk per choice and, with
  ``stream_options.include_usage``, OpenAI's final usage chunk.  The aggregate of the stream
  equals the non-stream response.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any, Final

from auditgate.engines.mock.choices import Options, generate
from auditgate.engines.mock.logprobs import token_logprobs
from auditgate.engines.mock.text import SPACED, count_tokens, split_tokens
from auditgate.errors import InvalidRequestError

__all__ = ["TextPlan", "text_chunks", "text_completion", "text_plan"]

DEFAULT_MAX_TOKENS: Final = 16
MAX_CHOICES: Final = 2048
"""Prompts times ``n``: the mock's bound on the choices of one request (its CPU and memory)."""
MAX_LOGPROBS: Final = 5
_ECHO_SEED: Final = 1 << 131
"""Added to a choice's seed for the logprobs of its echoed prompt."""


@dataclasses.dataclass(slots=True)
class TextChoice:
    """One choice: the echoed prompt (if any) and the generated tokens, with their logprobs."""

    index: int
    tokens: list[str]
    """The text's tokens, echoed prompt first."""
    generated: int
    """How many of ``tokens`` the engine generated (the rest is the echo)."""
    finish_reason: str
    logprobs: list[tuple[str, float | None, dict[str, float]]] | None
    """Per token: the token, its logprob (``None`` for an echoed first token), alternatives."""


@dataclasses.dataclass(slots=True)
class TextPlan:
    """Everything a text completion request produces, computed once."""

    model: str
    created: int
    choices: list[TextChoice]
    usage: dict[str, Any]
    include_usage: bool


def prompts_of(prompt: Any) -> list[str]:
    """The texts of ``prompt`` (string, strings, token ids, or token-id lists); 400 otherwise."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(type(p) is int for p in prompt):
            return [_detokenize(prompt)]
        if all(isinstance(p, list) and p and all(type(t) is int for t in p) for p in prompt):
            return [_detokenize(p) for p in prompt]
    raise InvalidRequestError(
        "Invalid 'prompt': expected a string, an array of strings, an array of tokens, or an "
        "array of token arrays.",
        param="prompt",
        code="invalid_value",
    )


def _detokenize(ids: list[int]) -> str:
    """Token ids as the mock's text: one vocabulary word per id."""
    if any(i < 0 for i in ids):
        raise InvalidRequestError(
            "Invalid 'prompt': token ids must be non-negative integers.", param="prompt"
        )
    return "".join(SPACED[i % len(SPACED)] for i in ids)


def text_plan(body: dict[str, Any], model: str, options: Options, n: int, created: int) -> TextPlan:
    """The choices and usage of one request (``model``, ``options`` and ``n`` read from
    ``body`` and checked by the engine)."""
    prompts = prompts_of(body.get("prompt"))
    if len(prompts) * n > MAX_CHOICES:
        raise InvalidRequestError(
            f"Invalid 'prompt': {len(prompts)} prompts of n={n} choices each is more than "
            f"{MAX_CHOICES} choices.",
            param="prompt",
            code="invalid_value",
        )
    echo = body.get("echo") is True
    choices: list[TextChoice] = []
    prompt_total = 0
    for number, prompt in enumerate(prompts):
        prompt_total += count_tokens(prompt)
        material = [model, prompt, body.get("suffix"), body.get("seed")]
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
        base = int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=16).digest(), "big")
        for j in range(n):
            choices.append(_choice(base + j, number * n + j, prompt, echo, options))
    generated = sum(c.generated for c in choices)
    usage = {
        "prompt_tokens": prompt_total,
        "completion_tokens": generated,
        "total_tokens": prompt_total + generated,
    }
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return TextPlan(model, created, choices, usage, include_usage)


def _choice(seed: int, index: int, prompt: str, echo: bool, options: Options) -> TextChoice:
    if options.budget == 0:
        tokens: list[str] = []
        entries: list[dict[str, Any]] | None = [] if options.top_logprobs is not None else None
        finish = "length"
    else:
        generated = generate(seed, index, options)
        tokens, entries = generated.content or [], generated.logprobs
        finish = generated.finish_reason
    logprobs = None if entries is None else [_legacy(e) for e in entries]
    if tokens and not tokens[0][:1].isspace():
        # The text continues the prompt: its first word is spaced from it, as a model's is.
        tokens[0] = " " + tokens[0]
        if logprobs:
            token, logprob, alternatives = logprobs[0]
            spaced = {" " + alt: lp for alt, lp in alternatives.items()}
            logprobs[0] = (" " + token, logprob, spaced)
    count = len(tokens)
    if echo and prompt:
        echoed = split_tokens(prompt)
        tokens = echoed + tokens
        if logprobs is not None:
            rng = random.Random(seed + _ECHO_SEED)
            drawn = [_legacy(e) for e in token_logprobs(echoed, rng, options.top_logprobs or 0)]
            drawn[0] = (drawn[0][0], None, {})  # nothing precedes the first token to predict it
            logprobs = drawn + logprobs
    return TextChoice(index, tokens, count, finish, logprobs)


def _legacy(entry: dict[str, Any]) -> tuple[str, float | None, dict[str, float]]:
    """A chat logprob entry as the legacy format's (token, logprob, {alternative: logprob})."""
    top = {alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]}
    return entry["token"], entry["logprob"], top


def _logprobs(
    entries: list[tuple[str, float | None, dict[str, float]]], offset: int
) -> dict[str, Any]:
    """The legacy ``logprobs`` object of consecutive tokens, the first at ``offset``."""
    offsets = []
    for token, _, _ in entries:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": [e[0] for e in entries],
        "token_logprobs": [e[1] for e in entries],
        "top_logprobs": [e[2] for e in entries],
        "text_offset": offsets,
    }


def text_completion(plan: TextPlan, response_id: str, fingerprint: str) -> dict[str, Any]:
    """The non-stream ``text_completion`` object."""
    choices = [
        {
            "text": "".join(c.tokens),
            "index": c.index,
            "logprobs": None if c.logprobs is None else _logprobs(c.logprobs, 0),
            "finish_reason": c.finish_reason,
        }
        for c in plan.choices
    ]
    return {
        "id": response_id,
        "object": "text_completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": plan.usage,
        "system_fingerprint": fingerprint,
    }


def text_chunks(
    plan: TextPlan, response_id: str, fingerprint: str
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every chunk of the stream, and where each timed batch ends (one token step per batch)."""
    top = {
        "id": response_id,
        "object": "text_completion",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": fingerprint,
    }
    out: list[dict[str, Any]] = []
    ends: list[int] = []
    offsets = [0] * len(plan.choices)
    for position in range(max((len(c.tokens) for c in plan.choices), default=0)):
        for number, c in enumerate(plan.choices):
            if position < len(c.tokens):
                token = c.tokens[position]
                logprobs = None
                if c.logprobs is not None:
                    logprobs = _logprobs([c.logprobs[position]], offsets[number])
                offsets[number] += len(token)
                out.append(_chunk(top, c.index, token, logprobs, None))
        ends.append(len(out))
    for number, c in enumerate(plan.choices):
        # With logprobs, an empty object: a choice with no tokens still aggregates to one.
        empty = None if c.logprobs is None else _logprobs([], offsets[number])
        out.append(_chunk(top, c.index, "", empty, c.finish_reason))
    if plan.include_usage:
        out.append({**top, "choices": [], "usage": plan.usage})
    if ends:
        ends[-1] = len(out)  # the finish and usage chunks go out with the last token
    else:
        ends.append(len(out))
    return out, ends


def _chunk(
    top: dict[str, Any], index: int, text: str, logprobs: Any, finish: str | None
) -> dict[str, Any]:
    choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
    return {**top, "choices": [choice]}
