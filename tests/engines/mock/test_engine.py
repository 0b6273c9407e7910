"""The mock engine: determinism, request knobs, token accounting, stream shape and timing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from auditgate.engines.mock import SYSTEM_FINGERPRINT, MockEngine, count_tokens, split_tokens
from auditgate.errors import InvalidRequestError, NotFoundError
from tests.engines.mock.common import aggregate, batches, request, streamed

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 8},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "hourly": {"type": "boolean"},
                "fields": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "when": {"type": "string", "format": "date"},
                "where": {
                    "type": "object",
                    "properties": {"zip": {"type": ["string", "null"], "maxLength": 3}},
                    "required": ["zip"],
                },
            },
            "required": ["city", "unit", "days", "lat", "hourly", "fields", "when", "where"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}}
CLOCK2 = {"type": "function", "function": {"name": "clock2"}}
WEATHER_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "weather", "schema": WEATHER["function"]["parameters"], "strict": True},  # type: ignore[index]
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Where ``value`` violates ``schema`` (the subset of JSON Schema the tools above use)."""
    errors: list[str] = []
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kinds and not any(
        (k == "integer" and type(value) is int)
        or (k == "number" and type(value) in (int, float))
        or (k in python and type(value) is python[k])
        for k in kinds
    ):
        return [f"{path}: {value!r} is not {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in enum")
    if isinstance(value, dict):
        errors += [f"{path}: missing {r}" for r in schema.get("required", []) if r not in value]
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key)
            errors += [f"{path}.{key}: unexpected"] if sub is None else schema_errors(
                item, sub, f"{path}.{key}")  # fmt: skip
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than minItems")
        for n, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{n}]")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 1 << 30):
            errors.append(f"{path}: length {len(value)} out of bounds")
        if schema.get("format") == "date" and not (len(value) == 10 and value[4] == "-"):
            errors.append(f"{path}: not a date")
    if type(value) in (int, float) and not (
        schema.get("minimum", -(1 << 60)) <= value <= schema.get("maximum", 1 << 60)
    ):
        errors.append(f"{path}: {value} out of bounds")
    return errors


async def test_same_request_same_output() -> None:
    """Two engines given the same request produce the same choices and usage."""
    first = await MockEngine().complete(request(seed=7))
    second = await MockEngine().complete(request(seed=7))
    assert (first["choices"], first["usage"]) == (second["choices"], second["usage"])


async def test_seed_and_messages_change_the_text() -> None:
    """A different seed or a different conversation gives a different text."""
    engine = MockEngine()
    texts = [
        (await engine.complete(req))["choices"][0]["message"]["content"]
        for req in (
            request(),
            request(seed=1),
            request(seed=2),
            request(messages=[{"role": "user", "content": "Hello"}]),
        )
    ]
    assert len(set(texts)) == 4


async def test_default_output() -> None:
    """Without limits: 8-32 tokens of text, finish_reason stop, consistent usage."""
    completion = await MockEngine().complete(request())
    content = completion["choices"][0]["message"]["content"]
    # Prompt: "user" + "What", " is", " 10", " +", " 10", "?" = 7 tokens.
    usage = {"prompt_tokens": 7, "completion_tokens": count_tokens(content),
             "total_tokens": 7 + count_tokens(content)}  # fmt: skip
    assert (True, "stop", usage) == (
        8 <= count_tokens(content) <= 32,
        completion["choices"][0]["finish_reason"],
        completion["usage"],
    )


async def test_n_choices_differ() -> None:
    """Each of ``n`` choices has its own index and text; usage sums their tokens."""
    completion = await MockEngine().complete(request(n=3))
    contents = [c["message"]["content"] for c in completion["choices"]]
    assert ([0, 1, 2], 3, sum(map(count_tokens, contents))) == (
        [c["index"] for c in completion["choices"]],
        len(set(contents)),
        completion["usage"]["completion_tokens"],
    )


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
async def test_token_limit_truncates(limit: str) -> None:
    """A token limit cuts the same text at that many tokens, with finish_reason length."""
    engine = MockEngine()
    full = (await engine.complete(request()))["choices"][0]["message"]["content"]
    cut = await engine.complete(request(**{limit: 5}))
    assert ("".join(split_tokens(full)[:5]), "length", 5) == (
        cut["choices"][0]["message"]["content"],
        cut["choices"][0]["finish_reason"],
        cut["usage"]["completion_tokens"],
    )


@pytest.mark.parametrize("as_list", [False, True])
async def test_stop_cuts_before_the_first_stop_string(as_list: bool) -> None:
    """``stop`` (a string or a list) cuts the content before its first occurrence."""
    engine = MockEngine()
    full = (await engine.complete(request()))["choices"][0]["message"]["content"]
    word = split_tokens(full)[3]
    stop: Any = [word, "no-such-text"] if as_list else word
    cut = await engine.complete(request(stop=stop))
    text = full[: full.index(word)]
    assert (text, "stop", count_tokens(text)) == (
        cut["choices"][0]["message"]["content"],
        cut["choices"][0]["finish_reason"],
        cut["usage"]["completion_tokens"],
    )


async def test_tool_call_arguments_fit_the_schema() -> None:
    """With tools, each call names an offered tool and has JSON arguments valid against its
    schema; the first call is to the first tool."""
    engine = MockEngine()
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}  # type: ignore[index]
    for seed in range(25):
        completion = await engine.complete(request(tools=[WEATHER, CLOCK], seed=seed))
        choice = completion["choices"][0]
        calls = choice["message"]["tool_calls"]
        assert (
            choice["finish_reason"],
            choice["message"]["content"],
            ["get_weather", "clock"][: len(calls)],
            [c["type"] for c in calls],
            [schema_errors(json.loads(c["function"]["arguments"]), schemas[c["function"]["name"]])
             for c in calls],
        ) == ("tool_calls", None, [c["function"]["name"] for c in calls],
              ["function"] * len(calls), [[]] * len(calls))  # fmt: skip


async def test_tool_choice() -> None:
    """A named tool_choice calls that tool; "none" answers with text; an unknown name is a 400."""
    engine = MockEngine()
    named = await engine.complete(
        request(
            tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "clock"}}
        )
    )
    plain = await engine.complete(request(tools=[WEATHER], tool_choice="none"))
    with pytest.raises(InvalidRequestError) as caught:
        await engine.complete(
            request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}})
        )
    call = named["choices"][0]["message"]["tool_calls"][0]["function"]
    assert (
        call,
        plain["choices"][0]["finish_reason"],
        caught.value.param,
    ) == ({"name": "clock", "arguments": "{}"}, "stop", "tool_choice")


async def test_reasoning() -> None:
    """``reasoning_effort`` adds reasoning_content, counted in usage as reasoning tokens."""
    completion = await MockEngine().complete(request(reasoning_effort="low"))
    message = completion["choices"][0]["message"]
    reasoning, content = (
        count_tokens(message["reasoning_content"]),
        count_tokens(message["content"]),
    )
    assert (True, {"reasoning_tokens": reasoning}, reasoning + content) == (
        4 <= reasoning <= 12,
        completion["usage"]["completion_tokens_details"],
        completion["usage"]["completion_tokens"],
    )


async def test_usage_counts_the_token_chunks() -> None:
    """completion_tokens is the number of token deltas streamed, over every choice."""
    engine = MockEngine()
    req = request(n=2, reasoning_effort="minimal", tools=[WEATHER],
                  stream_options={"include_usage": True})  # fmt: skip
    chunks = await streamed(engine, req)
    tokens = sum(
        1
        for chunk in chunks
        for choice in chunk["choices"]
        if {"content", "reasoning_content"} & {k for k, v in choice["delta"].items() if v}
        or any(c["function"].get("arguments") for c in choice["delta"].get("tool_calls", []))
    )
    assert tokens == chunks[-1]["usage"]["completion_tokens"]


CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "n2": {"n": 2},
    "length": {"max_tokens": 3},
    "stop": {"stop": ["e", "a"]},
    "reasoning": {"reasoning_effort": "high"},
    "reasoning-cut": {"reasoning_effort": "high", "max_completion_tokens": 10},
    "tools": {"tools": [WEATHER], "n": 2},
    "tools-cut": {"tools": [WEATHER], "max_tokens": 6},
    "reasoning-tools": {"tools": [CLOCK, WEATHER], "reasoning_effort": "medium"},
    "reasoning-cut-tools": {"tools": [WEATHER], "reasoning_effort": "high", "max_tokens": 2},
    "parallel-tools": {"tools": [CLOCK, WEATHER, CLOCK2], "n": 3},
    "parallel-tools-cut": {"tools": [CLOCK, WEATHER], "n": 3, "max_tokens": 4},
    "logprobs": {"logprobs": True, "top_logprobs": 3, "n": 2, "reasoning_effort": "low"},
    "json-object": {"response_format": {"type": "json_object"}},
    "json-schema-cut": {"response_format": WEATHER_FORMAT, "max_tokens": 7, "logprobs": True},
    "service-tier": {"service_tier": "auto"},
}


@pytest.mark.parametrize("case", CASES)
async def test_stream_aggregates_to_the_non_stream_response(case: str) -> None:
    """The aggregate of ``stream()`` equals ``complete()`` for the same request."""
    engine = MockEngine(ttft_s=0.0)
    req = request(**CASES[case], seed=3, stream_options={"include_usage": True})
    expected = await engine.complete(req)
    actual = aggregate(await streamed(engine, req))
    # ``created`` is the clock at each call; they may straddle a second.
    assert actual["created"] - expected["created"] in (0, 1)
    assert expected == {**actual, "created": expected["created"]}


KNOBS = st.fixed_dictionaries(
    {},
    optional={
        "seed": st.integers(0, 2**32),
        "n": st.integers(1, 3),
        "max_tokens": st.integers(1, 40),
        "stop": st.one_of(
            st.sampled_from(["e", " the", "."]), st.lists(st.sampled_from("aeiou"), max_size=4)
        ),
        "reasoning_effort": st.sampled_from(["none", "minimal", "low", "high"]),
        "tools": st.sampled_from([[WEATHER], [CLOCK, WEATHER]]),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "parallel_tool_calls": st.booleans(),
        "logprobs": st.just(True),
        "top_logprobs": st.integers(0, 20),
        "response_format": st.sampled_from([{"type": "json_object"}, WEATHER_FORMAT]),
        "service_tier": st.sampled_from(["auto", "flex", "priority"]),
    },
)


@settings(max_examples=150, deadline=None)
@given(KNOBS)
async def test_stream_equals_non_stream_for_any_knobs(knobs: dict[str, Any]) -> None:
    """For any mix of knobs, the aggregate of the stream equals the non-stream response."""
    if "top_logprobs" in knobs and "logprobs" not in knobs:
        knobs["logprobs"] = True  # top_logprobs alone is a 400
    engine = MockEngine()
    req = request(**knobs, stream_options={"include_usage": True})
    expected = await engine.complete(req)
    actual = aggregate(await streamed(engine, req))
    assert expected == {**actual, "created": expected["created"]}


async def test_stream_shape() -> None:
    """Role chunk, one chunk per token, finish chunk and usage chunk, exactly as OpenAI sends."""
    engine = MockEngine(["m1", "m2"])
    req = request(model="m2", max_tokens=2, stream_options={"include_usage": True})
    (batch,) = await batches(engine, req)
    completion = await engine.complete(req)
    first, second = split_tokens(completion["choices"][0]["message"]["content"])
    top = {"id": "chatcmpl-req-1", "object": "chat.completion.chunk",
           "created": batch[0]["created"], "model": "m2",
           "system_fingerprint": SYSTEM_FINGERPRINT}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**top, "choices": [choice], "usage": None}

    assert [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": first}),
        chunk({"content": second}),
        chunk({}, "length"),
        {**top, "choices": [], "usage": completion["usage"]},
    ] == batch


async def test_tool_stream_opens_like_openai() -> None:
    """A tool-call stream opens with role, null content and the call header, then fragments."""
    chunks = await streamed(MockEngine(), request(tools=[CLOCK]))
    call_id = chunks[0]["choices"][0]["delta"]["tool_calls"][0]["id"]
    assert [
        {"role": "assistant", "content": None, "refusal": None,
         "tool_calls": [{"index": 0, "id": call_id,
         "type": "function", "function": {"name": "clock", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]},
        {},
    ] == [c["choices"][0]["delta"] for c in chunks]  # fmt: skip


async def test_no_usage_chunk_unless_asked() -> None:
    """Without ``stream_options.include_usage`` no chunk has a usage key."""
    chunks = await streamed(MockEngine(), request())
    assert [False] * len(chunks) == ["usage" in c for c in chunks]


async def test_chunks_and_completion_validate_as_openai_types() -> None:
    """The SDK's own models accept every chunk and the completion (tools, reasoning, n=2)."""
    engine = MockEngine()
    req = request(
        n=2, tools=[WEATHER], reasoning_effort="low", stream_options={"include_usage": True}
    )
    chunks = await streamed(engine, req)
    completion = await engine.complete(req)
    assert chunks == [ChatCompletionChunk.model_validate(c).to_dict() for c in chunks]
    assert completion == ChatCompletion.model_validate(completion).to_dict()


async def test_unknown_model() -> None:
    """An unknown model is OpenAI's 404 model_not_found, from complete() and from stream()."""
    engine = MockEngine()
    expected = {
        "error": {
            "message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    with pytest.raises(NotFoundError) as from_complete:
        await engine.complete(request(model="gpt-9"))
    with pytest.raises(NotFoundError) as from_stream:
        await streamed(engine, request(model="gpt-9"))
    assert [expected, expected] == [from_complete.value.to_dict(), from_stream.value.to_dict()]


@pytest.mark.parametrize(
    ("body", "param"),
    [({"n": 0}, "n"), ({"max_tokens": "5"}, "max_tokens"), ({"stop": ["a"] * 5}, "stop"),
     ({"messages": "hi"}, "messages"), ({"tools": [{"type": "function", "function": {}}]}, "tools"),
     ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
         "type": "integer", "minimum": 5, "maximum": 1}}}]}, "tools")],
)  # fmt: skip
async def test_invalid_requests(body: dict[str, Any], param: str) -> None:
    """Malformed knobs are 400 invalid_request_error naming the parameter."""
    with pytest.raises(InvalidRequestError) as caught:
        await MockEngine().complete(request(**body))
    assert (400, param) == (caught.value.status_code, caught.value.param)


async def test_zero_delay_is_one_batch() -> None:
    """With no delays the whole stream, usage included, is a single batch."""
    req = request(n=3, stream_options={"include_usage": True})
    result = await batches(MockEngine(), req)
    assert (len(result), result[0][-1]["choices"]) == (1, [])


async def test_delays_are_applied() -> None:
    """ttft_s passes before the first batch, itl_s between token batches (one token each)."""
    engine = MockEngine(ttft_s=0.05, itl_s=0.01)
    req = request(max_tokens=4)
    started = time.monotonic()
    stream = engine.stream(req)
    first = await anext(stream)
    first_at = time.monotonic() - started
    rest = [batch async for batch in stream]
    total = time.monotonic() - started
    assert (first_at >= 0.05, total >= 0.05 + 3 * 0.01) == (True, True)
    assert [len(b) for b in [first, *rest]] == [2, 1, 1, 2]


def test_models() -> None:
    """models() lists every served model as an OpenAI model object."""
    engine = MockEngine(["a", "b"])
    created = engine.models()[0]["created"]
    assert [
        {"id": "a", "object": "model", "created": created, "owned_by": "auditgate"},
        {"id": "b", "object": "model", "created": created, "owned_by": "auditgate"},
    ] == engine.models()


def test_tokenizer_round_trips() -> None:
    """split_tokens concatenates back to the text, and count_tokens counts the same tokens."""
    text = 'Hello, world!  {"a": 1}\n '
    tokens = split_tokens(text)
    assert (
        text,
        ["Hello", ",", " world", "!", "  {", '"', "a", '"', ":", " 1", "}", "\n "],
        12,
    ) == (
        "".join(tokens),
        tokens,
        count_tokens(text),
    )
