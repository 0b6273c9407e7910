"""The join of a request's request_payload and request_end rows: either order, bounded memory,
a timeout, and every input's token handed back exactly once."""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from auditgate.dynamo import DynamoReader
from auditgate.dynamo.convert import from_trace
from tests.dynamo import fixtures


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pairs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(payload row, end row) of every captured 1.6.1 request, in request order."""
    values = fixtures.messages("1.6.1")
    ends = {v["request"]["request_id"]: v for v in values if v["event_type"] == "request_end"}
    return [
        (v, ends[v["payload"]["request_id"]])
        for v in values
        if v["event_type"] == "request_payload"
    ]


def test_either_order_gives_the_same_record_and_both_tokens() -> None:
    """Payload first or end first: one record, equal either way, carrying both tokens."""
    payload, end = pairs()[0]
    first: DynamoReader[str] = DynamoReader()
    second: DynamoReader[str] = DynamoReader()
    a = first.feed(payload, "p") + first.feed(end, "e")
    b = second.feed(end, "e") + second.feed(payload, "p")
    assert [(c.record, c.tokens, c.how) for c in a] == [
        (from_trace(payload, end), ["p", "e"], "joined")
    ]
    assert [(c.record, sorted(c.tokens), c.how) for c in b] == [
        (from_trace(payload, end), ["e", "p"], "joined")
    ]
    assert (first.pending, first.counts["joined"]) == (0, 1)


def test_a_payload_row_alone_is_emitted_without_timing_after_the_timeout() -> None:
    """No request_end within the timeout: the payload row alone, no ttft, counted."""
    clock = Clock()
    reader: DynamoReader[str] = DynamoReader(timeout_s=5.0, clock=clock)
    payload, _ = pairs()[0]
    assert reader.feed(payload, "p") == []
    clock.now = 4.9
    assert reader.expire() == []
    clock.now = 5.0
    (alone,) = reader.expire()
    assert (alone.how, alone.tokens, alone.record.ttft_ms, alone.record.duration_ms) == (
        "payload_only",
        ["p"],
        None,
        0.0,
    )
    assert alone.record.created_at == payload["event_time_unix_ms"]
    assert (reader.pending, reader.counts["payload_only"]) == (0, 1)


def test_an_end_row_alone_becomes_a_usage_only_record() -> None:
    """A request_end row whose payload never comes is a usage_only record with its usage."""
    reader: DynamoReader[str] = DynamoReader()
    _, end = pairs()[0]
    reader.feed(end, "e")
    (alone,) = reader.drain()
    request = end["request"]
    assert (alone.how, alone.record.mode, alone.record.usage, alone.record.request) == (
        "end_only",
        "usage_only",
        {
            "prompt_tokens": request["input_tokens"],
            "completion_tokens": request["output_tokens"],
            "total_tokens": request["input_tokens"] + request["output_tokens"],
        },
        msgspec.UNSET,
    )


def test_memory_is_bounded_and_the_oldest_row_is_given_up_on() -> None:
    """Past max_pending waiting rows, the oldest is emitted alone and counted as evicted."""
    reader: DynamoReader[int] = DynamoReader(max_pending=2)
    rows = [payload for payload, _ in pairs()[:3]]
    out = [c for i, row in enumerate(rows) for c in reader.feed(row, i)]
    assert [(c.how, c.tokens) for c in out] == [("payload_only", [0])]
    assert (reader.pending, reader.counts["evicted"]) == (2, 1)


def test_a_late_partner_is_dropped_counted_and_its_token_returned() -> None:
    """A row whose request was already emitted yields no record; its token is handed back."""
    clock = Clock()
    reader: DynamoReader[str] = DynamoReader(timeout_s=1.0, clock=clock)
    payload, end = pairs()[0]
    reader.feed(payload, "p")
    clock.now = 2.0
    assert [c.how for c in reader.expire()] == ["payload_only"]
    assert reader.feed(end, "e") == []
    assert (reader.late_tokens(), reader.late_tokens(), reader.counts["late"]) == (["e"], [], 1)


def test_a_redelivered_row_replaces_the_waiting_one() -> None:
    """The same row twice (a redelivery) keeps one waiting row; the first token is returned."""
    reader: DynamoReader[str] = DynamoReader()
    payload, end = pairs()[0]
    reader.feed(payload, "p1")
    reader.feed(copy.deepcopy(payload), "p2")
    (joined,) = reader.feed(end, "e")
    assert (joined.tokens, reader.late_tokens(), reader.pending) == (["p2", "e"], ["p1"], 0)


def test_every_captured_request_joins_whatever_the_interleaving() -> None:
    """All captured rows in stream order: every request joined, nothing left waiting."""
    reader: DynamoReader[int] = DynamoReader()
    out = [c for i, v in enumerate(fixtures.messages("1.6.1")) for c in reader.feed(v, i)]
    hows = sorted(c.how for c in out)
    assert hows == ["joined"] * 9 + ["tool"] * 3
    assert sorted(t for c in out for t in c.tokens) == list(range(21))
    assert reader.pending == 0
