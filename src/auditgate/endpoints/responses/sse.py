"""Server-sent events of a Responses stream, as OpenAI sends them.

``event: <type>\\ndata: <json>\\n\\n`` for each event; no ``data: [DONE]`` (the terminal
``response.completed`` / ``.incomplete`` / ``.failed`` event ends the stream).  The official SDK
reads the type from the JSON, other clients from the ``event:`` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

__all__ = ["HEADERS", "encode_events"]

HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_encode: Final = msgspec.json.Encoder().encode
_HEADS: Final = {
    kind: b"event: " + kind.encode() + b"\ndata: "
    for kind in (
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.refusal.delta",
        "response.refusal.done",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_part.done",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.completed",
        "response.incomplete",
        "response.failed",
    )
}
"""The ``event:`` line and ``data:`` prefix of the types the writer makes."""


def encode_events(events: Sequence[dict[str, Any]]) -> bytes:
    """The SSE bytes of ``events``, joined so a batch goes out in one write.

    ``response.created`` and ``response.in_progress`` carry the same ``response`` object: a
    lifecycle event (``type``, ``sequence_number``, ``response``, in that order) is spliced
    around the object's JSON, encoded once per object and call.
    """
    out = []
    shared: dict[int, bytes] = {}
    for event in events:
        kind = event["type"]
        head = _HEADS.get(kind) or b"event: " + kind.encode() + b"\ndata: "
        response = event.get("response")
        if response is not None and len(event) == 3:
            data = shared.get(id(response))
            if data is None:
                data = shared[id(response)] = _encode(response)
            out.append(
                b'%b{"type":%b,"sequence_number":%d,"response":%b}\n\n'
                % (head, _encode(kind), event["sequence_number"], data)
            )
            continue
        out.append(head + _encode(event) + b"\n\n")
    return b"".join(out)
