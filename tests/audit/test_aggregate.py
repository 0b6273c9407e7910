"""Stream aggregation: examples, the stream/non-stream property, the SDK accumulator."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from auditgate.audit.aggregate import StreamAggregator

TOP = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "m",
    "system_fingerprint": "fp_1",
}


def chunk(*choices: dict[str, Any], **top: Any) -> dict[str, Any]:
    """An OpenAI-shaped chunk carrying ``choices``."""
    return {**TOP, "choices": list(choices), **top}


def choice(
    index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None
) -> dict[str, Any]:
    """One chunk choice, with the keys OpenAI always sends."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def completion(*choices: dict[str, Any], usage: Any = None) -> dict[str, Any]:
    """The non-stream completion shape for ``TOP``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": list(choices),
        "usage": usage,
        "system_fingerprint": "fp_1",
    }


def aggregate(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Feed ``chunks`` to a fresh aggregator and finish it."""
    aggregator = StreamAggregator()
    for item in chunks:
        aggregator.feed(item)
    return aggregator.finish()


def test_nothing_fed_gives_none() -> None:
    """An aggregator that saw no chunk has no completion and no usage."""
    aggregator = StreamAggregator()
    assert (aggregator.finish(), aggregator.usage) == (None, None)


def test_plain_text() -> None:
    """Content fragments are concatenated; role comes from the first delta."""
    chunks = [
        chunk(choice(0, {"role": "assistant", "content": "", "refusal": None})),
        chunk(choice(0, {"content": "Hel"})),
        chunk(choice(0, {"content": "lo!"})),
        chunk(choice(0, {}, "stop")),
    ]
    expected = completion(
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    )
    assert expected == aggregate(chunks)


def test_two_choices_interleaved() -> None:
    """Choices are accumulated per index whatever the interleaving, and sorted by index."""
    chunks = [
        chunk(choice(0, {"role": "assistant", "content": ""})),
        chunk(choice(1, {"role": "assistant", "content": ""})),
        chunk(choice(1, {"content": "B1"})),
        chunk(choice(0, {"content": "A1"})),
        chunk(choice(0, {"content": " A2"}), choice(1, {"content": " B2"})),
        chunk(choice(1, {}, "length")),
        chunk(choice(0, {}, "stop")),
    ]
    expected = completion(
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A1 A2"},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "B1 B2"},
            "logprobs": None,
            "finish_reason": "length",
        },
    )
    assert expected == aggregate(chunks)


def test_two_tool_calls_with_split_arguments() -> None:
    """Tool calls merge by index: id/type/name from the first fragment, arguments concatenated."""
    chunks = [
        chunk(
            choice(
                0,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": ""},
                        }
                    ],
                },
            )
        ),
        chunk(choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]})),
        chunk(choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": '}}]})),
        chunk(
            choice(
                0,
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "time", "arguments": "{}"},
                        }
                    ]
                },
            )
        ),
        chunk(choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]})),
        chunk(choice(0, {}, "tool_calls")),
    ]
    expected = completion(
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "time", "arguments": "{}"},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    )
    assert expected == aggregate(chunks)


def test_empty_content_beside_tool_calls_is_null() -> None:
    """A stream that opens with ``content: ""`` and then calls a tool has ``content: null``."""
    chunks = [
        chunk(choice(0, {"role": "assistant", "content": ""})),
        chunk(
            choice(
                0,
                {
                    "tool_calls": [
                        {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}
                    ]
                },
                "tool_calls",
            )
        ),
    ]
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
    }
    assert message == aggregate(chunks)["choices"][0]["message"]  # type: ignore[index]


def test_reasoning_content_then_content() -> None:
    """Reasoning and content are concatenated separately."""
    chunks = [
        chunk(choice(0, {"role": "assistant", "content": ""})),
        chunk(choice(0, {"reasoning_content": "Think"})),
        chunk(choice(0, {"reasoning_content": "ing."})),
        chunk(choice(0, {"content": "Done"})),
        chunk(choice(0, {}, "stop")),
    ]
    message = {"role": "assistant", "content": "Done", "reasoning_content": "Thinking."}
    assert message == aggregate(chunks)["choices"][0]["message"]  # type: ignore[index]


def test_refusal() -> None:
    """Refusal fragments are concatenated and a null content stays null."""
    chunks = [
        chunk(choice(0, {"role": "assistant", "content": None, "refusal": ""})),
        chunk(choice(0, {"refusal": "I can't"})),
        chunk(choice(0, {"refusal": " help."})),
        chunk(choice(0, {}, "stop")),
    ]
    message = {"role": "assistant", "content": None, "refusal": "I can't help."}
    assert message == aggregate(chunks)["choices"][0]["message"]  # type: ignore[index]


def test_logprobs_lists_are_concatenated() -> None:
    """``logprobs.content`` and ``logprobs.refusal`` lists are concatenated in order."""

    def entry(token: str) -> dict[str, Any]:
        return {"token": token, "logprob": -0.5, "bytes": None, "top_logprobs": []}

    chunks = [
        chunk(choice(0, {"role": "assistant", "content": ""})),
        chunk(choice(0, {"content": "a"}, logprobs={"content": [entry("a")], "refusal": None})),
        chunk(choice(0, {"content": "b"}, logprobs={"content": [entry("b")], "refusal": None})),
        chunk(choice(0, {"refusal": "n"}, logprobs={"content": None, "refusal": [entry("n")]})),
        chunk(choice(0, {}, "stop")),
    ]
    logprobs = {"content": [entry("a"), entry("b")], "refusal": [entry("n")]}
    assert logprobs == aggregate(chunks)["choices"][0]["logprobs"]  # type: ignore[index]


def test_usage_chunk_with_empty_choices() -> None:
    """Usage comes from the chunk that carries it, here a final chunk with no choices."""
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    aggregator = StreamAggregator()
    for item in [
        chunk(choice(0, {"role": "assistant", "content": "x"}), usage=None),
        chunk(choice(0, {}, "stop"), usage=None),
        chunk(usage=usage),
    ]:
        aggregator.feed(item)
    expected = completion(
        {
            "index": 0,
            "message": {"role": "assistant", "content": "x"},
            "logprobs": None,
            "finish_reason": "stop",
        },
        usage=usage,
    )
    assert (expected, usage) == (aggregator.finish(), aggregator.usage)


def test_top_level_fields_first_non_null_and_extras() -> None:
    """Top-level fields take the first non-null value; ``obfuscation`` is dropped."""
    chunks = [
        {"id": "a", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "service_tier": None, "obfuscation": "xyz", "choices": []},
        {"id": "b", "object": "chat.completion.chunk", "created": 2, "model": "n",
         "service_tier": "default", "obfuscation": "q", "kv_params": {"k": 1}, "choices": []},
    ]  # fmt: skip
    expected = {
        "id": "a",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": None,
        "service_tier": "default",
        "kv_params": {"k": 1},
    }
    assert expected == aggregate(chunks)


def test_unknown_fields() -> None:
    """Unknown string delta fields concatenate; unknown choice fields keep the last non-null."""
    first = choice(0, {"role": "assistant", "content": "", "reasoning": "a"})
    chunks = [
        chunk(first | {"stop_reason": None}),
        chunk(choice(0, {"reasoning": "b", "role": "assistant"}) | {"stop_reason": None}),
        chunk(choice(0, {}, "stop") | {"stop_reason": "</s>"}),
    ]  # fmt: skip
    expected = {
        "index": 0,
        "message": {"role": "assistant", "content": "", "reasoning": "ab"},
        "logprobs": None,
        "finish_reason": "stop",
        "stop_reason": "</s>",
    }
    assert expected == aggregate(chunks)["choices"][0]  # type: ignore[index]


def test_chunks_are_not_modified() -> None:
    """Feeding and finishing leave the chunks exactly as they were."""
    chunks = [
        chunk(choice(0, {"role": "assistant", "content": "a", "annotations": [{"x": 1}]})),
        chunk(choice(0, {"content": "b", "annotations": [{"x": 2}]})),
        chunk(choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}, "stop")),
    ]
    before = copy.deepcopy(chunks)
    aggregate(chunks)
    assert before == chunks


# --- property: splitting a completion into chunks and aggregating gives it back ---------------

TEXT = st.text(alphabet='ab {}":é\n', max_size=12)
NONEMPTY = st.text(alphabet='ab {}":é\n', min_size=1, max_size=12)


def logprob(token: str) -> dict[str, Any]:
    """A ChatCompletionTokenLogprob-shaped entry."""
    return {"token": token, "logprob": -1.0, "bytes": [97], "top_logprobs": []}


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """An assistant message in OpenAI's non-stream shape."""
    tool_calls = draw(
        st.lists(
            st.builds(
                lambda name, args, n: {
                    "id": f"call_{n}",
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                },
                st.sampled_from(["f", "get_weather"]),
                TEXT,
                st.integers(0, 999),
            ),
            max_size=3,
        )
    )
    content = draw(st.one_of(st.none(), NONEMPTY) if tool_calls else st.one_of(st.none(), TEXT))
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if draw(st.booleans()):
        message["reasoning_content"] = draw(NONEMPTY)
    refusal = draw(st.sampled_from(["absent", "null", "text"]))
    if refusal != "absent":
        message["refusal"] = draw(NONEMPTY) if refusal == "text" else None
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


@st.composite
def completions(draw: st.DrawFn) -> dict[str, Any]:
    """A random chat.completion with 1-3 choices."""
    choices = []
    for index in range(draw(st.integers(1, 3))):
        lists = st.one_of(st.none(), st.lists(st.builds(logprob, NONEMPTY), min_size=1, max_size=3))
        choices.append(
            {
                "index": index,
                "message": draw(messages()),
                "logprobs": draw(st.one_of(st.none(), st.fixed_dictionaries(
                    {"content": lists, "refusal": lists}))),
                "finish_reason": draw(st.sampled_from(
                    [None, "stop", "length", "tool_calls", "content_filter"])),
            }
        )  # fmt: skip
    result: dict[str, Any] = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(st.sampled_from(["m", "gpt-4o"])),
        "choices": choices,
        "usage": draw(st.one_of(st.none(), st.builds(
            lambda p, c: {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            st.integers(0, 99), st.integers(0, 99)))),
    }  # fmt: skip
    if draw(st.booleans()):
        result["system_fingerprint"] = "fp_x"
    if draw(st.booleans()):
        result["service_tier"] = "default"
    return result


def split(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` cut at random points into non-empty fragments."""
    if len(text) < 2:
        return [text] if text else []
    cuts = sorted(draw(st.sets(st.integers(1, len(text) - 1), max_size=4)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def choice_events(draw: st.DrawFn, source: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunk choices OpenAI would stream for one completion choice, in order."""
    message, index = source["message"], source["index"]
    content = message["content"]
    first: dict[str, Any] = {"role": "assistant", "content": None if content is None else ""}
    deltas: list[dict[str, Any]] = [first]
    if message.get("refusal", "") is None:
        first["refusal"] = None
    for key in ("reasoning_content", "content", "refusal"):
        deltas += [{key: part} for part in split(draw, message.get(key) or "")]
    for n, call in enumerate(message.get("tool_calls", [])):
        header = {"index": n, "id": call["id"], "type": "function",
                  "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
        deltas.append({"tool_calls": [header]})
        deltas += [
            {"tool_calls": [{"index": n, "function": {"arguments": part}}]}
            for part in split(draw, call["function"]["arguments"])
        ]
    events = [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
              for delta in deltas]  # fmt: skip
    events.append({"index": index, "delta": {}, "logprobs": None,
                   "finish_reason": source["finish_reason"]})  # fmt: skip
    logprobs = source["logprobs"]
    if logprobs is not None:
        # The first chunk never carries logprobs (the SDK would count them twice); every later
        # event may carry a slice, and one always carries the (possibly null) lists.
        carriers = sorted(draw(st.sets(st.integers(1, len(events) - 1), min_size=1)))
        for key in ("content", "refusal"):
            entries = logprobs[key] or []
            for position, entry in enumerate(entries):
                target = carriers[min(position, len(carriers) - 1)]
                slot = events[target]["logprobs"] or {"content": None, "refusal": None}
                slot[key] = [*(slot[key] or []), entry]
                events[target]["logprobs"] = slot
        if all(event["logprobs"] is None for event in events):
            events[carriers[0]]["logprobs"] = {"content": None, "refusal": None}
    return events


@st.composite
def streams(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A completion and one of the chunk sequences that stream it."""
    source = draw(completions())
    top = {"id": source["id"], "object": "chat.completion.chunk", "created": source["created"],
           "model": source["model"]}  # fmt: skip
    for key in ("system_fingerprint", "service_tier"):
        if key in source:
            top[key] = source[key]
    queues = [choice_events(draw, c) for c in source["choices"]]
    chunks = []
    started = 0
    while any(queues):
        # Choices first appear in index order, as OpenAI streams them (and the SDK requires).
        ready = [i for i, queue in enumerate(queues) if queue and i <= started]
        picked = draw(st.lists(st.sampled_from(ready), min_size=1, max_size=2, unique=True))
        chunks.append({**top, "choices": [queues[i].pop(0) for i in sorted(picked)]})
        started = max(started, max(picked) + 1)
    if source["usage"] is not None:
        chunks.append({**top, "choices": [], "usage": source["usage"]})
    return source, chunks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_aggregate_of_stream_is_the_completion(case: tuple[dict[str, Any], list[Any]]) -> None:
    """Any chunking and interleaving of a completion aggregates back to exactly that completion."""
    source, chunks = case
    assert source == aggregate(chunks)


def without_null_message_fields(completion_: dict[str, Any]) -> dict[str, Any]:
    """``completion_`` with null-valued message fields dropped (and nothing else changed)."""
    choices = [
        {**c, "message": {k: v for k, v in c["message"].items() if v is not None}}
        for c in completion_["choices"]
    ]
    return {**completion_, "choices": choices}


def sdk_final(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What the official SDK's accumulator builds from ``chunks``, in OpenAI's non-stream shape.

    ``get_final_completion`` raises on ``length``/``content_filter`` finish reasons, so the raw
    snapshot is used then.  Normalised away: the SDK's additions that OpenAI's response does not
    have (``parsed``, tool-call ``index`` and ``parsed_arguments``), and null message fields: the
    SDK's message model marks every field set (``refusal``, ``audio``, ``annotations``,
    ``function_call``, ``tool_calls`` all null), so it cannot tell null from absent.
    """
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for item in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(item))
    reasons = {c.finish_reason for c in state.current_completion_snapshot.choices}
    result: Any
    if reasons & {"length", "content_filter"}:
        result = state.current_completion_snapshot.to_dict()
    else:
        result = state.get_final_completion().to_dict()
    for choice_ in result["choices"]:
        message = choice_["message"]
        message.pop("parsed", None)
        for call in message.get("tool_calls") or []:
            call.pop("index")
            call["function"].pop("parsed_arguments", None)
    return without_null_message_fields(result)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_aggregate_equals_sdk_accumulator(case: tuple[dict[str, Any], list[Any]]) -> None:
    """On OpenAI-shaped streams the aggregate equals the official SDK's accumulated completion."""
    source, chunks = case
    expected = sdk_final(chunks)
    if "system_fingerprint" not in source:
        # The SDK always sets system_fingerprint (to null when no chunk carried it).
        assert expected.pop("system_fingerprint") is None
    assert expected == without_null_message_fields(aggregate(chunks))  # type: ignore[arg-type]


def test_out_of_order_indices() -> None:
    """Choices and tool calls that first appear out of index order still land in index order."""
    chunks = [
        chunk(choice(1, {"role": "assistant", "content": "b"}, "stop")),
        chunk(
            choice(
                0,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"index": 1, "id": "y", "type": "function",
                         "function": {"name": "g", "arguments": "{}"}},
                        {"index": 0, "id": "x", "type": "function",
                         "function": {"name": "f", "arguments": "{"}},
                        {"index": 0, "function": {"arguments": "}"}},
                    ],
                },
                "tool_calls",
            )
        ),
    ]  # fmt: skip
    expected = completion(
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "y", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "b"},
            "logprobs": None,
            "finish_reason": "stop",
        },
    )
    assert expected == aggregate(chunks)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(min_value=1, max_value=4), max_size=40))
def test_feed_all_in_batches_equals_feed(
    case: tuple[dict[str, Any], list[Any]], sizes: list[int]
) -> None:
    """Feeding a stream in batches with ``feed_all`` aggregates to what ``feed`` per chunk does."""
    _, chunks = case
    batched = StreamAggregator()
    rest = list(chunks)
    for size in itertools.cycle(sizes or [1]):
        if not rest:
            break
        batched.feed_all(rest[:size])
        rest = rest[size:]
    assert aggregate(chunks) == batched.finish()


def test_feed_all_with_logprobs_extras_and_null_content() -> None:
    """The general path (logprobs, extra choice keys, a null then a string field) mixes with the
    plain one within a batch."""
    chunks = [
        chunk(choice(0, {"role": "assistant", "content": None})),
        chunk(choice(0, {"content": "a"}, logprobs={"content": [logprob("a")]})),
        chunk(choice(0, {"content": "b"})),
        chunk(choice(0, {}, "stop") | {"stop_reason": 7}),
    ]
    batched = StreamAggregator()
    batched.feed_all(chunks)
    expected = {
        "index": 0,
        "message": {"role": "assistant", "content": "ab"},
        "logprobs": {"content": [logprob("a")], "refusal": None},
        "finish_reason": "stop",
        "stop_reason": 7,
    }
    assert expected == batched.finish()["choices"][0]  # type: ignore[index]
