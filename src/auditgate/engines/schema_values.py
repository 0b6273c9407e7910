"""Values that fit a JSON schema: the mock engine's tool-call arguments.

Deterministic for a given ``random.Random`` state; covers what tool definitions use in practice
(object/array/string/integer/number/boolean/null, ``enum``/``const``, ``anyOf``/``oneOf``/
``allOf`` (first non-null option), numeric bounds, string length and common formats, required
properties), not the whole of JSON Schema.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Final

_MAX_DEPTH: Final = 6


def fake_value(schema: Any, rng: random.Random, words: Sequence[str], depth: int = 0) -> Any:
    """A value that fits the JSON ``schema`` (types, enum/const, bounds, required properties),
    drawn with ``rng``; strings are made of ``words``."""
    if not isinstance(schema, dict):
        return rng.choice(words)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            typed = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return fake_value((typed or options)[0], rng, words, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or depth >= _MAX_DEPTH:
            return {}
        required = set(schema.get("required") or ())
        return {
            name: fake_value(sub, rng, words, depth + 1)
            for name, sub in properties.items()
            if name in required or rng.random() < 0.5
        }
    if kind == "array":
        low = schema.get("minItems", 1 if depth < _MAX_DEPTH else 0)
        high = max(low, min(schema.get("maxItems", low + 2), low + 3))
        if depth >= _MAX_DEPTH and low == 0:
            return []
        return [
            fake_value(schema.get("items"), rng, words, depth + 1)
            for _ in range(rng.randint(low, high))
        ]
    if kind in ("integer", "number"):
        return _number(schema, rng, integer=kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng, words)


def _number(schema: dict[str, Any], rng: random.Random, *, integer: bool) -> float:
    """A number within ``minimum``/``maximum`` (``exclusive*`` taken as one step inside)."""
    step = 1 if integer else 0.01
    low = schema.get("minimum", schema.get("exclusiveMinimum", -step) + step)
    high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100 + step) - step)
    if integer:
        return rng.randint(math.ceil(low), math.floor(high))
    return min(max(round(rng.uniform(float(low), float(high)), 2), low), high)  # type: ignore[no-any-return]


def _string(schema: dict[str, Any], rng: random.Random, words: Sequence[str]) -> str:
    word = rng.choice(words)
    text = {
        "date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "date-time": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z",
        "email": f"{word}@example.com",
        "uri": f"https://example.com/{word}",
    }.get(schema.get("format", ""), word)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if len(text) < low:
        text = (text * (low // max(len(text), 1) + 1))[: max(low, len(text))]
    return text if high is None else text[:high]
