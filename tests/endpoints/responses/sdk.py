"""The official SDK as the judge of what the gateway sends: its models, its accumulator, its SSE
decoder.  Shared by the tests of this package."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pydantic
from openai._streaming import SSEDecoder
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent

EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
ITEM: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseItem)

ALLOWED_EXTRAS = {
    ("Response", "store"),
    ("ResponseFunctionCallArgumentsDoneEvent", "name"),
}
"""Fields OpenAI's spec has and the SDK's models lack: OpenAI sends them, so do we."""


def extras(model: Any) -> set[tuple[str, str]]:
    """Every ``(model class, field)`` the SDK kept as an unknown field, anywhere in ``model``."""
    found: set[tuple[str, str]] = set()
    if isinstance(model, pydantic.BaseModel):
        for key in model.model_extra or {}:
            found.add((type(model).__name__, key))
        for name in type(model).model_fields:
            found |= extras(getattr(model, name))
    elif isinstance(model, list | tuple):
        for value in model:
            found |= extras(value)
    elif isinstance(model, dict):
        for value in model.values():
            found |= extras(value)
    return found


def event_model(event: dict[str, Any]) -> Any:
    """The SDK's typed model of ``event``; fails on a missing or invented field."""
    model = EVENT.validate_python(event)
    assert extras(model) <= ALLOWED_EXTRAS, extras(model)
    assert type(model).__name__ != "ResponseStreamEvent"
    return model


def response_model(response: dict[str, Any]) -> Response:
    """The SDK's ``Response`` of ``response``; fails on a missing or invented field."""
    model = Response.model_validate(response)
    assert extras(model) <= ALLOWED_EXTRAS, extras(model)
    return model


def item_model(item: dict[str, Any]) -> Any:
    """The SDK's ``ResponseItem`` (a listed input item); fails on a missing or invented field."""
    model = ITEM.validate_python(item)
    assert extras(model) == set(), extras(model)
    return model


def accumulate(events: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """What the SDK's stream accumulator makes of ``events``.

    Returns the final response it would hand ``get_final_response()`` (as JSON, without the
    SDK's own ``parsed`` / ``parsed_arguments`` additions; ``None`` without
    ``response.completed``), and, per item id, the text or arguments it built from the deltas.
    """
    state: ResponseStreamState[Any] = ResponseStreamState(
        input_tools=openai.omit, text_format=openai.omit
    )
    built: dict[str, str] = {}
    final = None
    for event in events:
        for out in state.handle_event(event_model(event)):
            if out.type in ("response.output_text.delta", "response.function_call_arguments.delta"):
                built[out.item_id] = out.snapshot
            elif out.type == "response.completed":
                final = out.response.to_dict()
    if final is not None:
        for item in final["output"]:
            item.pop("parsed_arguments", None)
            for part in item.get("content") or ():
                part.pop("parsed", None)
    return final, built


def decode_sse(data: bytes) -> list[tuple[str | None, Any]]:
    """``(event name, JSON data)`` of each server-sent event, as the SDK's decoder reads them."""
    response = httpx.Response(200, content=data)
    return [(sse.event, sse.json()) for sse in SSEDecoder().iter_bytes(response.iter_bytes())]
