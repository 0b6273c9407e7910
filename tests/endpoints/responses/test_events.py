"""The Responses stream writer: OpenAI's events, in order, judged by the official SDK."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditgate.audit.aggregate import StreamAggregator
from auditgate.endpoints.responses import (
    ResponsesRequest,
    ResponseStreamWriter,
    encode_events,
    to_response,
    validate_responses,
)
from auditgate.errors import UpstreamError
from tests.endpoints.responses.chat import Call, Output, chunk, chunks, completion
from tests.endpoints.responses.sdk import accumulate, decode_sse, event_model, response_model

REQUEST = validate_responses(
    {
        "model": "m",
        "input": "hi",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "include": ["message.output_text.logprobs"],
    }
)


def write(
    output_chunks: list[dict[str, Any]],
    batches: list[int] | None = None,
    request: ResponsesRequest = REQUEST,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Stream ``output_chunks`` through a writer (in batches of the given sizes, else one) and
    finish it; the events and the final response."""
    writer = ResponseStreamWriter(request, request_id="R", created_at=100)
    events = writer.start()
    sizes = list(batches or [len(output_chunks)])
    start = 0
    for size in sizes:
        events += writer.feed(output_chunks[start : start + size])
        start += size
    events += writer.feed(output_chunks[start:])
    events += writer.finish(completed_at=200)
    assert writer.response is not None
    return events, writer.response


def translated(completion_: dict[str, Any], request: ResponsesRequest = REQUEST) -> dict[str, Any]:
    """The non-stream translation of a chat completion, with the writer's ids and times."""
    return to_response(completion_, request, request_id="R", created_at=100, completed_at=200)


def check_events(events: list[dict[str, Any]]) -> None:
    """Every event parses in the SDK; numbers run from 0; items open and close one at a time."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        event_model(event)
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    open_index = None
    for event in events[2:-1]:
        if event["type"] == "response.output_item.added":
            assert open_index is None
            open_index = event["output_index"]
        elif event["type"] == "response.output_item.done":
            assert event["output_index"] == open_index
            open_index = None
        else:
            assert event["output_index"] == open_index, event
    assert open_index is None


TEXT = Output(content=["Hel", "lo", "!"])
CASES = {
    "text": TEXT,
    "text with logprobs": Output(content=["Hel", "lo", "!"], logprobs=True),
    "reasoning then text": Output(reasoning=["Let", " me", " think"], content=["Ok", "."]),
    "several tool calls": Output(
        calls=[
            Call("call_a", "get_weather", ['{"city":', ' "Paris"}']),
            Call("call_b", "get_weather", ['{"city": "Oslo"}']),
            Call("call_c", "get_time", []),
        ],
        finish_reason="tool_calls",
    ),
    "reasoning, text and a call": Output(
        reasoning=["hmm"], content=["Checking."], calls=[Call("call_a", "get_weather", ["{}"])]
    ),
    "cut at the length limit": Output(
        reasoning=["a", "b"], content=["Half", " a"], finish_reason="length"
    ),
    "cut in a call": Output(calls=[Call("call_a", "f", ['{"a', '":'])], finish_reason="length"),
    "content filter": Output(content=["No"], finish_reason="content_filter"),
    "no usage": Output(content=["x"], usage=None),
}


@pytest.mark.parametrize("output", CASES.values(), ids=CASES.keys())
def test_stream_equals_translation_and_sdk_accumulation(output: Output) -> None:
    """Every event parses in the SDK; the final response equals the non-stream translation of
    the aggregated stream and of the engine's own completion, and what the SDK accumulates."""
    stream = chunks(output)
    events, final = write(stream)
    check_events(events)
    response_model(final)
    assert events[-1]["response"] is final
    aggregated = StreamAggregator()
    aggregated.feed_all(stream)
    completion_ = aggregated.finish()
    assert completion_ is not None
    assert translated(completion_) == final
    assert translated(completion(output)) == final
    sdk_final, built = accumulate(events)
    if final["status"] == "completed":
        assert sdk_final == final
    texts = {
        item["id"]: item["arguments"]
        if item["type"] == "function_call"
        else item["content"][0]["text"]
        for item in final["output"]
        if item["type"] != "reasoning"
    }
    assert built == {item_id: text for item_id, text in texts.items() if text}


def test_text_stream_events_in_full() -> None:
    """A text answer is exactly OpenAI's event sequence, with deterministic ids."""
    events, final = write(chunks(TEXT), request=validate_responses({"model": "m", "input": "hi"}))
    where = {"item_id": "msg_R_0", "output_index": 0}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": "Hello!"}
    item = {
        "id": "msg_R_0",
        "type": "message",
        "status": "completed",
        "content": [part],
        "role": "assistant",
    }
    shell = events[0]["response"]
    assert (shell["id"], shell["status"], shell["output"], shell["model"]) == (
        "resp_R",
        "in_progress",
        [],
        "m",
    )
    assert events[1:] == [
        {"type": "response.in_progress", "sequence_number": 1, "response": shell},
        {
            "type": "response.output_item.added",
            "sequence_number": 2,
            "output_index": 0,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            "sequence_number": 3,
            **where,
            "content_index": 0,
            "part": {**part, "text": ""},
        },
        *(
            {
                "type": "response.output_text.delta",
                "sequence_number": 4 + i,
                **where,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            }
            for i, text in enumerate(["Hel", "lo", "!"])
        ),
        {
            "type": "response.output_text.done",
            "sequence_number": 7,
            **where,
            "content_index": 0,
            "text": "Hello!",
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "sequence_number": 8,
            **where,
            "content_index": 0,
            "part": part,
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 9,
            "output_index": 0,
            "item": item,
        },
        {"type": "response.completed", "sequence_number": 10, "response": final},
    ]
    assert (final["status"], final["completed_at"], final["model"], final["output"]) == (
        "completed",
        200,
        "engine-m",
        [item],
    )
    assert final["usage"] == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 18,
    }


def test_reasoning_is_reasoning_text() -> None:
    """Chain of thought streams as ``reasoning_text`` in a reasoning item's content, no summary."""
    events, final = write(chunks(Output(reasoning=["a", "b"], content=["c"])))
    reasoning = {
        "id": "rs_R_0",
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "ab"}],
        "status": "completed",
    }
    assert final["output"][0] == reasoning
    assert [e["type"] for e in events[2:9]] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert events[6]["text"] == "ab"


def test_vllm_reasoning_field_and_both_fields() -> None:
    """vLLM's ``reasoning`` delta is reasoning too; when both spellings come, it is counted once."""
    plain = [chunk({"reasoning_content": "xy"}), chunk({"content": "z"}, "stop")]
    vllm = [chunk({"reasoning": "xy"}), chunk({"content": "z"}, "stop")]
    both = [chunk({"reasoning": "xy", "reasoning_content": "xy"}), chunk({"content": "z"}, "stop")]
    assert write(vllm)[1] == write(plain)[1] == write(both)[1]


def test_incomplete_statuses() -> None:
    """A length cut is ``incomplete`` (``max_output_tokens``) with its last item incomplete; a
    stream that ends without a finish reason is incomplete with no reason."""
    events, final = write(chunks(CASES["cut at the length limit"]))
    assert events[-1]["type"] == "response.incomplete"
    assert (final["status"], final["incomplete_details"], final["completed_at"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
        None,
    )
    assert [i["status"] for i in final["output"]] == ["completed", "incomplete"]
    _, unfinished = write([chunk({"content": "x"})])
    assert (unfinished["status"], unfinished["incomplete_details"]) == (
        "incomplete",
        {"reason": None},
    )


@pytest.mark.parametrize(
    ("status_code", "code"), [(502, "server_error"), (429, "rate_limit_exceeded")]
)
def test_failure_mid_stream(status_code: int, code: str) -> None:
    """An engine error mid-stream closes the open item incomplete and ends with
    ``response.failed``, ``error`` set, which the SDK accepts; its output is the translation of
    what was streamed before the error."""
    stream = chunks(CASES["reasoning then text"])
    writer = ResponseStreamWriter(REQUEST, request_id="R", created_at=100)
    events = writer.feed(stream[:5])
    events += writer.fail(UpstreamError("The upstream closed the stream.", status_code=status_code))
    check_events(events)
    final = writer.response
    assert final is not None
    response_model(final)
    assert events[-1] == {
        "type": "response.failed",
        "sequence_number": len(events) - 1,
        "response": final,
    }
    assert (final["status"], final["error"], final.get("usage"), final["completed_at"]) == (
        "failed",
        {"code": code, "message": "The upstream closed the stream."},
        None,
        None,
    )
    assert [(i["type"], i["status"]) for i in final["output"]] == [
        ("reasoning", "completed"),
        ("message", "incomplete"),
    ]
    assert final["output"][1]["content"][0]["text"] == "Ok"
    aggregated = StreamAggregator()
    aggregated.feed_all(stream[:5])
    partial = aggregated.finish()
    assert partial is not None
    assert translated(partial)["output"] == final["output"]


def test_cancel_keeps_what_was_streamed() -> None:
    """A client that went away leaves a ``cancelled`` response holding the output so far."""
    writer = ResponseStreamWriter(REQUEST, request_id="R", created_at=100)
    writer.feed(chunks(TEXT)[:3])
    final = writer.cancel()
    response_model(final)
    assert (
        final["status"],
        final["output"][0]["status"],
        final["output"][0]["content"][0]["text"],
    ) == (
        "cancelled",
        "incomplete",
        "Hello",
    )


def test_late_delta_opens_a_new_item() -> None:
    """Text that comes back after a call opens a new message item: nothing is lost or rewritten."""
    stream = [
        chunk({"content": "a"}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({"content": "b"}),
        chunk({}, "stop"),
    ]
    events, final = write(stream)
    check_events(events)
    assert [(i["id"], i["type"]) for i in final["output"]] == [
        ("msg_R_0", "message"),
        ("fc_R_1", "function_call"),
        ("msg_R_2", "message"),
    ]
    assert [i["content"][0]["text"] for i in final["output"] if i["type"] == "message"] == [
        "a",
        "b",
    ]


def test_call_named_late_and_without_id() -> None:
    """A call whose name comes after its first fragment keeps it; one without id gets ``call_…``."""
    stream = [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "}"}}]}),
        chunk({}, "tool_calls"),
    ]
    events, final = write(stream)
    check_events(events)
    assert final["output"] == [
        {
            "id": "fc_R_0",
            "type": "function_call",
            "status": "completed",
            "arguments": "{}",
            "call_id": "call_R_0",
            "name": "f",
        }
    ]


def test_refusal_is_a_refusal_part() -> None:
    """A refusal streams as ``response.refusal.*`` into a ``refusal`` part of the message."""
    events, final = write(
        [chunk({"refusal": "I can"}), chunk({"refusal": "not."}), chunk({}, "stop")]
    )
    check_events(events)
    assert final["output"][0]["content"] == [{"type": "refusal", "refusal": "I cannot."}]
    assert [e["type"] for e in events if "refusal" in e["type"]] == [
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
    ]


def test_start_is_written_once() -> None:
    """``response.created`` comes once, whether :meth:`start` is called or not."""
    writer = ResponseStreamWriter(REQUEST, request_id="R", created_at=100)
    assert [e["type"] for e in writer.feed([])] == ["response.created", "response.in_progress"]
    assert writer.start() == []
    other = ResponseStreamWriter(REQUEST, request_id="R", created_at=100)
    assert [e["type"] for e in other.finish(completed_at=1)][:2] == [
        "response.created",
        "response.in_progress",
    ]


def test_other_choices_are_ignored() -> None:
    """Only choice 0 is read: a stray choice 1 changes nothing."""
    stream = chunks(TEXT)
    stray = {**stream[1], "choices": [{**stream[1]["choices"][0], "index": 1}]}
    assert write([*stream[:2], stray, *stream[2:]])[1] == write(stream)[1]


def test_sse_bytes_are_what_the_sdk_reads() -> None:
    """The SSE encoding decodes, in the SDK's decoder, to the same events, named by type."""
    events, _ = write(chunks(CASES["reasoning, text and a call"]))
    data = encode_events(events)
    assert data.startswith(b"event: response.created\ndata: {")
    assert decode_sse(data) == [(e["type"], e) for e in events]


def fragments(text: str) -> st.SearchStrategy[list[str]]:
    """``text`` cut into non-empty fragments at random places."""
    return st.sets(st.integers(1, max(1, len(text) - 1)), max_size=len(text)).map(
        lambda cuts: [
            text[a:b]
            for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(text)], strict=True)
            if a < b
        ]
    )


@st.composite
def outputs(draw: st.DrawFn) -> tuple[Output, list[int]]:
    """One answer (reasoning, text, calls), cut into random fragments, and random batch sizes."""
    text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
    reasoning = draw(st.one_of(st.just([]), text.flatmap(fragments)))
    content = draw(st.one_of(st.just([]), text.flatmap(fragments)))
    calls = [
        Call(f"call_{i}", f"f{i}", draw(st.one_of(st.just([]), text.flatmap(fragments))))
        for i in range(draw(st.integers(0, 3)))
    ]
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    output = Output(reasoning, content, calls, finish, logprobs=draw(st.booleans()))
    batches = draw(st.lists(st.integers(0, 4), max_size=8))
    return output, batches


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outputs())
def test_any_chunking_gives_the_same_response(case: tuple[Output, list[int]]) -> None:
    """However the output is cut into chunks and batches, the events are valid and the final
    response equals the non-stream translation of the same output."""
    output, batches = case
    events, final = write(chunks(output), batches)
    check_events(events)
    response_model(final)
    assert final == translated(completion(output))


def test_summary_asked_stream_equals_translation() -> None:
    """With ``reasoning.summary`` asked, the reasoning is the item's summary, streamed or not."""
    request = validate_responses(
        {"model": "m", "input": "hi", "reasoning": {"effort": "low", "summary": "auto"}}
    )
    output = Output(reasoning=["Let me ", "think."], content=["Hi"])
    writer = ResponseStreamWriter(request, request_id="R", created_at=100)
    events = writer.feed(chunks(output)) + writer.finish(completed_at=200)
    check_events(events)
    expected = to_response(
        completion(output), request, request_id="R", created_at=100, completed_at=200
    )
    assert writer.response == expected
    assert (expected["output"][0]["summary"], expected["output"][0]["content"]) == (
        [{"type": "summary_text", "text": "Let me think."}],
        [],
    )
