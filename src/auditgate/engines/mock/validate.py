"""The limits OpenAI's specification sets on a chat request, as the mock engine enforces them.

The mock answers like OpenAI: a value the published specification (openai-openapi 2.3.0,
``CreateChatCompletionRequest``) forbids is a 400 ``invalid_request_error`` naming the parameter
(``temperature``, ``messages[1].role``, ...), with OpenAI's wording and codes.  Only the mock
does this: in front of an upstream the gateway forwards such values, because servers such as
vLLM accept extensions (other roles, wider ranges) that the upstream itself judges.

Checked here: the numeric ranges (``temperature`` 0-2, ``top_p`` 0-1, ``frequency_penalty`` and
``presence_penalty`` -2-2, ``top_logprobs`` 0-20 and only with ``logprobs: true``), booleans,
enumerated values (``service_tier``, ``reasoning_effort``, ``verbosity``), and every message:
an object whose ``role`` is one of the six roles, with the fields its role requires
(``content`` for developer, system, user and tool messages; ``tool_call_id`` for tool
messages; ``name`` for function messages) and ``content`` a string or a non-empty array of
content parts that each have a ``type`` (text parts a ``text`` string).  ``n``, ``max_tokens``,
``stop``, ``tools``, ``tool_choice`` and ``response_format`` are checked where the engine reads
them.
"""

from __future__ import annotations

from typing import Any, Final

from auditgate.errors import InvalidRequestError

__all__ = ["validate_request"]

_RANGES: Final = (
    # (parameter, minimum, maximum, integer)
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("frequency_penalty", -2, 2, False),
    ("presence_penalty", -2, 2, False),
    ("top_logprobs", 0, 20, True),
)
_BOOLEANS: Final = ("logprobs", "parallel_tool_calls")
_ENUMS: Final = (
    ("service_tier", ("auto", "default", "flex", "scale", "priority", "fast")),
    ("reasoning_effort", ("none", "minimal", "low", "medium", "high", "xhigh", "max")),
    ("verbosity", ("low", "medium", "high")),
)
_CHECKED: Final = frozenset(
    [name for name, *_ in _RANGES] + list(_BOOLEANS) + [name for name, _ in _ENUMS]
)
"""Top-level parameters with limits; most requests set none of them (one set test skips all)."""
_ROLES: Final = ("system", "assistant", "user", "function", "tool", "developer")
_REQUIRED: Final = {
    "developer": ("content",),
    "system": ("content",),
    "user": ("content",),
    "tool": ("content", "tool_call_id"),
    "function": ("content", "name"),
    "assistant": (),
}
_ALSO_REQUIRED: Final = {"tool": "tool_call_id", "function": "name"}
"""The field other than ``content`` a role requires."""
_NULLABLE_CONTENT: Final = frozenset({"assistant", "function"})


def validate_request(body: dict[str, Any]) -> None:
    """Raise a 400 naming the first parameter whose value the specification forbids."""
    if not _CHECKED.isdisjoint(body):
        _check_parameters(body)
    messages = body.get("messages")
    if isinstance(messages, list):
        for position, message in enumerate(messages):
            # The usual message (a known role, string content, its other fields) costs a few
            # lookups: this runs for every message of every mock request.
            if (
                type(message) is dict
                and type(message.get("content")) is str
                and type(role := message.get("role")) is str
                and role in _REQUIRED
                and _ALSO_REQUIRED.get(role, "content") in message
            ):
                continue
            _check_message(f"messages[{position}]", message)


def _check_parameters(body: dict[str, Any]) -> None:
    for name, low, high, integer in _RANGES:
        value = body.get(name)
        if value is not None:
            _check_number(name, value, low, high, integer=integer)
    for name in _BOOLEANS:
        value = body.get(name)
        if value is not None and type(value) is not bool:
            raise _type_error(name, "a boolean", value)
    for name, allowed in _ENUMS:
        value = body.get(name)
        if value is not None and value not in allowed:
            raise _enum_error(name, value, allowed)
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise InvalidRequestError(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
            "'top_logprobs' is used.",
            param="top_logprobs",
            code="invalid_value",
        )


def _check_number(name: str, value: Any, low: int, high: int, *, integer: bool) -> None:
    # JSON Schema's integer is a number without a fractional part: 1e6 is one.
    kind = "integer" if integer else "decimal"
    if type(value) not in (int, float) or (integer and not float(value).is_integer()):
        raise _type_error(name, "an integer" if integer else "a number", value)
    if value > high:
        raise InvalidRequestError(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high}, but got "
            f"{value} instead.",
            param=name,
            code=f"{kind}_above_max_value",
        )
    if value < low:
        raise InvalidRequestError(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low}, but got "
            f"{value} instead.",
            param=name,
            code=f"{kind}_below_min_value",
        )


def _check_message(where: str, message: Any) -> None:
    if not isinstance(message, dict):
        raise _type_error(where, "an object", message)
    role = message.get("role")
    if not isinstance(role, str) or role not in _REQUIRED:
        if role is None:
            raise _missing(f"{where}.role")
        raise _enum_error(f"{where}.role", role, _ROLES)
    for field in _REQUIRED[role]:
        if field not in message or (message[field] is None and role not in _NULLABLE_CONTENT):
            raise _missing(f"{where}.{field}")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _type_error(f"{where}.content", "one of a string or array of objects", content)
    if not content:
        raise InvalidRequestError(
            f"Invalid '{where}.content': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param=f"{where}.content",
            code="empty_array",
        )
    for position, part in enumerate(content):
        path = f"{where}.content[{position}]"
        if not isinstance(part, dict):
            raise _type_error(path, "an object", part)
        if not isinstance(part.get("type"), str):
            raise _missing(f"{path}.type")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _missing(f"{path}.text")


def _missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _type_error(param: str, expected: str, value: Any) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _enum_error(param: str, value: Any, allowed: tuple[str, ...]) -> InvalidRequestError:
    listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
    shown = value if isinstance(value, str) else _json_type(value)
    return InvalidRequestError(
        f"Invalid value: '{shown}'. Supported values are: {listed}.",
        param=param,
        code="invalid_value",
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
