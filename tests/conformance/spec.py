"""OpenAI's published OpenAPI specification (pinned in ``openapi/``) as JSON-Schema validators.

The pinned file is ``openapi/openai-openapi.json``: the operations auditgate implements, reduced
from github.com/openai/openai-openapi by ``openapi/extract.py`` (source commit in
``info.x-source``, MIT licence in ``openapi/LICENSE``).  Loading it makes two adjustments, both
here so that the pinned file stays the published text:

- ``nullable: true`` (an OpenAPI 3.0 keyword that the 3.1 document still uses in places, e.g. a
  stream chunk's ``usage`` and ``logprobs``) becomes ``anyOf [..., {"type": "null"}]``, which is
  what it means; JSON Schema 2020-12 validators ignore ``nullable``.
- The stored-completion messages list: its item schema is ``ChatCompletionResponseMessage``,
  whose ``role`` allows only ``assistant``, while the same schema's documented example lists a
  ``user`` message, and the endpoint lists the request's messages, of every role.  We follow
  OpenAI's documented example: there the role may be any request role.
- Legacy completions and embeddings, where the schema says less than OpenAI's own reference
  and servers: an echoed prompt's first token has no logprob (``token_logprobs`` starts with
  ``null``, at OpenAI as in vLLM); an embedding asked for with ``encoding_format: "base64"`` is
  a base64 string, not an array; and ``CreateCompletionChunk``, the schema of one legacy stream
  event (the published one is the whole response's), has a ``null`` ``finish_reason`` until the
  choice ends.
- A ``discriminator`` without a ``mapping`` (a message's ``tool_calls`` items, ``type``): by
  OpenAPI's rule its values would be the options' schema names, while each option's own
  ``type`` enum says ``function`` / ``custom`` — the values OpenAI sends.  The mapping is made
  from those enums, so checkers that apply discriminators (schemathesis) read it as meant.  A
  listed input item's (``ItemResource``) cannot be mapped: ``InputMessageResource`` and
  ``OutputMessage`` are both ``message``, so the property cannot select an option; it is
  dropped, and the options' own schemas decide.
- ``deleteResponse``'s 404 is typed ``Error`` (the bare ``{"message", "type", "param",
  "code"}``), while every other operation's error, OpenAI's actual answer and the SDK's reading
  of it are the ``ErrorResponse`` envelope (``{"error": {...}}``); we follow the latter.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Final

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_FILE: Final = Path(__file__).with_name("openapi") / "openai-openapi.json"
_URI: Final = "urn:openai-openapi"
_NAMED: Final = frozenset({"properties", "patternProperties", "$defs", "definitions"})
REQUEST_ROLES: Final = ["developer", "system", "user", "assistant", "tool", "function"]


def denullable(value: Any, *, names: bool = False) -> Any:
    """``value`` with every ``nullable: true`` schema turned into ``anyOf [schema, null]``."""
    if isinstance(value, list):
        return [denullable(v) for v in value]
    if not isinstance(value, dict):
        return value
    if names:  # a map of property names to schemas: the keys are names, not keywords
        return {k: denullable(v) for k, v in value.items()}
    out = {k: denullable(v, names=k in _NAMED) for k, v in value.items() if k != "nullable"}
    if value.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def map_discriminators(doc: dict[str, Any]) -> None:
    """Give every discriminator without a mapping the one its options' single-value enums
    imply (in place); one whose options do not all have such an enum is left alone."""
    schemas = doc["components"]["schemas"]
    pending: list[Any] = [doc]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        pending.extend(node.values())
        discriminator = node.get("discriminator")
        options = node.get("oneOf") or node.get("anyOf")
        if not isinstance(discriminator, dict) or "mapping" in discriminator or not options:
            continue
        mapping = {}
        for option in options:
            ref = option.get("$ref", "")
            target = schemas.get(ref.rsplit("/", 1)[-1], {})
            values = target.get("properties", {}).get(discriminator["propertyName"], {})
            if len(values.get("enum", ())) == 1:
                mapping[values["enum"][0]] = ref
        if len(mapping) == len(options):
            discriminator["mapping"] = mapping


@functools.cache
def spec() -> dict[str, Any]:
    """The pinned specification, adjusted as the module docstring says (a fresh copy is not
    made per call: treat it as read-only)."""
    doc = denullable(json.loads(SPEC_FILE.read_text(encoding="utf-8")))
    map_discriminators(doc)
    schemas = doc["components"]["schemas"]
    # The documented example of ChatCompletionMessageList shows a "user" message; the item
    # schema (ChatCompletionResponseMessage) allows only "assistant".  Follow the example.
    listed = copy.deepcopy(schemas["ChatCompletionResponseMessage"])
    listed["properties"]["role"]["enum"] = REQUEST_ROLES
    schemas["ChatCompletionStoredMessage"] = listed
    item = schemas["ChatCompletionMessageList"]["properties"]["data"]["items"]
    item["allOf"][0] = {"$ref": "#/components/schemas/ChatCompletionStoredMessage"}
    # A listed item: InputMessageResource and OutputMessage are both "message", so "type"
    # cannot select an option; the options' own schemas decide.
    schemas["ItemResource"].pop("discriminator", None)
    # deleteResponse's 404 is typed as the bare Error; OpenAI answers the ErrorResponse
    # envelope there as everywhere (and the SDK reads it so).
    deleted = doc["paths"]["/responses/{response_id}"]["delete"]["responses"]["404"]
    deleted["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    _legacy_adjustments(schemas)
    return doc  # type: ignore[no-any-return]


def _legacy_adjustments(schemas: dict[str, Any]) -> None:
    """Legacy completions and embeddings as OpenAI serves them (see the module docstring)."""
    choice = schemas["CreateCompletionResponse"]["properties"]["choices"]["items"]
    logprobs = choice["properties"]["logprobs"]["anyOf"][0]
    logprobs["properties"]["token_logprobs"]["items"] = {"type": ["number", "null"]}
    vector = schemas["Embedding"]["properties"]["embedding"]
    schemas["Embedding"]["properties"]["embedding"] = {"anyOf": [vector, {"type": "string"}]}
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    finish["enum"] = [*finish["enum"], None]
    finish["type"] = ["string", "null"]
    schemas["CreateCompletionChunk"] = chunk


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(_URI, Resource(contents=spec(), specification=DRAFT202012))


def response_schema(
    operation_id: str, status: str = "200", media_type: str = "application/json"
) -> dict[str, Any]:
    """The schema the specification gives an operation's response."""
    for item in spec()["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                response = operation["responses"][status]
                schema: dict[str, Any] = response["content"][media_type]["schema"]
                return schema
    raise KeyError(operation_id)


def errors(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Where ``instance`` violates ``schema`` (whose ``$ref``s point into the specification),
    as ``path: message`` lines; empty when it conforms."""
    rooted = _rooted(schema)
    validator = jsonschema.Draft202012Validator(
        rooted,
        registry=_registry(),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    found = validator.iter_errors(instance)
    return sorted(f"{e.json_path}: {e.message[:300]}" for e in found)


def response_errors(
    operation_id: str,
    body: Any,
    status: str = "200",
    media_type: str = "application/json",
) -> list[str]:
    """Where a response body violates what the specification says ``operation_id`` returns."""
    return errors(body, response_schema(operation_id, status, media_type))


def error_body_errors(body: Any) -> list[str]:
    """Where an error body violates the specification's ``ErrorResponse``."""
    return errors(body, {"$ref": "#/components/schemas/ErrorResponse"})


def _rooted(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``$ref``s made to point into the registered specification."""
    text = json.dumps(schema).replace('"#/components/', f'"{_URI}#/components/')
    rooted: dict[str, Any] = json.loads(text)
    return rooted
