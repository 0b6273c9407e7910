"""The mock engine's legacy completions and embeddings: determinism, OpenAI's shapes and
limits, and streams whose aggregate is the non-stream answer."""

from __future__ import annotations

import array
import base64
import math
from typing import Any

import pytest
from openai.types import Completion, CreateEmbeddingResponse

from auditgate.endpoints.completions import TextCompletionAggregator
from auditgate.engines.base import EngineRequest
from auditgate.engines.mock import MockEngine, count_tokens
from auditgate.errors import InvalidRequestError, NotFoundError


def request(**body: Any) -> EngineRequest:
    return EngineRequest({"model": "mock", "prompt": "Once upon a time", **body}, "r", "cmpl-r")


async def streamed(engine: MockEngine, req: EngineRequest) -> list[dict[str, Any]]:
    return [chunk async for batch in engine.stream_text(req) for chunk in batch]


def aggregate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    aggregator = TextCompletionAggregator()
    aggregator.feed_all(chunks)
    result = aggregator.finish()
    assert result is not None
    return result


async def test_same_request_same_text_and_valid_for_the_sdk() -> None:
    """Deterministic, and a valid ``Completion`` for the official SDK's model."""
    engine = MockEngine()
    first = await engine.complete_text(request(seed=3))
    again = await engine.complete_text(request(seed=3))
    other = await engine.complete_text(request(seed=4))
    assert first["choices"] == again["choices"]
    assert first["choices"][0]["text"] != other["choices"][0]["text"]
    Completion.model_validate(first)
    assert first["object"] == "text_completion"
    assert first["choices"][0]["text"].startswith(" ")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"n": 3},
        {"prompt": ["a", "b c"], "n": 2, "echo": True, "logprobs": 3},
        {"prompt": [[1, 2], [3, 4, 5]], "logprobs": 0},
        {"max_tokens": 0, "echo": True, "logprobs": 1},
        {"stop": [" the", "."], "max_tokens": 40},
    ],
)
async def test_stream_aggregate_equals_the_completion(body: dict[str, Any]) -> None:
    """Streamed with usage, the chunks add up to the non-stream answer, usage included."""
    engine = MockEngine()
    whole = await engine.complete_text(request(**body))
    chunks = await streamed(
        engine, request(**body, stream=True, stream_options={"include_usage": True})
    )
    if not body.get("echo"):  # the SDK types an echoed first token's null logprob as a float
        Completion.model_validate(whole)
    merged = aggregate(chunks)
    assert merged["choices"] == whole["choices"]
    assert merged["usage"] == whole["usage"]
    assert chunks[-1]["choices"] == []


async def test_n_and_prompts_index_choices_and_count_tokens() -> None:
    """Every prompt gets ``n`` choices, indexed prompt by prompt; usage adds them up."""
    engine = MockEngine()
    result = await engine.complete_text(request(prompt=["one two", "three"], n=2, max_tokens=5))
    assert [c["index"] for c in result["choices"]] == [0, 1, 2, 3]
    generated = sum(count_tokens(c["text"]) for c in result["choices"])
    assert result["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": generated,
        "total_tokens": 3 + generated,
    }
    assert all(c["finish_reason"] in ("stop", "length") for c in result["choices"])


async def test_echo_and_logprobs_as_openai() -> None:
    """Echo prepends the prompt; logprobs cover every token of the text, the first null."""
    engine = MockEngine()
    result = await engine.complete_text(request(echo=True, logprobs=2, max_tokens=4))
    choice = result["choices"][0]
    assert choice["text"].startswith("Once upon a time ")
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["token_logprobs"][0] is None
    assert logprobs["top_logprobs"][0] == {}
    assert all(len(top) == 2 for top in logprobs["top_logprobs"][1:])
    offsets = [0]
    for token in logprobs["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs["text_offset"] == offsets


async def test_default_and_zero_max_tokens() -> None:
    """16 tokens at most by default (OpenAI's); 0 gives no text and ``length``."""
    engine = MockEngine()
    default = await engine.complete_text(request(seed=1))
    assert default["usage"]["completion_tokens"] <= 16
    none = await engine.complete_text(request(max_tokens=0))
    assert (none["choices"][0]["text"], none["choices"][0]["finish_reason"]) == ("", "length")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": 6}, "logprobs"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"echo": 1}, "echo"),
        ({"suffix": 5}, "suffix"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"n": 0}, "n"),
        ({"stop": ["a"] * 5}, "stop"),
        ({"prompt": ["a"] * 17, "n": 128}, "prompt"),
    ],
)
async def test_values_openai_forbids_are_400s(body: dict[str, Any], param: str) -> None:
    """The mock refuses what OpenAI refuses, naming the parameter."""
    with pytest.raises(InvalidRequestError) as caught:
        await MockEngine().complete_text(request(**body))
    assert caught.value.param == param


async def test_unknown_model_is_404() -> None:
    """A model the mock does not serve is ``model_not_found``, for both endpoints."""
    with pytest.raises(NotFoundError):
        await MockEngine().complete_text(request(model="nope"))
    with pytest.raises(NotFoundError):
        await MockEngine().embed(EngineRequest({"model": "nope", "input": "a"}, "r", "x"))


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    """Same input, same vector; length 1; ``dimensions`` honoured; base64 is the float32 bytes;
    a valid ``CreateEmbeddingResponse`` for the SDK."""
    engine = MockEngine()

    async def embed(**body: Any) -> dict[str, Any]:
        return await engine.embed(EngineRequest({"model": "mock", **body}, "r", "x"))

    result = await embed(input=["a", "b", "a"], dimensions=32)
    CreateEmbeddingResponse.model_validate(result)
    vectors = [d["embedding"] for d in result["data"]]
    assert [len(v) for v in vectors] == [32, 32, 32]
    assert vectors[0] == vectors[2] != vectors[1]
    assert math.isclose(math.fsum(v * v for v in vectors[0]), 1.0)
    encoded = await embed(input="a", dimensions=32, encoding_format="base64")
    decoded = array.array("f", base64.b64decode(encoded["data"][0]["embedding"])).tolist()
    assert decoded == pytest.approx(vectors[0], abs=1e-6)
    assert result["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": [[1], "a"]}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": "a", "dimensions": 4000}, "dimensions"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ],
)
async def test_embedding_values_openai_forbids_are_400s(body: dict[str, Any], param: str) -> None:
    """Empty, mixed or too many inputs, and unknown formats or sizes, are 400s."""
    with pytest.raises(InvalidRequestError) as caught:
        await MockEngine().embed(EngineRequest({"model": "mock", **body}, "r", "x"))
    assert caught.value.param == param
