"""Reduce OpenAI's published OpenAPI specification to the operations auditgate implements.

    python tests/conformance/openapi/extract.py openapi.json --commit <sha> [-o OUT]

Input: ``openapi.json`` (or ``openapi.yaml``, with PyYAML) of github.com/openai/openai-openapi at
``--commit``.  Output (default: ``openai-openapi.json`` beside this script): the same OpenAPI
document with only the operations in :data:`OPERATIONS`, the components they reference (followed
transitively) plus :data:`EXTRA_SCHEMAS`, and ``info.x-source`` naming the repository, commit and
file.  Nothing is rewritten: every kept object is byte-for-byte the published one, except that
prose (``description``, ``x-oaiMeta``) is dropped to keep the file small; the examples that the
tests rely on are kept (``x-oaiMeta.example`` of the list objects).  Re-run it on a newer commit
to move the tests to a newer specification.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OPERATIONS = (
    "createChatCompletion",
    "listChatCompletions",
    "getChatCompletion",
    "updateChatCompletion",
    "deleteChatCompletion",
    "getChatCompletionMessages",
    "listModels",
    "retrieveModel",
    "createResponse",
    "getResponse",
    "deleteResponse",
    "listInputItems",
    "createCompletion",
    "createEmbedding",
)
"""operationIds of the endpoints auditgate serves itself."""
EXTRA_SCHEMAS = ("ErrorResponse",)
"""Schemas no kept operation references but the tests validate against (OpenAI's error body)."""
KEEP_EXAMPLES = ("ChatCompletionList", "ChatCompletionMessageList")
"""Schemas whose documented example is kept: the tests follow it where the schema contradicts it."""
_PROSE = frozenset({"description", "summary", "x-oaiMeta", "x-oaiExpandable"})
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def load(path: Path) -> dict[str, Any]:
    """The full specification, from JSON or YAML."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # only needed for the YAML form

        return yaml.safe_load(text)  # type: ignore[no-any-return]
    return json.loads(text)  # type: ignore[no-any-return]


def refs(value: Any) -> set[str]:
    """Every local ``$ref`` under ``value``."""
    found: set[str] = set()
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            found.add(ref)
        for item in value.values():
            found |= refs(item)
    elif isinstance(value, list):
        for item in value:
            found |= refs(item)
    return found


def without_prose(value: Any, *, names: bool = False) -> Any:
    """``value`` without descriptions and documentation metadata.  ``names``: ``value`` maps
    property names to schemas, so a property called ``description`` is kept."""
    if isinstance(value, dict):
        return {
            k: without_prose(v, names=k in _NAMED and not names)
            for k, v in value.items()
            if names or k not in _PROSE
        }
    if isinstance(value, list):
        return [without_prose(v) for v in value]
    return value


def reduce(spec: dict[str, Any], source: dict[str, str]) -> dict[str, Any]:
    """The reduced document (see the module docstring)."""
    paths: dict[str, Any] = {}
    found: set[str] = set()
    for path, item in spec["paths"].items():
        kept = {
            method: operation
            for method, operation in item.items()
            if method in _METHODS and operation.get("operationId") in OPERATIONS
        }
        if kept:
            shared = {k: v for k, v in item.items() if k not in _METHODS}
            paths[path] = shared | kept
            found |= {operation["operationId"] for operation in kept.values()}
    missing = sorted(set(OPERATIONS) - found)
    if missing:
        raise SystemExit(f"extract: operations not in the specification: {missing}")
    components: dict[str, dict[str, Any]] = {}
    pending = refs(paths) | {f"#/components/schemas/{name}" for name in EXTRA_SCHEMAS}
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        seen.add(ref)
        _, _, kind, name = ref.split("/", 3)
        target = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = target
        pending |= refs(target) - seen
    reduced_components = {
        kind: {name: _component(kind, name, items[name]) for name in sorted(items)}
        for kind, items in sorted(components.items())
    }
    info = without_prose(spec["info"]) | {"x-source": source}
    return {
        "openapi": spec["openapi"],
        "info": info,
        "servers": spec.get("servers", []),
        "security": spec.get("security", []),
        "paths": without_prose(paths),
        "components": reduced_components
        | {"securitySchemes": spec["components"].get("securitySchemes", {})},
    }


def _component(kind: str, name: str, value: Any) -> Any:
    reduced = without_prose(value)
    if kind == "schemas" and name in KEEP_EXAMPLES:
        example = value.get("x-oaiMeta", {}).get("example")
        if example is not None:
            reduced["x-oaiMeta"] = {"example": example}
    return reduced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="openapi.json or openapi.yaml of openai-openapi")
    parser.add_argument("--commit", required=True, help="the openai-openapi commit it is from")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path(__file__).with_name("openai-openapi.json")
    )
    args = parser.parse_args(argv)
    source = {
        "repository": "https://github.com/openai/openai-openapi",
        "commit": args.commit,
        "file": args.spec.name,
        "license": "MIT (LICENSE beside this file)",
    }
    reduced = reduce(load(args.spec), source)
    text = json.dumps(reduced, indent=1, ensure_ascii=False) + "\n"
    args.output.write_text(text, encoding="utf-8")
    print(f"{args.output}: {len(OPERATIONS)} operations, {len(text)} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
