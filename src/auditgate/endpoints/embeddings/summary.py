"""What an embeddings record keeps of the response: never the vectors, only their shape.

Vectors are large, say nothing a reader of an audit trail needs, and (being a function of the
input) would leak it into records that must not hold inputs.  The record's ``response`` is

``{"object": "embedding.summary", "model", "count", "dimensions", "encoding_format", "usage"}``

- ``count``: how many vectors the client received;
- ``dimensions``: their length (a float32 count for ``base64`` vectors), or the sorted distinct
  lengths if an upstream mixed them, ``null`` with no vectors;
- ``encoding_format``: ``float`` or ``base64``, as received.
"""

from __future__ import annotations

from typing import Any

__all__ = ["summarize"]


def summarize(response: dict[str, Any]) -> dict[str, Any]:
    """The summary of one embeddings ``list`` the client received."""
    data = response.get("data")
    items = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    lengths: set[int] = set()
    formats: set[str] = set()
    for item in items:
        vector = item.get("embedding")
        if isinstance(vector, list):
            lengths.add(len(vector))
            formats.add("float")
        elif isinstance(vector, str):
            lengths.add(_base64_floats(vector))
            formats.add("base64")
    dimensions: int | list[int] | None = None
    if len(lengths) == 1:
        dimensions = next(iter(lengths))
    elif lengths:
        dimensions = sorted(lengths)
    return {
        "object": "embedding.summary",
        "model": response.get("model"),
        "count": len(items),
        "dimensions": dimensions,
        "encoding_format": formats.pop() if len(formats) == 1 else None,
        "usage": response.get("usage"),
    }


def _base64_floats(text: str) -> int:
    """How many float32 values a base64 string holds, without decoding it."""
    stripped = text.rstrip("=")
    return (len(stripped) * 3 // 4) // 4
