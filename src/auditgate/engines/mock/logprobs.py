"""Plausible log probabilities for the mock's content tokens (``logprobs``, ``top_logprobs``).

Each content token gets OpenAI's entry ``{"token", "logprob", "bytes", "top_logprobs"}``.  The
token's own probability is drawn between 0.35 and 0.999 (a confident model); its ``top_logprobs``
list (as many entries as ``top_logprobs`` asks, 0-20, fewer when there are not that many tokens of
its shape) holds the token itself and other tokens of the same shape (a word with the same
leading space and capital, or another punctuation mark), most likely first, all probabilities
summing to less than one.  The draws come from their own PRNG, so asking for logprobs never
changes the text.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Final

from auditgate.engines.mock.text import VOCABULARY

__all__ = ["token_logprobs"]

_PUNCTUATION: Final = (".", ",", "!", "?", ";", ":", "-", '"', "'", "(", ")", "{", "}", "[", "]")


def token_logprobs(tokens: Sequence[str], rng: random.Random, top: int) -> list[dict[str, Any]]:
    """One logprob entry per token, with up to ``top`` alternatives each (the token among them)."""
    entries = []
    for token in tokens:
        p = rng.uniform(0.35, 0.999)
        logprob = round(math.log(p), 6)
        alternatives: list[dict[str, Any]] = []
        if top:
            alternatives.append({"token": token, "logprob": logprob, "bytes": _bytes(token)})
            rest = 1.0 - p
            for other in _others(token, rng, top - 1):
                share = rest * rng.uniform(0.3, 0.7)
                rest -= share
                alternatives.append(
                    {"token": other, "logprob": round(math.log(share), 6), "bytes": _bytes(other)}
                )
            alternatives.sort(key=_by_logprob, reverse=True)
        entries.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": _bytes(token),
                "top_logprobs": alternatives,
            }
        )
    return entries


def _by_logprob(entry: dict[str, Any]) -> float:
    return float(entry["logprob"])


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def _others(token: str, rng: random.Random, count: int) -> list[str]:
    """``count`` tokens unlike ``token`` but of its shape, drawn with ``rng``."""
    if count <= 0:
        return []
    stripped = token.lstrip()
    space = token[: len(token) - len(stripped)]
    if stripped.isalnum() or "_" in stripped:
        pool = [w.title() if stripped[:1].isupper() else w for w in VOCABULARY]
    else:
        pool = list(_PUNCTUATION)
    pool = [space + p for p in pool if space + p != token]
    return rng.sample(pool, min(count, len(pool)))
