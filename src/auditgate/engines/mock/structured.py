"""Structured outputs: the mock's content under ``response_format``.

- absent or ``{"type": "text"}``: prose (the default answer);
- ``{"type": "json_object"}``: a JSON object,
  ``{"answer": <a sentence>, "confidence": <0.5-0.99>}``;
- ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``: a JSON value that fits
  ``schema`` (see :mod:`.schema`; with ``strict: true`` every property is present, as OpenAI's
  strict mode requires), so the SDK's ``client.chat.completions.parse(response_format=Model)``
  gets an instance of ``Model``.

The JSON text is compact-spaced (``json.dumps`` defaults) and tokenized like any other content, so
``max_tokens`` and ``stop`` cut it as they would cut prose (a cut answer is not valid JSON, as at
OpenAI, and says ``finish_reason: "length"``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from typing import Any, Final

from auditgate.engines.mock.schema import instance
from auditgate.engines.mock.text import VOCABULARY, split_tokens, words
from auditgate.errors import InvalidRequestError

__all__ = ["JsonFormat", "json_format", "json_tokens"]

_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_TYPES: Final = ("text", "json_object", "json_schema")


@dataclasses.dataclass(frozen=True, slots=True)
class JsonFormat:
    """A JSON answer is wanted."""

    schema: dict[str, Any] | None
    """The JSON schema to fit; ``None`` for ``json_object`` (any object)."""
    strict: bool
    name: str = ""


def json_format(response_format: Any) -> JsonFormat | None:
    """What ``response_format`` asks for: ``None`` for text; a 400 when it is malformed."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequestError(
            "Invalid type for 'response_format': expected an object.",
            param="response_format",
            code="invalid_type",
        )
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonFormat(None, strict=False)
    if kind != "json_schema":
        raise InvalidRequestError(
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and "
            "'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequestError(
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            "Invalid 'response_format.json_schema.name': expected 1 to 64 characters of a-z, "
            "A-Z, 0-9, underscores and dashes.",
            param="response_format.json_schema.name",
            code="invalid_value",
        )
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            "Invalid type for 'response_format.json_schema.schema': expected an object.",
            param="response_format.json_schema.schema",
            code="invalid_type",
        )
    return JsonFormat(schema, strict=spec.get("strict") is True, name=name)


def json_tokens(fmt: JsonFormat, rng: random.Random) -> list[str]:
    """The JSON answer, as tokens, drawn with ``rng``."""
    if fmt.schema is None:
        value: Any = {
            "answer": "".join(words(rng, rng.randint(6, 16))),
            "confidence": round(rng.uniform(0.5, 0.99), 2),
        }
    else:
        try:
            value = instance(fmt.schema, rng, VOCABULARY, strict=fmt.strict)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"Invalid schema for response_format '{fmt.name}': {exc}",
                param="response_format",
                code="invalid_value",
            ) from exc
    return split_tokens(json.dumps(value))
