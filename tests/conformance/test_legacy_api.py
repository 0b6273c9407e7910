"""Legacy completions and embeddings validated against the pinned specification: what the
gateway answers (mock engine), for requests that cover every shape, conforms."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conformance.spec import error_body_errors, errors, response_errors
from tests.support.server import TestGateway, gateway

CHUNK = {"$ref": "#/components/schemas/CreateCompletionChunk"}


@pytest.fixture(scope="module")
def gw() -> Iterator[TestGateway]:
    with gateway() as g:
        yield g


def post(g: TestGateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(g.base_url + path, json=body, timeout=10)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "Say this is a test"},
        {"prompt": ["one", "two"], "n": 2, "echo": True, "logprobs": 3, "max_tokens": 5},
        {"prompt": [[1, 2, 3], [4]], "logprobs": 0, "suffix": "end", "stop": ["."]},
        {"prompt": "x", "max_tokens": 0, "echo": True, "logprobs": 1},
    ],
)
def test_completion_conforms(gw: TestGateway, body: dict[str, Any]) -> None:
    """A ``text_completion`` is a ``CreateCompletionResponse``; streamed, every event is a
    ``CreateCompletionChunk``."""
    body = {"model": "mock", **body}
    answer = post(gw, "/completions", body)
    assert answer.status_code == 200
    assert response_errors("createCompletion", answer.json()) == []
    streamed = post(
        gw, "/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        assert errors(json.loads(event), CHUNK) == []


@pytest.mark.parametrize(
    "body",
    [
        {"input": "The food was delicious"},
        {"input": ["a", "b"], "encoding_format": "float", "dimensions": 8},
        {"input": [[1, 2], [3]], "encoding_format": "base64"},
    ],
)
def test_embeddings_conform(gw: TestGateway, body: dict[str, Any]) -> None:
    """An embeddings answer is a ``CreateEmbeddingResponse``, float or base64."""
    answer = post(gw, "/embeddings", {"model": "mock", **body})
    assert answer.status_code == 200
    assert response_errors("createEmbedding", answer.json()) == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completions", {"model": "mock", "prompt": []}),
        ("/completions", {"model": "mock", "prompt": "x", "logprobs": 6}),
        ("/embeddings", {"model": "mock", "input": ""}),
        ("/embeddings", {"model": "nope", "input": "x"}),
    ],
)
def test_errors_conform(gw: TestGateway, path: str, body: dict[str, Any]) -> None:
    """Refusals are the specification's ``ErrorResponse``."""
    answer = post(gw, path, body)
    assert answer.status_code in (400, 404)
    assert error_body_errors(answer.json()) == []
