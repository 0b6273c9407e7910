"""The fake upstream's legacy completions and embeddings (``…/completions``, ``…/embeddings``).

Deterministic like its chat answers: ``chunks`` text pieces per choice (``n`` choices per
prompt), a usage chunk when the request sets ``stream_options.include_usage``, and embeddings
of ``dimensions`` (default 8) numbers per input.  Tests build their expected values with these
functions.
"""

from __future__ import annotations

import array
import base64
from typing import Any

CREATED = 1_700_000_000
RESPONSE_ID = "cmpl-fake"
DIMENSIONS = 8


def _prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return [" ".join(map(str, p)) for p in prompt]
    return [" ".join(map(str, prompt))] if isinstance(prompt, list) else [""]


def _usage(body: dict[str, Any], chunks: int) -> dict[str, int]:
    prompt = sum(len(p.split()) for p in _prompts(body))
    completion = chunks * len(_prompts(body)) * int(body.get("n") or 1)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _pieces(index: int, chunks: int) -> list[str]:
    return [f" c{index}t{i}" for i in range(chunks)]


def _choices(body: dict[str, Any]) -> int:
    return len(_prompts(body)) * int(body.get("n") or 1)


def text_completion(body: dict[str, Any], chunks: int = 4) -> dict[str, Any]:
    """The ``text_completion`` a normal answer to ``body`` is."""
    choices = [
        {
            "text": "".join(_pieces(i, chunks)),
            "index": i,
            "logprobs": None,
            "finish_reason": "length",
        }
        for i in range(_choices(body))
    ]
    return {
        "id": RESPONSE_ID,
        "object": "text_completion",
        "created": CREATED,
        "model": body.get("model", "fake-model"),
        "choices": choices,
        "usage": _usage(body, chunks),
    }


def text_stream_chunks(body: dict[str, Any], chunks: int = 4) -> list[dict[str, Any]]:
    """The chunks of a normal streamed legacy answer, without ``[DONE]``."""
    head = {"id": RESPONSE_ID, "object": "text_completion", "created": CREATED}
    head["model"] = body.get("model", "fake-model")

    def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice]}

    events = []
    for step in range(chunks):
        for index in range(_choices(body)):
            events.append(chunk(index, _pieces(index, chunks)[step], None))
    events += [chunk(index, "", "length") for index in range(_choices(body))]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        events.append({**head, "choices": [], "usage": _usage(body, chunks)})
    return events


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """The embeddings ``list`` answering ``body``: input ``i`` embeds as ``[i, i+1, …]/10``."""
    raw = body.get("input")
    count = len(raw) if isinstance(raw, list) and raw and not isinstance(raw[0], int) else 1
    dimensions = int(body.get("dimensions") or DIMENSIONS)
    data = []
    for index in range(count):
        vector = [(index + d) / 10 for d in range(dimensions)]
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(array.array("f", vector).tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = {"prompt_tokens": count, "total_tokens": count}
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "fake-model"),
        "usage": usage,
    }
