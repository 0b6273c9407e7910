"""The legacy completion stream aggregator: per-choice merging rules."""

from __future__ import annotations

from typing import Any

from auditgate.endpoints.completions import TextCompletionAggregator


def chunk(choices: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m", **top,
            "choices": choices}  # fmt: skip


def choice(index: int, text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish, **extra}


def test_nothing_fed_is_none() -> None:
    """No chunk, no completion."""
    assert TextCompletionAggregator().finish() is None


def test_interleaved_choices_are_merged_in_index_order() -> None:
    """Texts concatenate per index; choices come out sorted; the last finish reason wins;
    usage is the last non-null; top-level fields are the first non-null."""
    aggregator = TextCompletionAggregator()
    aggregator.feed_all(
        [
            chunk([choice(1, "B")], system_fingerprint=None),
            chunk([choice(0, "a")], system_fingerprint="fp"),
            chunk([choice(1, "b", stop_reason=None)]),
            chunk([choice(0, "", "stop"), choice(1, "", "length", stop_reason=7)]),
            chunk([], usage={"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}),
        ]
    )
    assert aggregator.finish() == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "m",
        "choices": [
            {"text": "a", "index": 0, "logprobs": None, "finish_reason": "stop"},
            {
                "text": "Bb",
                "index": 1,
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": 7,
            },
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        "system_fingerprint": "fp",
    }


def test_logprob_lists_are_concatenated_without_touching_the_chunks() -> None:
    """Every logprobs list is extended in stream order; the chunks' own lists stay as sent."""
    first = {"tokens": ["a"], "token_logprobs": [None], "top_logprobs": [{}], "text_offset": [0]}
    second = {"tokens": [" b"], "token_logprobs": [-0.5], "top_logprobs": [{" b": -0.5}],
              "text_offset": [1]}  # fmt: skip
    aggregator = TextCompletionAggregator()
    aggregator.feed(chunk([{**choice(0, "a"), "logprobs": first}]))
    aggregator.feed(chunk([{**choice(0, " b", "length"), "logprobs": second}]))
    result = aggregator.finish()
    assert result is not None
    assert result["choices"][0]["logprobs"] == {
        "tokens": ["a", " b"],
        "token_logprobs": [None, -0.5],
        "top_logprobs": [{}, {" b": -0.5}],
        "text_offset": [0, 1],
    }
    assert first["tokens"] == ["a"]
    assert result["usage"] is None
