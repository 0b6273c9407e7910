"""Server-sent events exactly as OpenAI sends them: ``data: {chunk}\\n\\n`` ... ``data: [DONE]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from auditgate.errors import APIError

DONE: Final = b"data: [DONE]\n\n"
HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_encode: Final = msgspec.json.Encoder().encode


def frames(chunks: Sequence[dict[str, Any]]) -> bytes:
    """One ``data:`` frame per chunk, joined so a batch goes out in one write."""
    if len(chunks) == 1:
        return b"data: " + _encode(chunks[0]) + b"\n\n"
    return b"".join([b"data: " + _encode(c) + b"\n\n" for c in chunks])


def error_frame(error: APIError) -> bytes:
    """An in-stream error event, as OpenAI and vLLM send it; the SDK raises on it."""
    return b"data: " + _encode(error.to_dict()) + b"\n\n"
