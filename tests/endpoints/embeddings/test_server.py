"""Embeddings through the real HTTP server, driven by the official openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest

from auditgate.audit.record import AuditRecord
from auditgate.engines.mock.embeddings import DEFAULT_DIMENSIONS
from tests.support.server import TestGateway, audit_env, gateway
from tests.support.upstream import FakeUpstream, upstream_in_thread
from tests.support.upstream_legacy import embeddings as fake_embeddings


@pytest.fixture
def gw() -> Iterator[TestGateway]:
    with gateway() as g:
        yield g


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-test-not-a-secret", max_retries=0)


def line(g: TestGateway, record: AuditRecord) -> str:
    """The record's JSON line as the sinks received it."""
    [found] = [x.decode() for x in g.sink.lines if record.request_id.encode() in x]
    return found


def summary(count: int, dimensions: int, encoding: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "embedding.summary",
        "model": "mock",
        "count": count,
        "dimensions": dimensions,
        "encoding_format": encoding,
        "usage": usage,
    }


def test_float_list_input_usage_only_record_without_vectors(gw: TestGateway) -> None:
    """Float vectors for a list input: a usage_only record with the summary, no inputs and no
    number of any vector anywhere in it."""
    result = client(gw).embeddings.create(
        model="mock", input=["first text", "second text"], encoding_format="float"
    )
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == DEFAULT_DIMENSIONS for d in result.data)
    norm = sum(v * v for v in result.data[0].embedding)
    assert abs(norm - 1.0) < 1e-9
    [record] = gw.records(1)
    usage = result.usage.model_dump()
    assert (record.mode, record.endpoint, record.usage) == ("usage_only", "embeddings", usage)
    assert record.response == summary(2, DEFAULT_DIMENSIONS, "float", usage)
    assert record.request is msgspec.UNSET
    stored = line(gw, record)
    assert "first text" not in stored
    assert all(repr(v) not in stored for d in result.data for v in d.embedding[:8])


def test_base64_store_true_full_record_with_inputs(gw: TestGateway) -> None:
    """The SDK's default (base64, decoded by the SDK) equals the float vectors; store: true
    puts the inputs in a full record, still without vectors."""
    sdk = client(gw)
    decoded = sdk.embeddings.create(model="mock", input="hello world", extra_body={"store": True})
    floats = sdk.embeddings.create(model="mock", input="hello world", encoding_format="float")
    assert len(decoded.data[0].embedding) == DEFAULT_DIMENSIONS
    for a, b in zip(decoded.data[0].embedding, floats.data[0].embedding, strict=True):
        assert abs(a - b) < 1e-6  # float32 on the wire
    stored, _ = gw.records(2)
    assert stored.mode == "full"
    assert stored.request == {
        "model": "mock",
        "input": "hello world",
        "encoding_format": "base64",
        "store": True,
    }
    assert stored.response == summary(1, DEFAULT_DIMENSIONS, "base64", decoded.usage.model_dump())
    assert stored.complete is True
    raw = json.loads(line(gw, stored))
    assert set(raw["response"]) == {
        "object",
        "model",
        "count",
        "dimensions",
        "encoding_format",
        "usage",
    }


def test_dimensions_and_determinism(gw: TestGateway) -> None:
    """``dimensions`` sets the length; the same input embeds the same, another differently."""
    sdk = client(gw)

    def embed(text: str) -> list[float]:
        got = sdk.embeddings.create(
            model="mock", input=text, dimensions=16, encoding_format="float"
        )
        return got.data[0].embedding

    assert len(embed("a")) == 16
    assert embed("a") == embed("a")
    assert embed("a") != embed("b")


def test_token_inputs(gw: TestGateway) -> None:
    """Token arrays embed too: one vector per token list."""
    result = client(gw).embeddings.create(model="mock", input=[[1, 2, 3], [4]])
    assert len(result.data) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "mock"}, "input"),
        ({"model": "mock", "input": ""}, "input"),
        ({"model": "mock", "input": []}, "input"),
        ({"model": "mock", "input": [1, "a"]}, "input"),
        ({"model": "mock", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "mock", "input": "a", "dimensions": "x"}, "dimensions"),
        ({"model": "mock", "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a"}, "model"),
    ],
)
def test_bad_input_is_an_openai_400(gw: TestGateway, body: dict[str, Any], param: str) -> None:
    """Every malformed body is a 400 in OpenAI's error shape, naming the parameter."""
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).post("/embeddings", body=body, cast_to=dict)
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_force_logging_and_redaction() -> None:
    """Force logging records the inputs, redacted like chat messages."""
    env = audit_env(DYN_AUDIT_FORCE_LOGGING="1", DYN_AUDIT_REDACT="email")
    with gateway(env) as g:
        client(g).embeddings.create(model="mock", input=["mail bob@example.com", "plain"])
        [record] = g.records(1)
    assert record.mode == "full"
    assert record.request is not None
    assert record.request["input"] == ["mail [REDACTED:email]", "plain"]  # type: ignore[index]


def test_forwarded_to_the_upstream() -> None:
    """In front of an upstream the body goes to its /embeddings as sent; the client gets the
    upstream's answer unchanged; the record summarises it."""
    sent = {"model": "fake-model", "input": ["x", "y", "z"], "encoding_format": "float"}
    upstream: FakeUpstream
    with upstream_in_thread() as upstream:
        env = audit_env(AUDITGATE_ENGINE="openai", AUDITGATE_UPSTREAM_URL=upstream.base_url)
        with gateway(env) as g:
            result = client(g).embeddings.create(**sent)  # type: ignore[arg-type]
            [record] = g.records(1)
        [received] = [r for r in upstream.received if r.method == "POST"]
    assert received.path == "/v1/embeddings"
    assert received.json() == sent
    expected = fake_embeddings(sent)
    assert json.loads(result.model_dump_json()) == expected
    assert record.response == {
        **summary(3, 8, "float", expected["usage"]),
        "model": "fake-model",
    }
    assert record.engine == "openai"


def test_http_metrics_count_each_endpoint(gw: TestGateway) -> None:
    """``auditgate_http_requests_total`` counts the new routes under their own paths."""
    sdk = client(gw)
    sdk.embeddings.create(model="mock", input="a")
    sdk.completions.create(model="mock", prompt="a")
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="mock", input="")
    gw.records(2)
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    for endpoint, status in (
        ("/v1/embeddings", 200),
        ("/v1/completions", 200),
        ("/v1/embeddings", 400),
    ):
        line = f'auditgate_http_requests_total{{endpoint="{endpoint}",status="{status}"}} 1.0'
        assert line in text
