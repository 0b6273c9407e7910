"""Values that fit a JSON schema: the mock's tool-call arguments and structured outputs.

Deterministic for a given ``random.Random`` state.  Covers what tool definitions and
``response_format`` schemas use in practice (Pydantic's and Zod's output included), not the
whole of JSON Schema:

- ``type`` (one or a list: the first non-null), ``const``, ``enum``;
- objects: ``properties`` with ``required`` (optional ones half the time, all of them in
  ``strict`` mode, as OpenAI's strict mode requires every property), ``additionalProperties``
  (never more keys than declared when it is ``false``; a schema for extra values is used when
  there are no declared properties), ``minProperties``;
- arrays: ``items``, ``prefixItems``, ``minItems``/``maxItems``, ``uniqueItems``;
- strings: ``minLength``/``maxLength``, ``format`` (date, date-time, time, email, uri, uuid,
  hostname, ipv4, ipv6, duration), ``pattern`` (best effort, see :mod:`.pattern`);
- numbers: ``minimum``/``maximum``, ``exclusiveMinimum``/``exclusiveMaximum`` (both forms),
  ``multipleOf``;
- ``anyOf``/``oneOf`` (the first option that is not ``null``; ``null`` once nesting is deep),
  ``allOf`` (merged), ``$ref`` into the same document (``#/$defs/...``, ``#/definitions/...``,
  ``#``), recursive schemas (nesting stops at a fixed depth where the schema allows it).

A schema that no value fits (``minimum`` above ``maximum``, a ``$ref`` to nowhere, ``false``,
recursion without a way out) raises :class:`SchemaError`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import Any, Final

from auditgate.engines.mock.pattern import matching

__all__ = ["SchemaError", "instance"]

_DEEP: Final = 6
"""Nesting depth from which optional parts (optional properties, items beyond ``minItems``,
non-null options) are left out, so recursive schemas end."""
_HOPELESS: Final = 64
"""Nesting depth at which a schema that still requires more is declared unsatisfiable."""
_IGNORED_WITH_REF: Final = frozenset({"$ref", "description", "title", "default", "examples"})


class SchemaError(ValueError):
    """The schema has no value the generator can produce; the message says why."""


def instance(schema: Any, rng: random.Random, words: Sequence[str], *, strict: bool = False) -> Any:
    """A value that fits the JSON ``schema``, drawn with ``rng``; strings are made of ``words``.

    ``strict``: OpenAI's strict mode, where every declared property is present."""
    return _Generator(schema, rng, words, strict).value(schema, 0)


class _Generator:
    __slots__ = ("rng", "root", "strict", "words")

    def __init__(self, root: Any, rng: random.Random, words: Sequence[str], strict: bool) -> None:
        self.root = root
        self.rng = rng
        self.words = words
        self.strict = strict

    def value(self, schema: Any, depth: int) -> Any:
        if depth > _HOPELESS:
            raise SchemaError("the schema nests without end (a recursion that is never optional)")
        if schema is False:
            raise SchemaError("the schema 'false' admits no value")
        if not isinstance(schema, dict):
            return self.rng.choice(self.words)
        schema = self.resolved(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(rest, self.option(options, depth)), depth + 1)
        kind = _kind(schema, deep=depth >= _DEEP)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind in ("integer", "number"):
            return _number(schema, self.rng, integer=kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema)

    def resolved(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with its ``$ref`` and ``allOf`` folded in."""
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self.lookup(ref)
            rest = {k: v for k, v in schema.items() if k not in _IGNORED_WITH_REF}
            schema = _merge(target, rest) if rest else target
            return self.resolved(schema) if "$ref" in schema or "allOf" in schema else schema
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict):
                    merged = _merge(merged, self.resolved(part))
            return merged
        return schema

    def lookup(self, ref: str) -> dict[str, Any]:
        """The schema a local ``$ref`` (``#`` or ``#/a/b``) points to."""
        if not ref.startswith("#"):
            raise SchemaError(f"$ref {ref!r}: only references into the same schema are supported")
        node: Any = self.root
        for part in ref[1:].lstrip("/").split("/") if ref != "#" else ():
            key = part.replace("~1", "/").replace("~0", "~")
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise SchemaError(f"$ref {ref!r} points to nothing in the schema")
        return node

    def option(self, options: list[Any], depth: int) -> Any:
        """The ``anyOf``/``oneOf`` option to follow: the first non-null one (null when deep)."""
        nulls = [o for o in options if isinstance(o, dict) and o.get("type") == "null"]
        typed = [o for o in options if o not in nulls]
        if depth >= _DEEP and nulls:
            return nulls[0]
        return (typed or options)[0]

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = [r for r in schema.get("required") or () if isinstance(r, str)]
        extra = schema.get("additionalProperties", True)
        chosen = [
            name
            for name in properties
            if name in required or self.strict or (depth < _DEEP and self.rng.random() < 0.5)
        ]
        chosen += [name for name in required if name not in properties]
        want = schema.get("minProperties", 0)
        for name in properties:
            if len(chosen) >= want:
                break
            if name not in chosen:
                chosen.append(name)
        if extra is not False and not properties and not self.strict:
            fill = max(want, 1 if depth < _DEEP and isinstance(extra, dict) else 0)
            for word in self.words:
                if len(chosen) >= fill:
                    break
                if word not in chosen:
                    chosen.append(word)
        values = {}
        for name in chosen:
            sub = properties.get(name, extra if isinstance(extra, dict) else {})
            values[name] = self.value(sub, depth + 1)
        return values

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        low = int(schema.get("minItems", 0 if depth >= _DEEP else 1))
        high = int(schema.get("maxItems", low + 2))
        if low > high:
            raise SchemaError(f"minItems {low} is above maxItems {high}")
        count = low if depth >= _DEEP else self.rng.randint(low, min(high, low + 3))
        if items is False:  # no items beyond the tuple's
            count = min(count, len(prefix))
        out: list[Any] = []
        seen: set[str] = set()
        for position in range(count):
            sub = prefix[position] if position < len(prefix) else items
            value = self.value(sub, depth + 1)
            if schema.get("uniqueItems") is True:
                key = json.dumps(value, sort_keys=True)
                for _ in range(8):  # a few redraws; a small enum may not have enough values
                    if key not in seen:
                        break
                    value = self.value(sub, depth + 1)
                    key = json.dumps(value, sort_keys=True)
                if key in seen and position >= low:
                    break
                seen.add(key)
            out.append(value)
        return out

    def string(self, schema: dict[str, Any]) -> str:
        rng = self.rng
        word = rng.choice(self.words)
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        if high is not None and low > high:
            raise SchemaError(f"minLength {low} is above maxLength {high}")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = matching(pattern, rng)
            if text is not None and low <= len(text) <= (high if high is not None else len(text)):
                return text
        text = _formatted(schema.get("format"), rng, word)
        if len(text) < low:
            text = (text * (low // max(len(text), 1) + 1))[: max(low, len(text))]
        return text if high is None else text[: int(high)]


def _merge(base: dict[str, Any], extra: Any) -> dict[str, Any]:
    """Two schemas that must both hold, as one: properties and required combined."""
    if not isinstance(extra, dict):
        return base
    merged = {**base, **extra}
    if isinstance(base.get("properties"), dict) and isinstance(extra.get("properties"), dict):
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = [*base["required"], *extra["required"]]
    return merged


def _kind(schema: dict[str, Any], *, deep: bool) -> str:
    """The type to produce: the declared one (from a list, the first non-null; null when deep),
    else what the keywords imply."""
    kind = schema.get("type")
    if isinstance(kind, list):
        if deep and "null" in kind:
            return "null"
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if {"properties", "required", "additionalProperties"} & schema.keys():
        return "object"
    if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
        return "array"
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} & schema.keys():
        return "number"
    return "string"


def _number(schema: dict[str, Any], rng: random.Random, *, integer: bool) -> float:
    """A number within the bounds; exclusive bounds are taken one step inside."""
    step = 1 if integer else 0.01
    low = _bound(schema, "minimum", "exclusiveMinimum", step)
    high = _bound(schema, "maximum", "exclusiveMaximum", -step)
    if low is None:
        low = 0 if high is None or high >= 0 else high - 100
    if high is None:
        high = low + 100
    multiple = schema.get("multipleOf")
    if isinstance(multiple, int | float) and not isinstance(multiple, bool) and multiple > 0:
        first, last = math.ceil(low / multiple), math.floor(high / multiple)
        if first > last:
            raise SchemaError(f"no multiple of {multiple} between {low} and {high}")
        value = rng.randint(first, last) * multiple
        return int(value) if integer else round(value, 10)
    if integer:
        first, last = math.ceil(low), math.floor(high)
        if first > last:
            raise SchemaError(f"no integer between {low} and {high}")
        return rng.randint(first, last)
    if low > high:
        raise SchemaError(f"minimum {low} is above maximum {high}")
    return min(max(round(rng.uniform(float(low), float(high)), 2), low), high)


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, step: float) -> float | None:
    """One bound: ``inclusive`` as is, ``exclusive`` (a number, or draft 4's boolean beside the
    inclusive keyword) moved one ``step`` inward; ``None`` when there is none."""
    value = schema.get(inclusive)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise SchemaError(f"{inclusive} must be a number, got {value!r}")
    flag = schema.get(exclusive)
    if isinstance(flag, bool):
        return value + step if flag and value is not None else value
    if isinstance(flag, int | float):
        moved = flag + step
        if value is None:
            return moved
        return max(value, moved) if step > 0 else min(value, moved)
    return value


def _formatted(form: Any, rng: random.Random, word: str) -> str:
    """A string of a JSON-schema ``format``, or ``word`` for none or an unknown one."""
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    hour, minute = rng.randint(0, 23), rng.randint(0, 59)
    if form == "date":
        return f"2024-{month:02d}-{day:02d}"
    if form == "date-time":
        return f"2024-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00Z"
    if form == "time":
        return f"{hour:02d}:{minute:02d}:00Z"
    if form == "email":
        return f"{word}@example.com"
    if form in ("uri", "url", "iri"):
        return f"https://example.com/{word}"
    if form == "uuid":
        hexes = [rng.getrandbits(bits) for bits in (32, 16, 12, 12, 48)]
        return "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}".format(*hexes)
    if form == "hostname":
        return f"{word}.example.com"
    if form == "ipv4":
        return f"192.0.2.{rng.randint(1, 254)}"
    if form == "ipv6":
        return f"2001:db8::{rng.randint(1, 0xFFFF):x}"
    if form == "duration":
        return f"PT{rng.randint(1, 59)}M"
    return word
