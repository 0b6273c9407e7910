"""Input items of the Responses API: their types, and parsing them with OpenAI's 400s.

An item is a message (``role`` + ``content``; an item with those and no ``type`` is a message,
as OpenAI accepts), a ``function_call``, a ``function_call_output`` or a ``reasoning`` item.
Message content is a string or parts: ``input_text`` / ``input_image`` / ``input_file`` for the
user, system and developer roles, ``output_text`` / ``refusal`` for the assistant (OpenAI's
split).  Refused with a 400 that says so: other item types (hosted tools' calls, and
``item_reference``: items are not stored by id), an ``input_image`` by ``file_id`` and an
``input_file`` by ``file_url`` (no Files API here, and the gateway fetches nothing).

The same parser reads the client's ``input`` and a stored conversation's items (which are
OpenAI-shaped output items: ``id`` and ``status`` are accepted and ignored).  Unknown fields of
an item are not kept in its typed form.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeVar

import msgspec

from auditgate.errors import InvalidRequestError

__all__ = [
    "AssistantMessage",
    "FunctionCall",
    "FunctionCallOutput",
    "InputContent",
    "InputFile",
    "InputImage",
    "InputText",
    "Item",
    "Message",
    "OutputText",
    "Reasoning",
    "ReasoningText",
    "Refusal",
    "SummaryText",
    "convert",
    "invalid_value",
    "parse_items",
    "validation_error",
]


class InputText(msgspec.Struct, tag="input_text", tag_field="type"):
    text: str


class InputImage(msgspec.Struct, tag="input_image", tag_field="type", kw_only=True):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(msgspec.Struct, tag="input_file", tag_field="type", kw_only=True):
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


class OutputText(msgspec.Struct, tag="output_text", tag_field="type"):
    text: str


class Refusal(msgspec.Struct, tag="refusal", tag_field="type"):
    refusal: str


class SummaryText(msgspec.Struct, tag="summary_text", tag_field="type"):
    text: str


class ReasoningText(msgspec.Struct, tag="reasoning_text", tag_field="type"):
    text: str


InputContent = InputText | InputImage | InputFile


class Message(msgspec.Struct, kw_only=True):
    """A user, system or developer message."""

    role: Literal["user", "system", "developer"]
    content: str | list[InputContent]
    id: str | None = None


class AssistantMessage(msgspec.Struct, kw_only=True):
    """An assistant message: an earlier answer, given back as context."""

    content: str | list[OutputText | Refusal]
    id: str | None = None


class FunctionCall(msgspec.Struct, kw_only=True):
    """A function call the model made."""

    call_id: str
    name: str
    arguments: str
    id: str | None = None


class FunctionCallOutput(msgspec.Struct, kw_only=True):
    """The result of a function call, from the client."""

    call_id: str
    output: str | list[InputContent]
    id: str | None = None


class Reasoning(msgspec.Struct, kw_only=True):
    """A reasoning item: the model's chain of thought (``content``) and/or its ``summary``."""

    summary: list[SummaryText] = []
    content: list[ReasoningText] | None = None
    id: str | None = None


Item = Message | AssistantMessage | FunctionCall | FunctionCallOutput | Reasoning
"""One input item, typed; unknown fields of the client's item are not kept here."""


_ITEM_TYPES: Final[dict[str, type[Item]]] = {
    "function_call": FunctionCall,
    "function_call_output": FunctionCallOutput,
    "reasoning": Reasoning,
}
_ROLES: Final = ("user", "assistant", "system", "developer")
_INPUT_PARTS: Final = ("input_text", "input_image", "input_file")
_ASSISTANT_PARTS: Final = ("output_text", "refusal")
_T = TypeVar("_T")


def parse_items(raw: list[Any], param: str = "input") -> list[Item]:
    """Typed items of a list of input items (the client's, or a stored conversation's)."""
    items: list[Item] = []
    for i, value in enumerate(raw):
        where = f"{param}[{i}]"
        if not isinstance(value, dict):
            raise InvalidRequestError(
                f"Invalid type for '{where}': expected an object, but got "
                f"{_json_type(value)} instead.",
                param=where,
                code="invalid_type",
            )
        items.append(_parse_item(value, where))
    return items


def _parse_item(value: dict[str, Any], where: str) -> Item:
    kind = value.get("type")
    if kind is None:
        if "role" in value:
            kind = "message"
        elif "id" in value:
            kind = "item_reference"
    if kind == "message":
        role = value.get("role")
        if role not in _ROLES:
            raise invalid_value(role, _ROLES, f"{where}.role")
        if role == "assistant":
            _check_part_types(value.get("content"), _ASSISTANT_PARTS, f"{where}.content")
            return convert(value, AssistantMessage, where)
        _check_part_types(value.get("content"), _INPUT_PARTS, f"{where}.content")
        message = convert(value, Message, where)
        _check_inputs(message.content, f"{where}.content")
        return message
    cls = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        if kind is None:
            raise InvalidRequestError(
                f"Missing required parameter: '{where}.type'.",
                param=f"{where}.type",
                code="missing_required_parameter",
            )
        raise InvalidRequestError(
            f"Input items of type {kind!r} are not supported by this gateway: it takes "
            "messages, 'function_call', 'function_call_output' and 'reasoning' items.",
            param=f"{where}.type",
            code="invalid_value",
        )
    if cls is FunctionCallOutput:
        _check_part_types(value.get("output"), _INPUT_PARTS, f"{where}.output")
    item = convert(value, cls, where)
    if isinstance(item, FunctionCallOutput):
        _check_inputs(item.output, f"{where}.output")
    return item


def convert(value: dict[str, Any], cls: type[_T], where: str) -> _T:
    """``msgspec.convert`` with its errors as 400s naming ``where`` and the path below it."""
    try:
        return msgspec.convert(value, cls)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc), where) from None


def _check_part_types(parts: Any, allowed: tuple[str, ...], where: str) -> None:
    """A clear 400 for a content part type the role does not take (msgspec's says less)."""
    if type(parts) is not list:
        return  # not a list: the conversion reports the type error
    for j, part in enumerate(parts):
        kind = part.get("type") if type(part) is dict else None
        if kind not in allowed:
            raise invalid_value(kind, allowed, f"{where}[{j}].type")


def _check_inputs(content: str | list[InputContent], where: str) -> None:
    """Refuse the parts that would need OpenAI's Files API or a fetch by the gateway."""
    if isinstance(content, str):
        return
    for j, part in enumerate(content):
        if isinstance(part, InputImage) and part.image_url is None:
            raise InvalidRequestError(
                "An 'input_image' needs an 'image_url' (a URL or a data URL): images by "
                "'file_id' are not supported by this gateway.",
                param=f"{where}[{j}].image_url",
                code="invalid_value",
            )
        if isinstance(part, InputFile) and part.file_data is None and part.file_id is None:
            raise InvalidRequestError(
                "An 'input_file' needs 'file_data' or 'file_id': files by 'file_url' are not "
                "supported by this gateway.",
                param=f"{where}[{j}].file_data",
                code="invalid_value",
            )


def invalid_value(value: Any, allowed: tuple[str, ...], param: str) -> InvalidRequestError:
    """OpenAI's 400 for a value outside ``allowed`` (or missing: ``None``)."""
    names = [f"'{a}'" for a in allowed]
    if len(names) == 1:
        supported = names[0]
    elif len(names) == 2:
        supported = f"{names[0]} and {names[1]}"
    else:
        supported = ", ".join(names[:-1]) + f", and {names[-1]}"
    if value is None:
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    shown = repr(value) if isinstance(value, str) else _json_type(value)
    return InvalidRequestError(
        f"Invalid value: {shown[:80]}. Supported values are: {supported}.",
        param=param,
        code="invalid_value",
    )


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), "null")


def validation_error(text: str, where: str | None = None) -> InvalidRequestError:
    """The 400 for a msgspec validation message, naming the parameter as OpenAI does.

    ``where`` is the path of the converted value in the body (``input[3]``), ``None`` for the
    body itself.
    """
    # msgspec says e.g. "Expected `int`, got `str` - at `$.max_output_tokens`",
    # "Object missing required field `text` - at `$.content[0]`" (relative to the converted
    # value), "Invalid enum value 'x' - at `$.truncation`".
    message, sep, path = text.partition(" - at `$")
    relative = path.rstrip("`").replace("[...]", "") if sep else ""
    if message.startswith("Object missing required field `"):
        param = _join(where, f"{relative}.{message.split('`')[1]}")
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    param = _join(where, relative)
    detail = f"{message[0].lower()}{message[1:]}"
    if message.startswith("Invalid"):
        return InvalidRequestError(
            f"Invalid value for '{param}': {detail}.", param=param, code="invalid_value"
        )
    return InvalidRequestError(
        f"Invalid type for '{param}': {detail}.", param=param, code="invalid_type"
    )


def _join(where: str | None, relative: str) -> str:
    """``input[0]`` + ``.content[1].text`` -> ``input[0].content[1].text``."""
    if where is None:
        return relative.lstrip(".") or "body"
    return where + relative
