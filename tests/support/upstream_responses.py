"""The fake upstream's ``POST …/responses``: OpenAI's Responses API, small and deterministic.

:func:`response` is the ``response`` object a request gets (one message of ``chunks`` text
pieces, ``tok0 tok1 …``; usage counts the words of the input's text), :func:`events` the typed
stream events of the same answer, numbered from 0, as OpenAI sends them.  Tests build their
expected values with these.  Ids are the upstream's own (``resp_fake``, ``msg_fake``), which the
gateway must replace by its own for the client.
"""

from __future__ import annotations

from typing import Any

import msgspec

CREATED = 1_700_000_000
RESPONSE_ID = "resp_fake"
MESSAGE_ID = "msg_fake"


def _text(chunks: int) -> list[str]:
    return [f"tok{i} " for i in range(chunks)]


def input_tokens(body: dict[str, Any]) -> int:
    """Words in the request's text: ``instructions``, a string ``input``, and the text of its
    items (string content, or ``input_text`` / ``output_text`` parts)."""
    words = len(str(body.get("instructions") or "").split())
    raw = body.get("input")
    items = [{"content": raw}] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    for item in items:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            texts = [str(p.get("text") or "") for p in content if isinstance(p, dict)]
            words += sum(len(text.split()) for text in texts)
    return words


def _shell(body: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": body.get("model", "fake-model"),
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _message(text: str, status: str) -> dict[str, Any]:
    parts = [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "status": status,
        "content": parts if text or status == "completed" else [],
        "role": "assistant",
    }


def response(body: dict[str, Any], chunks: int = 4) -> dict[str, Any]:
    """The completed ``response`` a request gets."""
    out = _shell(body, "completed")
    out["output"] = [_message("".join(_text(chunks)), "completed")]
    prompt = input_tokens(body)
    out["usage"] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": chunks,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + chunks,
    }
    return out


def events(body: dict[str, Any], chunks: int = 4) -> list[dict[str, Any]]:
    """The stream events of :func:`response`, numbered from 0."""
    final = response(body, chunks)
    shell = _shell(body, "in_progress")
    where = {"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0}
    text = "".join(_text(chunks))
    empty = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    out: list[dict[str, Any]] = [
        {"type": "response.created", "response": shell},
        {"type": "response.in_progress", "response": shell},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**_message("", "in_progress"), "content": []}},
        {"type": "response.content_part.added", **where, "part": empty},
    ]  # fmt: skip
    out += [
        {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        for piece in _text(chunks)
    ]
    out += [
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**empty, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {"type": "response.completed", "response": final},
    ]
    return [{**event, "sequence_number": i} for i, event in enumerate(out)]


def sse(events_: list[dict[str, Any]]) -> list[bytes]:
    """Each event as OpenAI frames it: ``event:`` and ``data:`` lines."""
    return [
        b"event: " + e["type"].encode() + b"\ndata: " + msgspec.json.encode(e) + b"\n\n"
        for e in events_
    ]
