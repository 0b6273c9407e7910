"""The KServe v2 gRPC frontend, driven by Triton's own client library (``tritonclient[grpc]``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from auditgate.audit.record import AuditRecord, encode_record
from auditgate.auth.keys import add_key
from tests.support.server import TestGateway, audit_env, gateway

PROMPT = "What is 10 + 10?"
MESSAGES = [{"role": "user", "content": PROMPT}]
# Fields that differ between two runs of the same exchange, or that name the transport.
VOLATILE = (
    "request_id",
    "created_at",
    "completed_at",
    "ttft_ms",
    "duration_ms",
    "writer",
    "seq",
    "engine_response_id",
    "transport",
    "endpoint",
)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def grpc_gateway(**env: str) -> Iterator[tuple[TestGateway, tg.InferenceServerClient]]:
    """A gateway serving gRPC on a free port, and a Triton client connected to it."""
    with gateway(audit_env(AUDITGATE_GRPC_PORT=str(free_port()), **env)) as g:
        port = g.app.gateway.settings.gateway.grpc_port
        client = tg.InferenceServerClient(url=f"127.0.0.1:{port}")
        try:
            yield g, client
        finally:
            client.close()


@pytest.fixture
def kserve() -> Iterator[tuple[TestGateway, tg.InferenceServerClient]]:
    with grpc_gateway() as pair:
        yield pair


def text_input(text: str = PROMPT) -> tg.InferInput:
    tensor = tg.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return tensor


def scalar(name: str, datatype: str, value: Any) -> tg.InferInput:
    tensor = tg.InferInput(name, [1], datatype)
    dtype = {"INT32": np.int32, "BOOL": np.bool_}[datatype]
    tensor.set_data_from_numpy(np.array([value], dtype=dtype))
    return tensor


def comparable(record: AuditRecord) -> dict[str, Any]:
    """The record as JSON without what differs between runs or transports."""
    data: dict[str, Any] = json.loads(encode_record(record))
    for key in VOLATILE:
        data.pop(key, None)
    if "response" in data:
        data["response"] = {k: v for k, v in data["response"].items() if k not in ("id", "created")}
    return data


def output(result: Any, name: str) -> str:
    value: bytes = result.as_numpy(name)[0]
    return value.decode()


def http_record(g: TestGateway, count: int, **body: Any) -> AuditRecord:
    """Send ``body`` over HTTP with the openai SDK; the record it left (the ``count``-th)."""
    api = openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)
    response = api.chat.completions.create(**body)
    if body.get("stream"):
        list(response)  # type: ignore[call-overload]
    return g.records(count)[-1]


class Stream:
    """A Triton client stream whose results are collected into a queue."""

    def __init__(self, client: tg.InferenceServerClient) -> None:
        self.client = client
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def next(self) -> tuple[Any, Any]:
        return self.results.get(timeout=10)

    def until_final(self) -> list[Any]:
        """Results of one request up to its empty final response (which is not returned)."""
        out = []
        while True:
            result, error = self.next()
            assert error is None, error
            params = result.get_response().parameters
            if params["triton_final_response"].bool_param:
                return out
            out.append(result)


def test_unary_store_true_yields_the_http_record_with_transport_grpc(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """A stored ModelInfer gives the HTTP exchange's record, with transport grpc."""
    g, client = kserve
    result = client.infer(
        "mock",
        [text_input(), scalar("max_tokens", "INT32", 5)],
        request_id="trace:1",
        parameters={"store": True, "seed": 3},
    )
    [record] = g.records(1)
    assert (record.transport, record.endpoint) == ("grpc", "kserve.infer")
    assert record.request == {
        "model": "mock",
        "messages": MESSAGES,
        "max_tokens": 5,
        "store": True,
        "seed": 3,
    }
    assert record.response is not None
    choice = record.response["choices"][0]
    assert [output(result, "text_output"), output(result, "finish_reason")] == [
        choice["message"]["content"],
        "length",
    ]
    response = result.get_response()
    assert (response.id, response.parameters["audit_request_id"].string_param) == (
        "trace:1",
        record.request_id,
    )
    assert record.client_request_id == "trace:1"
    http = http_record(g, 2, model="mock", messages=MESSAGES, max_tokens=5, store=True, seed=3)
    assert http.transport == "http"
    assert comparable(record) | {"client_request_id": None} == comparable(http) | {
        "client_request_id": None
    }


def test_unary_store_false_yields_usage_only(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """An unstored ModelInfer leaves a usage_only record without bodies."""
    g, client = kserve
    client.infer("mock", [text_input()], parameters={"store": False})
    [record] = g.records(1)
    assert (record.mode, record.transport, record.requested_streaming, record.complete) == (
        "usage_only",
        "grpc",
        False,
        True,
    )
    assert record.usage is not None and record.usage["completion_tokens"] > 0
    assert "request" not in json.loads(encode_record(record))


def test_stream_store_true_yields_the_http_stream_record(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """A stored stream's deltas add up to the record's response, which equals HTTP's."""
    g, client = kserve
    stream = Stream(client)
    try:
        client.async_stream_infer(
            "mock",
            [text_input(), scalar("stream", "BOOL", True)],
            parameters={"store": True, "temperature": 0.5},
            enable_empty_final_response=True,
        )
        results = stream.until_final()
    finally:
        client.stop_stream()
    [record] = g.records(1)
    assert record.request == {
        "model": "mock",
        "messages": MESSAGES,
        "store": True,
        "temperature": 0.5,
        "stream": True,
    }
    assert record.response is not None
    choice = record.response["choices"][0]
    text = "".join(output(r, "text_output") for r in results)
    reasons = [output(r, "finish_reason") for r in results]
    assert (text, reasons[-1], set(reasons[:-1])) == (
        choice["message"]["content"],
        choice["finish_reason"],
        {""},
    )
    assert (record.requested_streaming, record.status, record.complete) == (True, "completed", True)
    http = http_record(
        g, 2, model="mock", messages=MESSAGES, store=True, temperature=0.5, stream=True
    )
    assert comparable(record) == comparable(http)


def test_stream_store_false_yields_usage_only(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """An unstored stream leaves a usage_only record with the real usage."""
    g, client = kserve
    stream = Stream(client)
    try:
        client.async_stream_infer(
            "mock",
            [text_input(), scalar("stream", "BOOL", True)],
            enable_empty_final_response=True,
        )
        results = stream.until_final()
    finally:
        client.stop_stream()
    [record] = g.records(1)
    assert (record.mode, record.requested_streaming, record.status) == (
        "usage_only",
        True,
        "completed",
    )
    assert record.usage is not None
    assert record.usage["completion_tokens"] == len(results) - 1  # the last one only ends it


def test_non_stream_request_on_the_stream_gets_one_response(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """A request without stream=true on ModelStreamInfer is answered whole, in one response."""
    g, client = kserve
    stream = Stream(client)
    try:
        client.async_stream_infer("mock", [text_input()], parameters={"store": True})
        result, error = stream.next()
    finally:
        client.stop_stream()
    assert error is None
    [record] = g.records(1)
    assert record.response is not None
    assert output(result, "text_output") == record.response["choices"][0]["message"]["content"]
    assert record.requested_streaming is False


def test_client_cancelling_mid_stream_yields_a_cancelled_record() -> None:
    """A client that cancels its stream after the first token leaves a partial cancelled record."""
    with grpc_gateway(AUDITGATE_MOCK_ITL_MS="100") as (g, client):
        stream = Stream(client)
        client.async_stream_infer(
            "mock",
            [text_input(), scalar("stream", "BOOL", True)],
            parameters={"store": True},
        )
        first, error = stream.next()
        assert error is None
        client.stop_stream(cancel_requests=True)
        [record] = g.records(1)
    assert (record.status, record.complete) == ("cancelled", False)
    assert record.response is not None
    content = record.response["choices"][0]["message"]["content"]
    assert content.startswith(output(first, "text_output"))
    assert record.response["choices"][0]["finish_reason"] is None


INVALID = [
    pytest.param(
        lambda: [tg.InferInput("prompt", [1], "BYTES")],
        "Unexpected input tensor 'prompt': this model takes text_input (BYTES), and optionally "
        "max_tokens (INT32/INT64) and stream (BOOL).",
        id="wrong-name",
    ),
    pytest.param(
        lambda: [scalar("text_input", "INT32", 7)],
        "Input tensor 'text_input' must be BYTES, got 'INT32'.",
        id="wrong-type",
    ),
    pytest.param(
        lambda: [scalar("max_tokens", "BOOL", True), text_input()],
        "Input tensor 'max_tokens' must be INT32 or INT64 or UINT32 or UINT64, got 'BOOL'.",
        id="wrong-type-max-tokens",
    ),
    pytest.param(
        lambda: [_two_prompts()],
        "Input tensor 'text_input' must hold exactly one element (shape [1] or [1, 1]), "
        "got shape [2]: send one prompt per request.",
        id="wrong-shape",
    ),
    pytest.param(
        lambda: [scalar("max_tokens", "INT32", 5)],
        "Missing required input tensor 'text_input' (BYTES).",
        id="missing",
    ),
    pytest.param(
        lambda: [text_input(), scalar("max_tokens", "INT32", 0)],
        "0 is not a valid value for 'max_tokens': expected at least 1.",
        id="bad-value",
    ),
]


def _two_prompts() -> tg.InferInput:
    tensor = tg.InferInput("text_input", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([b"a", b"b"], dtype=np.object_))
    return tensor


def _prompt_data(tensors: list[tg.InferInput]) -> list[tg.InferInput]:
    for tensor in tensors:
        if tensor._get_content() is None:  # a tensor with no data: give it one prompt
            tensor.set_data_from_numpy(np.array([PROMPT.encode()], dtype=np.object_))
    return tensors


@pytest.mark.parametrize(("tensors", "message"), INVALID)
def test_invalid_tensors_are_invalid_argument(
    kserve: tuple[TestGateway, tg.InferenceServerClient], tensors: Any, message: str
) -> None:
    """A wrong tensor name, type, shape or value is INVALID_ARGUMENT naming it, and no record."""
    g, client = kserve
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mock", _prompt_data(tensors()), parameters={"store": True})
    assert (caught.value.status(), caught.value.message()) == (
        "StatusCode.INVALID_ARGUMENT",
        message,
    )
    g.records(0)


def test_invalid_tensor_on_the_stream_is_that_requests_error(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """On ModelStreamInfer a bad request gets an error message and the stream serves the next."""
    g, client = kserve
    stream = Stream(client)
    try:
        client.async_stream_infer("mock", [scalar("text_input", "INT32", 7)], request_id="bad")
        _, error = stream.next()
        client.async_stream_infer("mock", [text_input()], request_id="good")
        result, ok = stream.next()
    finally:
        client.stop_stream()
    assert (
        error.message() == "INVALID_ARGUMENT: Input tensor 'text_input' must be BYTES, got 'INT32'."
    )
    assert (ok, result.get_response().id) == (None, "good")
    [record] = g.records(1)
    assert record.client_request_id == "good"


def test_stream_true_on_model_infer_is_invalid_argument(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """ModelInfer cannot stream: stream=true is refused before any record."""
    g, client = kserve
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mock", [text_input(), scalar("stream", "BOOL", True)])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message().startswith("stream=true needs the streaming RPC ModelStreamInfer")
    g.records(0)


def test_engine_error_is_a_grpc_status_and_an_error_record(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """An unknown model is NOT_FOUND for the client and an error record for the audit."""
    g, client = kserve
    with pytest.raises(InferenceServerException) as caught:
        client.infer("nope", [text_input()], parameters={"store": True})
    assert (caught.value.status(), caught.value.message()) == (
        "StatusCode.NOT_FOUND",
        "The model `nope` does not exist or you do not have access to it.",
    )
    [record] = g.records(1)
    assert (record.status, record.complete, record.transport) == ("error", False, "grpc")
    assert record.error is not None
    assert (record.error.type, record.error.status_code) == ("invalid_request_error", 404)


def test_engine_error_on_the_stream_is_that_requests_error_and_a_record(
    kserve: tuple[TestGateway, tg.InferenceServerClient],
) -> None:
    """A streamed request for an unknown model gets NOT_FOUND as its error and an error record."""
    g, client = kserve
    stream = Stream(client)
    try:
        client.async_stream_infer(
            "nope", [text_input(), scalar("stream", "BOOL", True)], parameters={"store": True}
        )
        _, error = stream.next()
    finally:
        client.stop_stream()
    assert error.message() == (
        "NOT_FOUND: The model `nope` does not exist or you do not have access to it."
    )
    [record] = g.records(1)
    assert (record.status, record.requested_streaming, record.transport) == ("error", True, "grpc")


def test_health_and_model_metadata(kserve: tuple[TestGateway, tg.InferenceServerClient]) -> None:
    """Liveness, readiness and metadata answer as a Triton LLM model does."""
    _, client = kserve
    assert [
        client.is_server_live(),
        client.is_server_ready(),
        client.is_model_ready("mock"),
        client.is_model_ready("nope"),
    ] == [True, True, True, False]
    metadata = client.get_model_metadata("mock", as_json=True)
    assert metadata == {
        "name": "mock",
        "versions": ["1"],
        "platform": "auditgate",
        "inputs": [
            {"name": "text_input", "datatype": "BYTES", "shape": ["1"]},
            {"name": "max_tokens", "datatype": "INT32", "shape": ["1"]},
            {"name": "stream", "datatype": "BOOL", "shape": ["1"]},
        ],
        "outputs": [
            {"name": "text_output", "datatype": "BYTES", "shape": ["1"]},
            {"name": "finish_reason", "datatype": "BYTES", "shape": ["1"]},
        ],
    }


def test_api_keys_guard_inference_and_name_the_tenant(workdir: str) -> None:
    """With keys configured a call needs one, and its record carries the key's tenant."""
    path = f"{workdir}/keys.json"
    key = add_key(path, name="a", tenant="team-a", role="user")
    with grpc_gateway(AUDITGATE_API_KEYS_FILE=path) as (g, client):
        with pytest.raises(InferenceServerException) as caught:
            client.infer("mock", [text_input()], parameters={"store": True})
        client.infer(
            "mock",
            [text_input()],
            parameters={"store": True},
            headers={"authorization": f"Bearer {key}"},
        )
        [record] = g.records(1)
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert record.tenant == "team-a"


def test_the_calls_own_key_is_redacted_from_its_record(workdir: str) -> None:
    """With redaction on, the key a call authenticated with (here hand-made, in an old-format
    entry, so found only by the exact match) is redacted from the prompt and from metadata."""
    path = f"{workdir}/keys.json"
    key = "team-a-hand-made-0042"
    digest = hashlib.sha256(key.encode()).hexdigest()
    Path(path).write_text(json.dumps({"keys": [{"tenant": "team-a", "sha256": digest}]}))
    env = {
        "AUDITGATE_API_KEYS_FILE": path,
        "DYN_AUDIT_REDACT": "email",
        "DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST": "x-auth",
    }
    with grpc_gateway(**env) as (g, client):
        client.infer(
            "mock",
            [text_input(f"my key is {key}")],
            parameters={"store": True},
            headers={"authorization": f"Bearer {key}", "x-auth": key},
        )
        [record] = g.records(1)
    assert isinstance(record.request, dict)
    assert (record.request["messages"], record.http_request_headers) == (
        [{"role": "user", "content": "my key is [REDACTED:api_key]"}],
        {"x-auth": "[REDACTED:api_key]"},
    )


@pytest.mark.parametrize(
    "metadata",
    ['{"k": ', '{"k": "\\ud800"}', '{"k": ' + "[" * 100_000 + "]" * 100_000 + "}"],
    ids=["malformed", "lone-surrogate", "nested-too-deeply"],
)
def test_unreadable_metadata_parameter_is_invalid_argument(
    kserve: tuple[TestGateway, tg.InferenceServerClient], metadata: str
) -> None:
    """The ``metadata`` parameter must be a readable JSON object: anything else, including a
    lone surrogate no sink could encode, is INVALID_ARGUMENT and leaves no record."""
    g, client = kserve
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mock", [text_input()], parameters={"store": True, "metadata": metadata})
    assert (caught.value.status(), caught.value.message()) == (
        "StatusCode.INVALID_ARGUMENT",
        "Parameter 'metadata' is not valid JSON.",
    )
    g.records(0)
