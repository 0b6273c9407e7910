"""What an embeddings record keeps of the response: sizes, never the vectors."""

from __future__ import annotations

import array
import base64

from auditgate.endpoints.embeddings import summarize


def test_float_vectors_summarised() -> None:
    """Count, length, format and usage; no vector."""
    response = {
        "object": "list",
        "model": "m",
        "data": [{"object": "embedding", "index": i, "embedding": [0.5] * 3} for i in range(2)],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert summarize(response) == {
        "object": "embedding.summary",
        "model": "m",
        "count": 2,
        "dimensions": 3,
        "encoding_format": "float",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }


def test_base64_lengths_counted_without_decoding() -> None:
    """A base64 vector's length is its float32 count, whatever its padding."""
    for size in (1, 2, 3, 5, 256):
        encoded = base64.b64encode(array.array("f", [0.25] * size).tobytes()).decode()
        summary = summarize({"data": [{"embedding": encoded}]})
        assert (summary["dimensions"], summary["encoding_format"]) == (size, "base64")


def test_mixed_lengths_and_nothing() -> None:
    """Mixed lengths are listed; no vectors means no dimensions."""
    mixed = summarize({"data": [{"embedding": [1.0]}, {"embedding": [1.0, 2.0]}]})
    assert mixed["dimensions"] == [1, 2]
    empty = summarize({"data": []})
    assert (empty["count"], empty["dimensions"], empty["encoding_format"]) == (0, None, None)
