"""Aggregating an upstream's own Responses stream (passthrough): the final object for the record."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from auditgate.endpoints.responses import (
    ResponsesStreamAggregator,
    ResponseStreamWriter,
    validate_responses,
)
from auditgate.errors import UpstreamError
from tests.endpoints.responses.chat import Call, Output, chunks
from tests.endpoints.responses.sdk import response_model

REQUEST = validate_responses(
    {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}]}
)
OUTPUT = Output(
    reasoning=["Let", " me", " see"],
    content=["The ", "answer", "."],
    calls=[Call("call_1", "f", ['{"a"', ": 1}"])],
    finish_reason="tool_calls",
)


def stream() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events of a full Responses stream, and its final response."""
    writer = ResponseStreamWriter(REQUEST, request_id="R", created_at=100)
    events = writer.feed(chunks(OUTPUT))
    events += writer.finish(completed_at=200)
    assert writer.response is not None
    return copy.deepcopy(events), copy.deepcopy(writer.response)


def aggregate(events: list[dict[str, Any]], **finish: Any) -> dict[str, Any] | None:
    """Feed ``events`` to a fresh aggregator and finish it."""
    aggregator = ResponsesStreamAggregator()
    aggregator.feed_all(events)
    return aggregator.finish(**finish)


def test_terminal_event_is_the_final_object() -> None:
    """A stream that ended is what its terminal event said; usage comes from it too."""
    events, final = stream()
    aggregator = ResponsesStreamAggregator()
    for event in events:
        aggregator.feed(event)
    assert aggregator.finish() == final
    assert aggregator.usage == final["usage"]
    assert aggregator.skipped == 0


def test_every_cut_gives_a_valid_partial() -> None:
    """Cut after any event, the partial object is one the SDK accepts, status ``incomplete``,
    with every item seen, finished ones as they were finished and open ones as far as they got."""
    events, final = stream()
    terminal = len(events) - 1
    for cut in range(2, terminal):
        partial = aggregate(events[:cut])
        assert partial is not None
        response_model(partial)
        assert (partial["id"], partial["status"]) == ("resp_R", "incomplete")
        seen = {
            e["output_index"] for e in events[:cut] if e["type"] == "response.output_item.added"
        }
        assert [i["id"] for i in partial["output"]] == [
            final["output"][i]["id"] for i in sorted(seen)
        ]
        for index, item in enumerate(partial["output"]):
            finished = any(
                e["type"] == "response.output_item.done" and e["output_index"] == index
                for e in events[:cut]
            )
            if finished:
                assert item == final["output"][index]
            else:
                assert item["status"] == "incomplete"


def test_partial_holds_the_text_so_far() -> None:
    """Open items get the parts and deltas seen: text, reasoning text, arguments."""
    events, _ = stream()
    second_text_delta = [
        i for i, e in enumerate(events) if e["type"] == "response.output_text.delta"
    ][1]
    partial = aggregate(events[: second_text_delta + 1])
    assert partial is not None
    assert partial["output"][1] == {
        "id": "msg_R_1",
        "type": "message",
        "status": "incomplete",
        "content": [
            {"type": "output_text", "annotations": [], "logprobs": [], "text": "The answer"}
        ],
        "role": "assistant",
    }
    in_reasoning = [
        i for i, e in enumerate(events) if e["type"] == "response.reasoning_text.delta"
    ][1]
    thinking = aggregate(events[: in_reasoning + 1])
    assert thinking is not None
    assert thinking["output"] == [
        {
            "id": "rs_R_0",
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "Let me"}],
            "status": "incomplete",
        }
    ]
    first_arguments = next(
        i for i, e in enumerate(events) if e["type"] == "response.function_call_arguments.delta"
    )
    calling = aggregate(events[: first_arguments + 1])
    assert calling is not None
    assert calling["output"][2] == {
        "id": "fc_R_2",
        "type": "function_call",
        "status": "incomplete",
        "arguments": '{"a"',
        "call_id": "call_1",
        "name": "f",
    }


@pytest.mark.parametrize(
    ("finish", "status", "error"),
    [
        ({"cancelled": True}, "cancelled", None),
        (
            {"failure": UpstreamError("upstream reset", status_code=502)},
            "failed",
            {"code": "server_error", "message": "upstream reset"},
        ),
    ],
)
def test_cut_status(finish: dict[str, Any], status: str, error: dict[str, Any] | None) -> None:
    """A client that went away makes the partial ``cancelled``; an upstream failure ``failed``."""
    events, _ = stream()
    partial = aggregate(events[:12], **finish)
    assert partial is not None
    response_model(partial)
    assert (partial["status"], partial["error"]) == (status, error)


def test_error_event_fails_the_partial() -> None:
    """An upstream ``error`` event, with no terminal event after it, makes the partial failed."""
    events, _ = stream()
    error = {
        "type": "error",
        "sequence_number": 9,
        "code": "server_error",
        "message": "boom",
        "param": None,
    }
    partial = aggregate([*events[:9], error])
    assert partial is not None
    assert (partial["status"], partial["error"]) == (
        "failed",
        {"code": "server_error", "message": "boom"},
    )


def test_nothing_seen_and_odd_events() -> None:
    """Without a lifecycle event there is no object, and events missing required fields are
    skipped and counted while unknown types are ignored."""
    assert aggregate([]) is None
    events, final = stream()
    aggregator = ResponsesStreamAggregator()
    aggregator.feed_all(
        [{"type": "response.output_text.delta"}, {"type": "response.web_search_call.searching"}]
    )
    aggregator.feed_all(events)
    assert (aggregator.finish(), aggregator.skipped) == (final, 1)
