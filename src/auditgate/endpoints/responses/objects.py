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
does not declare it.  Request fields are echoed as the gateway used them; ``temperature`` and
``top_p`` are ``null`` unless the client set them (the engine's defaults are not known here).
"""

from __future__ import annotations

from typing import Any, Final

from auditgate.endpoints.responses.protocol import FunctionTool, ResponsesRequest, TextFormat
from auditgate.errors import APIError

__all__ = [
    "INCOMPLETE_REASONS",
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
    for name in _PLATFORM_FIELDS:
        shell[name] = None
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
    response["usage"] = usage_from_chat(usage)
    if model is not None:
        response["model"] = model
    if service_tier is not None:
        response["service_tier"] = service_tier
    return response


def reasoning_item(id_: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """A ``reasoning`` item holding the chain of thought as ``reasoning_text`` parts."""
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
    return {
        "type": "json_schema",
        "description": fmt.description,
        "name": fmt.name,
        "schema": fmt.schema,
        "strict": fmt.strict,
    }


def _tool(tool: FunctionTool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }
