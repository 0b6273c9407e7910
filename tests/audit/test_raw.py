"""RawCapture: what crosses to the audit process, and the record built from it."""

from __future__ import annotations

from typing import Any

import msgspec

from auditgate.audit.bus import AuditBus
from auditgate.audit.capture import Auditor
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.raw import (
    RawCapture,
    aggregate,
    build_record,
    decode_batch,
    encode_batch,
    frames_batch,
)
from auditgate.audit.sink import MemorySink
from auditgate.config import AuditSettings

CHUNKS: list[dict[str, Any]] = [
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": " there \ud800"}, "finish_reason": "stop"}]},
]  # fmt: skip


class Kept:
    """A hand-over that keeps what it is given."""

    def __init__(self) -> None:
        self.raws: list[RawCapture] = []

    def put(self, raw: RawCapture) -> None:
        self.raws.append(raw)


def test_batches_decode_to_the_chunks_however_they_were_kept() -> None:
    """MessagePack, the pickle fallback (a lone surrogate) and the client's SSE bytes all give
    back the chunks."""
    sse = b"".join(b"data: " + msgspec.json.encode(c) + b"\n\n" for c in CHUNKS[:1])
    assert decode_batch(encode_batch(CHUNKS[:1])) == CHUNKS[:1]
    assert decode_batch(encode_batch(CHUNKS)) == CHUNKS
    assert decode_batch(frames_batch(sse)) == CHUNKS[:1]


def test_a_handed_over_stream_aggregates_as_in_process() -> None:
    """A stream captured for the audit process (one batch as SSE bytes, one encoded) and sent
    through MessagePack builds the record the in-process capture builds."""
    settings = AuditSettings(enabled=True)
    kept = Kept()
    records = []
    for handoff in (None, kept):
        metrics = AuditMetrics()
        bus = AuditBus([MemorySink()], capacity=8, metrics=metrics) if handoff is None else None
        auditor = Auditor(settings, bus, metrics, engine="mock", handoff=handoff)
        capture = auditor.open(request_id="r", body={"model": "m"}, model="m", streaming=True,
                               store=True)  # fmt: skip
        assert capture is not None
        capture.chunks([CHUNKS[0]])
        capture.sent(b"data: " + msgspec.json.encode(CHUNKS[0]) + b"\n\n")
        capture.chunks([CHUNKS[1]])  # no bytes for this one: encoded at finish
        if handoff is None:
            capture.finish()
            records.append(capture.record)
            continue
        capture.finish()
        (raw,) = kept.raws
        wire = msgspec.msgpack.decode(msgspec.msgpack.encode(raw), type=RawCapture)
        records.append(build_record(wire, "mock", aggregate(wire)))
    local, remote = records
    assert local is not None and remote is not None
    timing = ("created_at", "completed_at", "ttft_ms", "duration_ms", "writer", "seq")
    for record in (local, remote):
        for field in timing:
            setattr(record, field, 0)
    assert msgspec.to_builtins(local) == msgspec.to_builtins(remote)
    assert remote.response["choices"][0]["message"]["content"] == "Hi there \ud800"  # type: ignore[index]


def test_a_handed_over_answer_is_the_bytes_received_and_sent() -> None:
    """A non-stream capture for the audit process hands over the request body as the bytes the
    gateway received and the answer as the bytes the client received, not their objects encoded
    again; through MessagePack they build the record the in-process capture builds.  Without
    those bytes (a transport that has none), the objects go over."""
    settings = AuditSettings(enabled=True)
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi \u00e9"}], "store": True}
    received = b'{"model": "m",\n "messages": [{"role": "user", "content": "Hi \\u00e9"}],'
    received += b' "store": true}'
    answer = {"id": "chatcmpl-r", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Yo"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip
    sent = msgspec.json.encode(answer)
    assert msgspec.json.decode(received) == body
    records = []
    for handoff, with_bytes in ((None, True), (Kept(), True), (Kept(), False)):
        metrics = AuditMetrics()
        bus = AuditBus([MemorySink()], capacity=8, metrics=metrics) if handoff is None else None
        auditor = Auditor(settings, bus, metrics, engine="mock", handoff=handoff)
        capture = auditor.open(request_id="r", body=body, model="m", streaming=False, store=True,
                               body_bytes=received if with_bytes else None)  # fmt: skip
        assert capture is not None
        capture.response(answer, sent if with_bytes else None)
        capture.finish()
        if handoff is None:
            records.append(capture.record)
            continue
        (raw,) = handoff.raws
        if with_bytes:
            assert raw.body is received and raw.response is sent
        else:
            assert raw.body is body and raw.response is answer
        wire = msgspec.msgpack.decode(msgspec.msgpack.encode(raw), type=RawCapture)
        records.append(build_record(wire, "mock", aggregate(wire)))
        local_build = capture.record  # built in the serving process on demand, from the bytes
        assert local_build is not None and local_build.response == answer
    timing = ("created_at", "completed_at", "ttft_ms", "duration_ms", "writer", "seq")
    for record in records:
        assert record is not None
        for field in timing:
            setattr(record, field, 0)
    local = msgspec.to_builtins(records[0])
    assert local["request"] == body and local["response"] == answer
    assert [msgspec.to_builtins(r) for r in records[1:]] == [local, local]
