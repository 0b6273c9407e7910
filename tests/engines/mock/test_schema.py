"""JSON values for a JSON schema (tool arguments, structured outputs) and strings for a pattern."""

from __future__ import annotations

import datetime
import enum
import json
import random
import re
from typing import Any, Literal

import jsonschema
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from auditgate.engines.mock.pattern import matching
from auditgate.engines.mock.schema import SchemaError, instance
from auditgate.engines.mock.text import VOCABULARY


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Step(BaseModel):
    explanation: str
    output: str


class Node(BaseModel):
    name: str
    children: list[Node] = []


class Answer(BaseModel):
    """A model using what Pydantic users put in structured outputs."""

    steps: list[Step]
    final: int = Field(ge=1, le=5)
    score: float = Field(gt=0, lt=1)
    color: Color
    kind: Literal["a", "b"]
    when: datetime.date
    at: datetime.datetime
    code: str = Field(pattern=r"^[A-Z]{3}-\d{2}$")
    short: str = Field(min_length=3, max_length=5)
    note: str | None
    tags: list[str] = Field(min_length=2, max_length=4)
    tree: Node
    extra: dict[str, int]


SCHEMAS: dict[str, dict[str, Any]] = {
    "pydantic": Answer.model_json_schema(),
    "pydantic-strict": to_strict_json_schema(Answer),
    "zod-definitions": {
        "type": "object",
        "properties": {"item": {"$ref": "#/definitions/Item"}, "items": {
            "type": "array", "items": {"$ref": "#/definitions/Item"}, "uniqueItems": True,
            "minItems": 2, "maxItems": 2}},
        "required": ["item", "items"],
        "additionalProperties": False,
        "definitions": {"Item": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"},
            "n": {"type": "integer", "multipleOf": 5, "minimum": 7, "maximum": 40},
            "ip": {"type": "string", "format": "ipv4"},
            "mail": {"type": "string", "format": "email"}},
            "required": ["id", "n", "ip", "mail"], "additionalProperties": False}},
    },
    "allof-oneof-const": {
        "allOf": [
            {"type": "object", "properties": {"a": {"const": 3}}, "required": ["a"]},
            {"properties": {"b": {"oneOf": [{"type": "null"}, {"type": "boolean"}]}},
             "required": ["b"]},
        ],
        "properties": {"c": {"type": ["null", "number"], "exclusiveMaximum": -50}},
        "required": ["c"],
    },
    "tuple": {"type": "array", "prefixItems": [{"type": "integer"}, {"enum": ["x", "y"]}],
              "items": False, "minItems": 2},
    "root-recursion": {"type": "object", "properties": {
        "value": {"type": "string"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "required": ["value", "next"]},
}  # fmt: skip


@pytest.mark.parametrize("name", SCHEMAS)
def test_instances_fit_their_schema(name: str) -> None:
    """For 30 seeds, every generated value is valid against the schema (jsonschema, formats)."""
    schema = SCHEMAS[name]
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = [
        f"seed {seed}: {error.message}"
        for seed in range(30)
        for error in validator.iter_errors(
            instance(schema, random.Random(seed), VOCABULARY, strict="strict" in name)
        )
    ]
    assert errors == []


def test_pydantic_parses_what_strict_mode_gets() -> None:
    """The JSON text for Pydantic's strict schema parses back into the model, for 30 seeds."""
    schema = to_strict_json_schema(Answer)
    parsed = [
        Answer.model_validate_json(
            json.dumps(instance(schema, random.Random(seed), VOCABULARY, strict=True))
        )
        for seed in range(30)
    ]
    assert [Answer] * 30 == [type(p) for p in parsed]


def test_strict_mode_sets_every_property() -> None:
    """In strict mode every declared property is present; otherwise optional ones vary."""
    schema = {"type": "object", "properties": {k: {"type": "integer"} for k in "abcdef"}}
    strict = {tuple(instance(schema, random.Random(s), VOCABULARY, strict=True)) for s in range(10)}
    lax = {tuple(instance(schema, random.Random(s), VOCABULARY)) for s in range(10)}
    assert ({tuple("abcdef")}, True) == (strict, len(lax) > 1)


def test_same_rng_state_same_value() -> None:
    """The value is a function of the schema and the PRNG state."""
    schema = SCHEMAS["pydantic"]
    first = instance(schema, random.Random(5), VOCABULARY)
    assert first == instance(schema, random.Random(5), VOCABULARY)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "maximum": 1},
        {"type": "number", "exclusiveMinimum": 2, "exclusiveMaximum": 2},
        {"type": "string", "minLength": 4, "maxLength": 2},
        {"type": "array", "minItems": 3, "maxItems": 1},
        {"$ref": "#/$defs/Missing"},
        {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]},
        {"type": "integer", "multipleOf": 10, "minimum": 1, "maximum": 9},
    ],
)
def test_unsatisfiable_schemas_raise(schema: dict[str, Any]) -> None:
    """A schema no value fits raises SchemaError (the engine turns it into a 400)."""
    with pytest.raises(SchemaError):
        instance(schema, random.Random(0), VOCABULARY)


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[A-Z]{2}-\d{3,}(x|yz)?$",
        r"[^a-c]+",
        r"^\w+@\w+\.com$",
        r"^(\d{3})-\1$",
        r"^[^\W\d]{3}$",
        r"^\+?[1-9]\d{1,14}$",
        r"^#[0-9a-fA-F]{6}$",
        r"^(?:foo|bar)+\.?$",
        r"\bsk-[a-z]{4}\b",
    ],
)
def test_pattern_strings_match(pattern: str) -> None:
    """Strings made for a pattern are found by it, for 20 seeds."""
    made = [matching(pattern, random.Random(seed)) for seed in range(20)]
    assert [m is not None and re.search(pattern, m) is not None for m in made] == [True] * 20


def test_unsatisfiable_pattern_gives_none() -> None:
    """A pattern the walker cannot satisfy (or cannot parse) gives None, never a wrong string."""
    assert [
        matching(r"(?=abc)x", random.Random(0)),
        matching("(", random.Random(0)),
    ] == [None, None]
