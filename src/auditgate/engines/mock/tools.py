"""Which tools the mock calls, and the calls it makes (``tools``, ``tool_choice``,
``parallel_tool_calls``).

A function tool is called when ``tools`` has one and ``tool_choice`` is not ``"none"``:

- a named ``tool_choice`` (``{"type": "function", "function": {"name": ...}}``) calls that tool,
  once;
- ``allowed_tools`` restricts the candidates to the tools it lists;
- otherwise (``"auto"``, ``"required"``, absent) the candidates are every function tool, in the
  order given.  With ``parallel_tool_calls`` not ``false`` and several candidates, the mock calls
  1 to 3 of them (the first ones; how many is drawn from the request's PRNG, so it varies with
  ``seed`` and is the same for the same request); with ``parallel_tool_calls: false``, only the
  first.

Each call has an id ``call_<24 hex>`` and JSON arguments that fit the tool's ``parameters``
schema (every property present when the function is ``strict``); a tool without ``parameters``
gets ``{}``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Final

from auditgate.engines.mock.schema import instance
from auditgate.engines.mock.text import VOCABULARY, split_tokens
from auditgate.errors import InvalidRequestError

__all__ = ["Call", "ToolPlan", "make_calls", "tool_plan"]

MAX_PARALLEL: Final = 3
_NO_PARAMETERS: Final = {"type": "object", "properties": {}}


@dataclasses.dataclass(frozen=True, slots=True)
class ToolPlan:
    """The tools a request lets the mock call."""

    functions: tuple[dict[str, Any], ...]
    """Candidate function definitions, in the request's order (at least one)."""
    parallel: bool
    """Whether several may be called in one answer."""


@dataclasses.dataclass(slots=True)
class Call:
    """One tool call of a choice."""

    id: str
    name: str
    arguments: list[str]
    """The arguments' JSON text, as tokens (possibly cut by the token budget)."""


def tool_plan(tools: Any, tool_choice: Any, parallel_tool_calls: Any) -> ToolPlan | None:
    """The tools to call for this request, or ``None`` for a text answer."""
    if tools is None or tool_choice == "none":
        return None
    functions = _functions(tools)
    if isinstance(tool_choice, dict):
        kind = tool_choice.get("type")
        if kind == "function":
            chosen = tool_choice.get("function")
            return ToolPlan((_named(functions, chosen),), parallel=False)
        if kind == "allowed_tools":
            functions = _allowed(functions, tool_choice.get("allowed_tools"))
    if not functions:
        return None
    return ToolPlan(tuple(functions), parallel=parallel_tool_calls is not False)


def make_calls(plan: ToolPlan, rng: random.Random) -> list[Call]:
    """The calls of one choice, drawn with ``rng``."""
    count = 1
    if plan.parallel and len(plan.functions) > 1:
        count = rng.randint(1, min(len(plan.functions), MAX_PARALLEL))
    calls = []
    for function in plan.functions[:count]:
        call_id = f"call_{rng.getrandbits(96):024x}"
        parameters = function.get("parameters")
        try:
            value = instance(
                _NO_PARAMETERS if parameters is None else parameters,
                rng,
                VOCABULARY,
                strict=function.get("strict") is True,
            )
        except (TypeError, ValueError) as exc:
            # A schema with contradictory or mistyped bounds (minimum > maximum, ...).
            raise InvalidRequestError(
                f"Invalid 'parameters' schema for function '{function['name']}': {exc}",
                param="tools",
            ) from exc
        calls.append(Call(call_id, function["name"], split_tokens(json.dumps(value))))
    return calls


def _functions(tools: Any) -> list[dict[str, Any]]:
    """The function definitions of ``tools`` (other tool types are not called)."""
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
    return functions


def _named(functions: list[dict[str, Any]], chosen: Any) -> dict[str, Any]:
    name = chosen.get("name") if isinstance(chosen, dict) else None
    for function in functions:
        if function["name"] == name:
            return function
    raise InvalidRequestError(
        f"Invalid value for 'tool_choice': no function named '{name}' was specified in the "
        "'tools' parameter.",
        param="tool_choice",
    )


def _allowed(functions: list[dict[str, Any]], allowed: Any) -> list[dict[str, Any]]:
    """The functions an ``allowed_tools`` choice lists, in the order of ``tools``."""
    listed = allowed.get("tools") if isinstance(allowed, dict) else None
    if not isinstance(listed, list):
        raise InvalidRequestError(
            "Missing required parameter: 'tool_choice.allowed_tools.tools'.",
            param="tool_choice.allowed_tools.tools",
            code="missing_required_parameter",
        )
    names = set()
    for tool in listed:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            names.add(function.get("name"))
    chosen = [f for f in functions if f["name"] in names]
    if not chosen:
        raise InvalidRequestError(
            "Invalid value for 'tool_choice': none of the allowed tools is a function in the "
            "'tools' parameter.",
            param="tool_choice",
        )
    return chosen
