"""Dynamo's real records (captured from Dynamo 0.7.1 and 1.6.1) become auditgate records that
hold what Dynamo answered."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from auditgate.audit.record import AuditRecord, decode_record, encode_record
from auditgate.dynamo import DynamoReader, FormatError, InputFormat, detect, unwrap
from auditgate.dynamo.envelope import to_trace_rows
from tests.dynamo import fixtures


def convert_all(values: list[Any]) -> dict[str, AuditRecord]:
    """Every value through one reader, then drained; records by request id."""
    reader: DynamoReader[int] = DynamoReader()
    out: list[AuditRecord] = []
    for i, value in enumerate(values):
        out += [c.record for c in reader.feed(value, i, received_ms=1_000)]
    out += [c.record for c in reader.drain()]
    return {r.request_id: r for r in out}


def summary(record: AuditRecord) -> dict[str, Any]:
    """The fields a client answer determines."""
    response = record.response if record.response is not msgspec.UNSET else None
    return {
        "requested_streaming": record.requested_streaming,
        "status": record.status,
        "complete": record.complete,
        "content": None
        if response is None
        else [c["message"].get("content") for c in response["choices"]],
        "response_id": None if response is None else response["id"],
        "messages": record.request["messages"] if record.request is not msgspec.UNSET else None,
        "engine": record.engine,
    }


def expected(answer: dict[str, Any]) -> dict[str, Any]:
    """The same fields, from what the client sent and got."""
    abandoned = answer.get("abandoned", False)
    return {
        "requested_streaming": bool(answer["request"].get("stream")),
        "status": "cancelled" if abandoned else "completed",
        "complete": not abandoned,
        "content": None if abandoned else fixtures.content(answer),
        "response_id": None if abandoned else answer["response"]["id"],
        "messages": answer["request"]["messages"],
        "engine": "dynamo",
    }


def request_id(answer: dict[str, Any]) -> str:
    """Dynamo's request id: the response id without ``chatcmpl-`` (the first chunk's, for an
    abandoned stream)."""
    source = answer["chunks"][0] if answer.get("abandoned") else answer["response"]
    return str(source["id"]).removeprefix("chatcmpl-")


@pytest.mark.parametrize("version", fixtures.VERSIONS)
def test_every_captured_message_and_line_is_detected(version: str) -> None:
    """Each NATS message and file line Dynamo wrote is recognised as its version's format."""
    want = InputFormat.DYNAMO_AUDIT if version.startswith("0.") else InputFormat.DYNAMO_TRACE
    values = fixtures.messages(version) + [
        line for lines in fixtures.file_lines(version).values() for line in lines
    ]
    assert values
    assert {detect(unwrap(v)) for v in values} == {want}


@pytest.mark.parametrize("version", fixtures.VERSIONS)
def test_converted_records_hold_what_dynamo_answered(version: str) -> None:
    """Every audited request converts to one record whose content is what the client got."""
    records = convert_all(fixtures.messages(version))
    answers = [a for a in fixtures.answers(version) if a["request"].get("store") or version >= "1"]
    got = {request_id(a): summary(records[request_id(a)]) for a in answers}
    assert got == {request_id(a): expected(a) for a in answers}


def test_an_unstored_request_has_no_dynamo_0x_record() -> None:
    """Dynamo 0.7.1 records only ``store: true`` requests: the other one is in no message."""
    records = convert_all(fixtures.messages("0.7.1"))
    unstored = [a for a in fixtures.answers("0.7.1") if not a["request"].get("store")]
    assert len(unstored) == 1
    assert request_id(unstored[0]) not in records
    assert len(records) == len(fixtures.answers("0.7.1")) - 1


def test_joined_trace_records_carry_dynamo_timing_and_usage() -> None:
    """A 1.6.1 request's record has its request_end row's times and its response's usage."""
    values = fixtures.messages("1.6.1")
    records = convert_all(values)
    ends = {
        v["request"]["request_id"]: v["request"] for v in values if v["event_type"] == "request_end"
    }
    payloads = {
        v["payload"]["request_id"]: v["payload"]
        for v in values
        if v["event_type"] == "request_payload"
    }
    assert set(ends) == set(payloads)
    for rid, end in ends.items():
        record = records[rid]
        response = payloads[rid].get("response")
        want_usage = (
            response["usage"]
            if response
            else {
                "prompt_tokens": end["input_tokens"],
                "completion_tokens": end["output_tokens"],
                "total_tokens": end["input_tokens"] + end["output_tokens"],
            }
        )
        assert (
            record.created_at,
            record.completed_at,
            record.ttft_ms,
            record.duration_ms,
            record.usage,
            record.writer,
            record.seq,
            record.integrity,
        ) == (
            end["request_received_ms"],
            end["request_received_ms"] + round(end["total_time_ms"]),
            end["ttft_ms"],
            end["total_time_ms"],
            want_usage,
            f"dynamo:{rid}",
            0,
            msgspec.UNSET,
        )


def test_captured_headers_and_metadata_are_kept() -> None:
    """Headers Dynamo captured and the request's metadata reach the record."""
    records = convert_all(fixtures.messages("1.6.1"))
    with_tools = [r for r in records.values() if r.request and "tools" in r.request]
    assert [(r.metadata, r.http_request_headers) for r in with_tools] == [
        ({"team": "capture"}, {"user-agent": "OpenAI/Python 3.63.0", "x-team": "capture"})
    ] * 2


def test_tool_rows_are_kept_whole() -> None:
    """Harness tool rows become records holding the row, keyed by session, call and event."""
    values = fixtures.messages("1.6.1")
    tools = [v for v in values if v["event_type"].startswith("tool_")]
    records = convert_all(values)
    got = {
        rid: (r.endpoint, r.status, r.complete, r.request)
        for rid, r in records.items()
        if rid.startswith("tool:")
    }
    assert got == {
        f"tool:capture-session:{t['tool']['tool_call_id']}:{t['event_type']}": (
            "dynamo.tool",
            {"tool_start": "completed", "tool_end": "completed", "tool_error": "error"}[
                t["event_type"]
            ],
            t["event_type"] != "tool_start",
            t,
        )
        for t in tools
    }


def test_files_convert_to_the_same_records_as_the_stream() -> None:
    """Dynamo's jsonl file and jsonl_gz segments give the records its NATS messages give."""
    from_nats = convert_all(fixtures.messages("1.6.1"))
    lines = fixtures.file_lines("1.6.1")
    assert sorted(lines) == [
        "trace.000000.jsonl.gz",
        "trace.000001.jsonl.gz",
        "trace.000002.jsonl.gz",
        "trace.jsonl",
    ]
    from_files = convert_all([line for name in sorted(lines) for line in lines[name]])
    assert from_files == {rid: from_nats[rid] for rid in from_files}
    assert len(from_files) == len(from_nats)


@pytest.mark.parametrize("version", fixtures.VERSIONS)
def test_converted_records_survive_our_encoding(version: str) -> None:
    """A converted record encodes and decodes to itself (what every sink stores)."""
    for record in convert_all(fixtures.messages(version)).values():
        assert decode_record(encode_record(record)) == record


def test_trace_rows_of_a_converted_record_convert_back_to_it() -> None:
    """A Dynamo record written as dynamo.request.trace.v1 rows reads back as the same record."""
    records = convert_all(fixtures.messages("1.6.1"))
    chats = [r for r in records.values() if r.endpoint == "chat.completions"]
    assert len(chats) == 9
    back = convert_all([row for r in chats for row in to_trace_rows(r)])
    assert back == {r.request_id: r for r in chats}


def test_a_forced_format_refuses_another() -> None:
    """With the input format forced, a record of another format is a FormatError."""
    reader: DynamoReader[int] = DynamoReader(forced=InputFormat.DYNAMO_TRACE)
    with pytest.raises(FormatError, match="dynamo-audit record; the input format is"):
        reader.feed(fixtures.messages("0.7.1")[0], 0)


def test_credential_headers_captured_by_dynamo_are_redacted() -> None:
    """Dynamo stores header values unredacted; a converted record never holds a credential."""
    row = next(v for v in fixtures.messages("1.6.1") if v["event_type"] == "request_payload")
    row["payload"]["http_request_headers"] = {"Authorization": "Bearer sk-secret", "x-team": "a"}
    reader: DynamoReader[int] = DynamoReader()
    (converted,) = reader.feed(row, 0) + reader.drain()
    assert converted.record.http_request_headers == {
        "authorization": "<redacted>",
        "x-team": "a",
    }
