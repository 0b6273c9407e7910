"""Chat completions through the real HTTP server, driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from auditgate.audit.record import AuditRecord
from auditgate.audit.sink import MemorySink
from auditgate.config import Settings
from auditgate.server.app import create_app
from tests.support.server import TestGateway, audit_env, gateway

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 10 + 10?"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture
def gw() -> Iterator[TestGateway]:
    with gateway() as g:
        yield g


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-test-not-a-secret", max_retries=0)


def dump(model: Any) -> dict[str, Any]:
    """An SDK model as the JSON the server sent."""
    return json.loads(model.model_dump_json(exclude_unset=True))


def accumulate(chunks: list[Any]) -> dict[str, Any]:
    """What the SDK's own stream accumulator builds from the chunks the client received.

    Normalised as the SDK needs: its additions (``parsed``, tool-call ``index``,
    ``parsed_arguments``) are dropped, and so are null message fields, because the SDK's message
    model sets every field (to null) and cannot tell null from absent.
    """
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    reasons = {c.finish_reason for c in state.current_completion_snapshot.choices}
    if reasons & {"length", "content_filter"}:  # get_final_completion() raises on these
        result = state.current_completion_snapshot.to_dict()
    else:
        result = state.get_final_completion().to_dict()
    if result.get("system_fingerprint") is None:
        result.pop("system_fingerprint", None)
    for choice in result["choices"]:
        message = choice["message"]
        message.pop("parsed", None)
        for call in message.get("tool_calls") or []:
            call.pop("index", None)
            call["function"].pop("parsed_arguments", None)
    return without_null_message_fields(result)


def without_null_message_fields(completion: dict[str, Any]) -> dict[str, Any]:
    """``completion`` with null-valued message fields dropped (nothing else changed)."""
    choices = [
        {**c, "message": {k: v for k, v in c["message"].items() if v is not None}}
        for c in completion["choices"]
    ]
    return {**completion, "choices": choices}


def test_non_stream_store_true_yields_one_full_record(gw: TestGateway) -> None:
    """A stored non-stream completion is recorded exactly as sent and as returned."""
    sent = {"model": "mock", "messages": MESSAGES, "store": True, "metadata": {"team": "a"}}
    raw = client(gw).chat.completions.with_raw_response.create(**sent)  # type: ignore[call-overload]
    completion = raw.parse()
    [record] = gw.records(1)
    assert record.mode == "full"
    assert record.request == sent
    assert record.response == dump(completion)
    assert record.usage == dump(completion.usage)
    assert record.status == "completed"
    assert record.complete is True
    assert record.requested_streaming is False
    assert record.metadata == {"team": "a"}
    assert raw.headers["x-request-id"] == record.request_id
    assert completion.id == "chatcmpl-" + record.request_id
    assert record.engine == "mock"
    assert record.transport == "http"
    assert record.endpoint == "chat.completions"
    # Timings in milliseconds, to the microsecond (no float noise in the stored JSON).
    assert record.ttft_ms is not None
    assert 0 <= record.ttft_ms <= record.duration_ms
    assert record.duration_ms == round(record.duration_ms, 3)
    assert record.ttft_ms == round(record.ttft_ms, 3)
    assert record.created_at <= record.completed_at


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"tools": [WEATHER_TOOL]},
        {"reasoning_effort": "low"},
        {"n": 2},
        {"n": 2, "tools": [WEATHER_TOOL], "stream_options": {"include_usage": True}},
        {"max_tokens": 3},
        {"stream_options": {"include_usage": True}},
    ],
    ids=["plain", "tools", "reasoning", "n2", "n2-tools-usage", "length", "usage"],
)
def test_stream_record_equals_sdk_accumulation(gw: TestGateway, extra: dict[str, Any]) -> None:
    """A stored stream's record response is what the SDK accumulates from the received chunks."""
    sent = {"model": "mock", "messages": MESSAGES, "store": True, "stream": True, **extra}
    chunks = list(client(gw).chat.completions.create(**sent))  # type: ignore[call-overload]
    [record] = gw.records(1)
    assert record.request == sent
    assert without_null_message_fields(record.response) == accumulate(chunks)
    assert record.requested_streaming is True
    assert record.complete is True
    assert record.usage is not None
    assert (
        record.usage["total_tokens"]
        == record.usage["prompt_tokens"] + record.usage["completion_tokens"]
    )
    assert {c.id for c in chunks} == {"chatcmpl-" + record.request_id}
    client_asked_usage = "stream_options" in extra
    assert any(c.usage is not None for c in chunks) == client_asked_usage
    if "tools" in extra:
        calls = record.response["choices"][0]["message"]["tool_calls"]
        args = json.loads(calls[0]["function"]["arguments"])
        assert {"city", "days"} <= set(args)
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) > 2


def test_stream_and_non_stream_give_the_same_response(gw: TestGateway) -> None:
    """For the same request the stream's aggregate equals the non-streamed completion."""
    c = client(gw)
    sent = {
        "model": "mock",
        "messages": MESSAGES,
        "store": True,
        "seed": 7,
        "n": 2,
        "tools": [WEATHER_TOOL],
    }
    c.chat.completions.create(**sent)  # type: ignore[call-overload]
    list(c.chat.completions.create(**sent, stream=True, stream_options={"include_usage": True}))  # type: ignore[call-overload]
    plain, streamed = gw.records(2)
    assert plain.response is not None and streamed.response is not None
    strip = {"id", "created"}
    assert {k: v for k, v in streamed.response.items() if k not in strip} == {
        k: v for k, v in plain.response.items() if k not in strip
    }


def test_store_absent_or_false_yields_usage_only(gw: TestGateway) -> None:
    """Requests that do not ask to be stored leave a usage_only record without bodies."""
    c = client(gw)
    c.chat.completions.create(model="mock", messages=MESSAGES)  # type: ignore[arg-type]
    list(c.chat.completions.create(model="mock", messages=MESSAGES, store=False, stream=True))  # type: ignore[arg-type]
    records = gw.records(2)
    assert [(r.mode, r.requested_streaming) for r in records] == [
        ("usage_only", False),
        ("usage_only", True),
    ]
    for r, line in zip(records, gw.sink.lines, strict=True):
        assert (r.request, r.response) == (msgspec.UNSET, msgspec.UNSET)
        raw = json.loads(line)
        assert "request" not in raw and "response" not in raw
        assert r.usage is not None and r.usage["completion_tokens"] > 0


def test_audit_off_yields_no_record() -> None:
    """With audit off nothing is recorded, even for store: true."""
    with gateway({}) as g:
        client(g).chat.completions.create(model="mock", messages=MESSAGES, store=True)  # type: ignore[arg-type]
        g.records(0)


def test_usage_records_off_and_store_false_yields_no_record() -> None:
    """DYN_AUDIT_USAGE_RECORDS=0 keeps unstored requests out of the audit."""
    with gateway(audit_env(DYN_AUDIT_USAGE_RECORDS="0")) as g:
        client(g).chat.completions.create(model="mock", messages=MESSAGES)  # type: ignore[arg-type]
        g.records(0)


def test_force_logging_records_full_without_store() -> None:
    """Force logging switches audit on and records full bodies whatever store says."""
    with gateway({"DYN_AUDIT_FORCE_LOGGING": "true"}) as g:
        client(g).chat.completions.create(model="mock", messages=MESSAGES, store=False)  # type: ignore[arg-type]
        [record] = g.records(1)
        assert record.mode == "full"
        assert record.request == {"model": "mock", "messages": MESSAGES, "store": False}


def test_sampling_never_drops_stored_records() -> None:
    """Sample rate 0 drops usage_only records but keeps every store: true record."""
    with gateway(audit_env(DYN_AUDIT_SAMPLE_RATE="0")) as g:
        c = client(g)
        for _ in range(3):
            c.chat.completions.create(model="mock", messages=MESSAGES)  # type: ignore[arg-type]
            c.chat.completions.create(model="mock", messages=MESSAGES, store=True)  # type: ignore[arg-type]
        assert [r.mode for r in g.records(3)] == ["full"] * 3


def test_sequence_is_gap_free_per_writer(gw: TestGateway) -> None:
    """Records of one process share a writer id and number 0..n-1 in publish order."""
    c = client(gw)
    for i in range(5):
        c.chat.completions.create(model="mock", messages=MESSAGES, store=i % 2 == 0)  # type: ignore[arg-type]
    records = gw.records(5)
    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert len({r.writer for r in records}) == 1


def test_client_request_id_is_kept_for_correlation(gw: TestGateway) -> None:
    """A valid X-Request-Id is stored as client_request_id; the gateway's id stays the key."""
    raw = client(gw).chat.completions.with_raw_response.create(
        model="mock",
        messages=MESSAGES,
        store=True,
        extra_headers={"X-Request-Id": "trace:abc-1.2"},  # type: ignore[arg-type]
    )
    [record] = gw.records(1)
    assert record.client_request_id == "trace:abc-1.2"
    assert raw.headers["x-request-id"] == record.request_id != "trace:abc-1.2"


def test_invalid_client_request_id_is_rejected(gw: TestGateway) -> None:
    """An X-Request-Id with forbidden characters is a 400, not a stored key."""
    response = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "mock", "messages": MESSAGES},
        headers={"X-Request-Id": "bad id with spaces"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Request-Id"


def test_unknown_model_is_an_openai_404_and_an_error_record(gw: TestGateway) -> None:
    """An unknown model reaches the client as NotFoundError and the audit as an error record."""
    with pytest.raises(openai.NotFoundError) as caught:
        client(gw).chat.completions.create(model="nope", messages=MESSAGES, store=True)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"
    [record] = gw.records(1)
    assert (record.status, record.complete, record.usage) == ("error", False, None)
    assert record.error is not None and record.error.status_code == 404
    assert record.response is msgspec.UNSET


def test_authorization_never_reaches_the_record(gw: TestGateway) -> None:
    """The client's API key is not in any byte of the record."""
    client(gw).chat.completions.create(model="mock", messages=MESSAGES, store=True)  # type: ignore[arg-type]
    gw.records(1)
    assert b"sk-test-not-a-secret" not in b"".join(gw.sink.lines)


def _record_json(record: AuditRecord) -> dict[str, Any]:
    from auditgate.audit.record import encode_record

    return json.loads(encode_record(record))


def test_record_keys_follow_the_schema_order(gw: TestGateway) -> None:
    """The record's first keys are Dynamo's, in Dynamo's order."""
    client(gw).chat.completions.create(model="mock", messages=MESSAGES, store=True)  # type: ignore[arg-type]
    [record] = gw.records(1)
    keys = list(_record_json(record))
    assert keys[:8] == [
        "schema_version",
        "request_id",
        "requested_streaming",
        "mode",
        "model",
        "usage",
        "request",
        "response",
    ]
    assert keys[-2:] == ["writer", "seq"]


@pytest.mark.parametrize(("n", "together"), [(1, True), (2, False)])
async def test_the_finishing_batch_goes_out_with_done_in_one_write(n: int, together: bool) -> None:
    """A stream's last content (the only choice's finish_reason) and [DONE] are one body
    message: one write, one TCP segment.  With n > 1 choices finish at different times, so
    nothing is held back and [DONE] is sent alone."""
    memory = MemorySink()
    app = create_app(Settings.from_env(audit_env()), sinks=[memory])
    await app.gateway.start()
    body = json.dumps(
        {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "stream": True, "n": n}
    ).encode()
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await asyncio.Event().wait()  # no disconnect
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    try:
        await app(scope, receive, send)
    finally:
        await app.gateway.stop()
    finishing = [i for i, b in enumerate(sent) if b'"finish_reason":"' in b]
    assert sent[-1].endswith(b"data: [DONE]\n\n")
    if together:
        assert finishing == [len(sent) - 1]
    else:
        assert sent[-1] == b"data: [DONE]\n\n"
        assert finishing and finishing[-1] < len(sent) - 1
    assert len(memory.records) == 1
