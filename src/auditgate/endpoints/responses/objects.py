"""The Responses API's objects as the gateway builds them: the ``response``, its items, usage.

Ids are deterministic from the gateway's request id, so a stream's events, its final object and
the record all agree, and the same engine output always gets the same ids:

- the response: ``resp_<request_id>``;
- output item ``k`` (its ``output_index``): ``rs_<request_id>_<k>`` (reasoning),
  ``msg_<request_id>_<k>`` (message), ``fc_<request_id>_<k>`` (function call);
- a function call's ``call_id`` when the engine gave none: ``call_<request_id>_<k>``.

The ``response`` object carries every field of the official SDK's ``Response`` model, in
OpenAI's order, ``null`` where the gateway has nothing to say (hosted-platform fields such as
``moderation`` or ``tool_usage``), plus ``store``, which OpenAI sends although the SDK's model
does not declare it — except the fields OpenAI's specification types as non-nullable and
optional (:data:`OMITTED_WHEN_NULL`: ``user``, ``prompt_cache_options``, ``usage`` before the
end, a JSON schema format's ``description``), which are left out when they have no value.
Request fields are echoed as the gateway used them; ``temperature`` and ``top_p`` are ``null``
unless the client set them (the engine's defaults are not known here).
"""

from __future__ import annotations

from typing import Any, Final

from auditgate.endpoints.responses.protocol import FunctionTool, ResponsesRequest, TextFormat
from auditgate.errors import APIError

__all__ = [
    "INCOMPLETE_REASONS",
    "chat_usage",
    "delta_logprobs",
    "error_object",
    "final_response",
    "function_call_item",
    "item_id",
    "message_item",
    "output_logprobs",
    "reasoning_item",
    "response_id",
    "response_shell",
    "text_part",
    "usage_from_chat",
]

INCOMPLETE_REASONS: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""Chat ``finish_reason`` -> ``incomplete_details.reason``; other finish reasons complete."""

OMITTED_WHEN_NULL: Final = ("user", "prompt_cache_options", "usage")
"""``Response`` fields the specification allows to be absent but not ``null``."""

_PLATFORM_FIELDS: Final = (
    "access_programs",
    "conversation",
    "image",
    "input_transformations",
    "moderation",
    "prompt",
    "prompt_cache_diagnostics",
    "prompt_cache_options",
    "tool_usage",
)
"""``Response`` fields about OpenAI's hosted platform: always ``null`` here."""
_PLATFORM_NULLS: Final = dict.fromkeys(f for f in _PLATFORM_FIELDS if f not in OMITTED_WHEN_NULL)
"""The platform fields the shell carries as ``null`` (one ``update``: this runs per request)."""


def response_id(request_id: str) -> str:
    """The id a client sees for the response of request ``request_id``."""
    return "resp_" + request_id


def item_id(prefix: str, request_id: str, index: int) -> str:
    """The id of output item ``index`` (``rs``, ``msg``, ``fc``; ``call`` for call ids)."""
    return f"{prefix}_{request_id}_{index}"


def response_shell(
    request: ResponsesRequest, *, request_id: str, created_at: int
) -> dict[str, Any]:
    """The ``response`` object before any output: status ``in_progress``, ``output`` empty."""
    p = request.params
    reasoning = p.reasoning
    shell: dict[str, Any] = {
        "id": response_id(request_id),
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": p.instructions,
        "max_output_tokens": p.max_output_tokens,
        "max_tool_calls": p.max_tool_calls,
        "model": p.model,
        "output": [],
        "parallel_tool_calls": p.parallel_tool_calls is not False,
        "previous_response_id": p.previous_response_id,
        "prompt_cache_key": p.prompt_cache_key,
        "prompt_cache_retention": p.prompt_cache_retention,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
        },
        "safety_identifier": p.safety_identifier,
        "service_tier": p.service_tier,
        "store": request.store,
        "temperature": p.temperature,
        "text": {
            "format": _format(p.text.format if p.text else None),
            "verbosity": p.text.verbosity if p.text else None,
        },
        "tool_choice": p.tool_choice if p.tool_choice is not None else "auto",
        "tools": [_tool(tool) for tool in request.tools],
        "top_logprobs": p.top_logprobs,
        "top_p": p.top_p,
        "truncation": p.truncation or "disabled",
        "usage": None,
        "user": p.user,
        "metadata": p.metadata if p.metadata is not None else {},
    }
    shell.update(_PLATFORM_NULLS)
    del shell["usage"]  # set at the end
    if p.user is None:
        del shell["user"]
    return shell


def final_response(
    shell: dict[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    model: str | None,
    service_tier: str | None,
    completed_at: int | None = None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A new ``response`` object: ``shell`` with the outcome filled in (``shell`` unchanged).

    ``completed_at`` is kept only for status ``completed`` (OpenAI's rule); ``incomplete_details``
    is set for status ``incomplete``.
    """
    response = dict(shell)
    response["status"] = status
    response["completed_at"] = completed_at if status == "completed" else None
    response["error"] = error
    if status == "incomplete":
        response["incomplete_details"] = {"reason": incomplete_reason}
    response["output"] = output
    converted = usage_from_chat(usage)
    if converted is not None:
        response["usage"] = converted
    if model is not None:
        response["model"] = model
    if service_tier is not None:
        response["service_tier"] = service_tier
    return response


def reasoning_item(id_: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """A ``reasoning`` item holding the chain of thought as ``reasoning_text`` parts, or (the
    client asked for a summary) as ``summary_text`` parts in its ``summary``."""
    if parts and parts[0]["type"] == "summary_text":
        return {"id": id_, "type": "reasoning", "summary": parts, "content": [], "status": status}
    return {"id": id_, "type": "reasoning", "summary": [], "content": parts, "status": status}


def message_item(id_: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """An assistant ``message`` item with ``output_text`` / ``refusal`` parts."""
    return {"id": id_, "type": "message", "status": status, "content": parts, "role": "assistant"}


def function_call_item(
    id_: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    """A ``function_call`` item."""
    return {
        "id": id_,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    """An ``output_text`` part (``logprobs`` in :func:`output_logprobs`' shape)."""
    return {"type": "output_text", "annotations": [], "logprobs": logprobs, "text": text}


def error_object(error: APIError) -> dict[str, Any]:
    """A failed response's ``error``: OpenAI's ``rate_limit_exceeded`` for a 429, else
    ``server_error``, with the error's message."""
    code = "rate_limit_exceeded" if error.status_code == 429 else "server_error"
    return {"code": code, "message": error.message}


def usage_from_chat(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat ``usage`` object in the Responses API's terms (``None`` stays ``None``)."""
    if usage is None:
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": usage.get("prompt_tokens") or 0,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": usage.get("completion_tokens") or 0,
        "output_tokens_details": {
            "reasoning_tokens": completion_details.get("reasoning_tokens") or 0,
        },
        "total_tokens": usage.get("total_tokens") or 0,
    }


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A Responses ``usage`` object in chat terms (a record's ``usage``); ``None`` for none."""
    if not isinstance(usage, dict):
        return None
    out: dict[str, Any] = {
        "prompt_tokens": usage.get("input_tokens") or 0,
        "completion_tokens": usage.get("output_tokens") or 0,
        "total_tokens": usage.get("total_tokens") or 0,
    }
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def delta_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat ``logprobs.content`` entries in a text event's shape (no ``bytes``).

    Entries without a ``token`` and a ``logprob`` are left out rather than given made-up values.
    """
    return [
        {
            "token": entry["token"],
            "logprob": entry["logprob"],
            "top_logprobs": [
                {"token": top["token"], "logprob": top["logprob"]}
                for top in entry.get("top_logprobs") or ()
                if "token" in top and "logprob" in top
            ],
        }
        for entry in entries
        if "token" in entry and "logprob" in entry
    ]


def output_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat ``logprobs.content`` entries in an ``output_text`` part's shape.

    ``bytes`` is required there; where the engine sent ``null`` it is the token's UTF-8 bytes,
    which is what the field means.
    """
    return [
        {
            "token": entry["token"],
            "bytes": _bytes(entry),
            "logprob": entry["logprob"],
            "top_logprobs": [
                {"token": top["token"], "bytes": _bytes(top), "logprob": top["logprob"]}
                for top in entry.get("top_logprobs") or ()
                if "token" in top and "logprob" in top
            ],
        }
        for entry in entries
        if "token" in entry and "logprob" in entry
    ]


def _bytes(entry: dict[str, Any]) -> list[int]:
    value = entry.get("bytes")
    return value if type(value) is list else list(str(entry["token"]).encode())


def _format(fmt: TextFormat | None) -> dict[str, Any]:
    if fmt is None or fmt.type == "text":
        return {"type": "text"}
    if fmt.type == "json_object":
        return {"type": "json_object"}
    out: dict[str, Any] = {"type": "json_schema"}
    if fmt.description is not None:
        out["description"] = fmt.description
    return out | {"name": fmt.name, "schema": fmt.schema, "strict": fmt.strict}


def _tool(tool: FunctionTool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }
