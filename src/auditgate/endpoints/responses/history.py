"""Stored conversations: what ``previous_response_id`` brings in, and what ``input_items`` lists.

A conversation is a chain of stored turns, oldest first; a turn is the request body the client
sent and the ``response`` object it got (both as stored in the record).

- :func:`context_items`: what goes before a new request's ``input`` when it continues the last
  turn of ``chain``: every turn's input items, then its output items.  The turns' instructions
  are not carried over (OpenAI: "the instructions from a previous response will not be carried
  over to the next response").
- :func:`input_items`: what ``GET /v1/responses/{id}/input_items`` lists for the last turn of
  ``chain``: the whole context the model was given, instructions aside — the earlier turns'
  input and output items, then the turn's own input items (OpenAI prepends a conversation's
  items to a response's ``input_items`` the same way).
- :func:`page`: one page of such a list, in OpenAI's list shape.

Items are in the shape the API lists them (the SDK's ``ResponseItem``): ``type`` always set;
message content a list of parts (a string becomes one ``input_text``, or for the assistant
``output_text``, part); ``status`` ``completed`` unless the item says otherwise; an
``input_image``'s ``detail`` ``auto`` unless given; and an ``id`` for every item, the client's
when it gave one, else ``<prefix>_<request_id>_in<k>`` for input item ``k`` of the turn (prefix
``msg``, ``fc``, ``fco`` or ``rs``), so ids are stable and can be paged ``after``.  Items of a
type the gateway does not take itself (stored from a passthrough upstream) are listed as they
came, with an ``item_…`` id when they had none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

from auditgate.errors import InvalidRequestError

__all__ = ["MAX_LIMIT", "Turn", "context_items", "input_items", "page", "turn_input_items"]

Turn = tuple[dict[str, Any], dict[str, Any]]
"""One stored turn: ``(request body, response object)``."""

MAX_LIMIT: Final = 100
_PREFIXES: Final = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
}


def context_items(chain: Sequence[Turn]) -> list[dict[str, Any]]:
    """The items a request continuing the last turn of ``chain`` comes after."""
    items: list[dict[str, Any]] = []
    for body, response in chain:
        items.extend(turn_input_items(body, response["id"]))
        items.extend(response.get("output") or ())
    return items


def input_items(chain: Sequence[Turn]) -> list[dict[str, Any]]:
    """The input items of the last turn of ``chain`` (earlier turns' items first)."""
    if not chain:
        return []
    body, response = chain[-1]
    return [*context_items(chain[:-1]), *turn_input_items(body, response["id"])]


def turn_input_items(body: dict[str, Any], response_id: str) -> list[dict[str, Any]]:
    """The ``input`` of one request as listed items (ids from the response's id)."""
    raw = body.get("input")
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    elif not isinstance(raw, list):
        return []
    request_id = response_id.removeprefix("resp_")
    listed = []
    for k, item in enumerate(raw):
        if isinstance(item, dict):
            kind = item.get("type") or "message"
            fallback = f"{_PREFIXES.get(kind, 'item')}_{request_id}_in{k}"
            listed.append(_listed(item, kind, item.get("id") or fallback))
    return listed


def page(
    items: Sequence[dict[str, Any]],
    *,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    before: str | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    """One page of ``items`` as OpenAI lists them: ``{"object": "list", "data", "first_id",
    "last_id", "has_more"}``; ``order`` defaults to ``desc`` as in OpenAI's spec.  ``after`` /
    ``before``: only the items after / before that item in ``order``; one that is no item's id
    is a 400, as for every list of the API.  ``first_id`` / ``last_id`` are ``""`` on an empty
    page: the specification types them as required strings."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"Invalid 'limit': expected an integer between 1 and {MAX_LIMIT}, got {limit}.",
            param="limit",
            code="invalid_value",
        )
    listed = list(items) if order == "asc" else list(reversed(items))
    ids = [item["id"] for item in listed]
    end = len(listed)
    if before is not None:
        end = _position(ids, before, "before")
    start = 0
    if after is not None:
        start = _position(ids, after, "after") + 1
    listed = listed[start:end]
    data = listed[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": len(listed) > limit,
    }


def _position(ids: list[str], cursor: str, param: str) -> int:
    if cursor not in ids:
        raise InvalidRequestError(
            f"Invalid '{param}': no object with id '{cursor}' in this list.",
            param=param,
            code="invalid_value",
        )
    return ids.index(cursor)


def _listed(item: dict[str, Any], kind: str, item_id: str) -> dict[str, Any]:
    """A validated input item in the API's listed shape (see the module docstring)."""
    status = item.get("status") or "completed"
    if kind == "message":
        role = item.get("role")
        content = item.get("content")
        if role == "assistant":
            return {
                "id": item_id,
                "type": "message",
                "status": status,
                "content": [_assistant_part(p) for p in _parts(content, "output_text")],
                "role": "assistant",
            }
        return {
            "id": item_id,
            "type": "message",
            "role": role,
            "content": [_input_part(p) for p in _parts(content, "input_text")],
            "status": status,
        }
    if kind == "function_call":
        return {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "arguments": item.get("arguments"),
            "call_id": item.get("call_id"),
            "name": item.get("name"),
        }
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = [_input_part(p) for p in output]
        return {
            "id": item_id,
            "type": "function_call_output",
            "call_id": item.get("call_id"),
            "output": output,
            "status": status,
        }
    if kind == "reasoning":
        listed: dict[str, Any] = {"id": item_id, "type": kind, "summary": item.get("summary") or []}
        for key in ("content", "encrypted_content"):
            if item.get(key) is not None:
                listed[key] = item[key]
        listed["status"] = status
        return listed
    # A type the gateway does not take itself (an upstream's, in passthrough): as it came.
    return {**item, "id": item_id, "type": kind}


def _parts(content: Any, text_type: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": text_type, "text": content}]
    return [p for p in content or () if isinstance(p, dict)]


def _input_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "input_text":
        return {"type": "input_text", "text": part.get("text")}
    if kind == "input_image":
        return {
            "type": "input_image",
            "detail": part.get("detail") or "auto",
            "file_id": part.get("file_id"),
            "image_url": part.get("image_url"),
        }
    keys = ("file_data", "file_id", "file_url", "filename")
    return {"type": kind, **{k: part[k] for k in keys if part.get(k) is not None}}


def _assistant_part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal")}
    return {
        "type": "output_text",
        "annotations": part.get("annotations") or [],
        "text": part.get("text"),
    }
