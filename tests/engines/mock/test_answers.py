"""What the mock's answer holds: logprobs, JSON under response_format, refusal, service tier."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import pytest

from auditgate.engines.mock import MockEngine, split_tokens
from auditgate.errors import InvalidRequestError
from tests.engines.mock.common import request, streamed

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "age", "email"],
    "additionalProperties": False,
}


def person_format(strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                   "strict": strict}}  # fmt: skip


async def test_logprobs_describe_every_content_token() -> None:
    """Each content token has an entry with its text, bytes and top_logprobs (the token among
    them, most likely first, probabilities summing below one); the text is unchanged."""
    engine = MockEngine()
    plain = await engine.complete(request(seed=2))
    scored = await engine.complete(request(seed=2, logprobs=True, top_logprobs=5))
    content = scored["choices"][0]["message"]["content"]
    entries = scored["choices"][0]["logprobs"]["content"]
    shapes = [
        (
            e["token"],
            e["bytes"] == list(e["token"].encode()),
            len(e["top_logprobs"]),
            e["token"] in [t["token"] for t in e["top_logprobs"]],
            [t["logprob"] for t in e["top_logprobs"]]
            == sorted((t["logprob"] for t in e["top_logprobs"]), reverse=True),
            sum(math.exp(t["logprob"]) for t in e["top_logprobs"]) < 1,
            e["logprob"] < 0,
        )
        for e in entries
    ]
    assert (plain["choices"][0]["message"]["content"], None) == (
        content,
        scored["choices"][0]["logprobs"]["refusal"],
    )
    assert [(t, True, 5, True, True, True, True) for t in split_tokens(content)] == shapes


async def test_logprobs_without_top_logprobs_and_stream_entries() -> None:
    """Without top_logprobs each entry's list is empty; a stream carries one entry per content
    chunk and an empty list on the role chunk."""
    engine = MockEngine()
    req = request(logprobs=True, max_tokens=3)
    completion = await engine.complete(req)
    chunks = await streamed(engine, req)
    expected = completion["choices"][0]["logprobs"]["content"]
    assert [e["top_logprobs"] for e in expected] == [[], []] * 0 + [[]] * 3
    assert [
        {"content": [], "refusal": None},
        *({"content": [e], "refusal": None} for e in expected),
        None,
    ] == [c["choices"][0]["logprobs"] for c in chunks]


@pytest.mark.parametrize("strict", [True, False])
async def test_json_schema_content_fits_the_schema(strict: bool) -> None:
    """Under a json_schema response_format the content is JSON valid against the schema."""
    engine = MockEngine()
    contents = [
        (await engine.complete(request(seed=s, response_format=person_format(strict))))["choices"][
            0
        ]["message"]["content"]
        for s in range(10)
    ]
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    errors = [
        e.message
        for c in contents
        for e in jsonschema.Draft202012Validator(PERSON, format_checker=checker).iter_errors(
            json.loads(c)
        )
    ]
    assert (errors, len(set(contents))) == ([], 10)


async def test_json_object_content_is_an_object() -> None:
    """Under json_object the content is a JSON object with an answer and a confidence."""
    completion = await MockEngine().complete(request(response_format={"type": "json_object"}))
    value = json.loads(completion["choices"][0]["message"]["content"])
    assert (["answer", "confidence"], str, True) == (
        list(value),
        type(value["answer"]),
        0.5 <= value["confidence"] <= 0.99,
    )


async def test_json_cut_by_max_tokens_says_length() -> None:
    """A token limit cuts the JSON text like any content, with finish_reason length."""
    engine = MockEngine()
    full = (await engine.complete(request(response_format=person_format())))["choices"][0]
    cut = (await engine.complete(request(response_format=person_format(), max_tokens=4)))[
        "choices"
    ][0]
    assert ("".join(split_tokens(full["message"]["content"])[:4]), "length") == (
        cut["message"]["content"],
        cut["finish_reason"],
    )


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "a b"}},
         "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "integer", "minimum": 3, "maximum": 1}}}, "response_format"),
    ],
)  # fmt: skip
async def test_bad_response_format_is_a_400(response_format: Any, param: str) -> None:
    """A malformed or unsatisfiable response_format is a 400 naming the parameter."""
    with pytest.raises(InvalidRequestError) as caught:
        await MockEngine().complete(request(response_format=response_format))
    assert param == caught.value.param


async def test_message_has_a_null_refusal() -> None:
    """Every message has ``refusal: null``, text or tool call, as the specification requires."""
    engine = MockEngine()
    clock = {"type": "function", "function": {"name": "clock"}}
    text = await engine.complete(request())
    call = await engine.complete(request(tools=[clock]))
    assert [
        text["choices"][0]["message"]["refusal"],
        call["choices"][0]["message"]["refusal"],
    ] == [None, None]


@pytest.mark.parametrize(
    ("asked", "served"), [("auto", "default"), ("fast", "priority"), ("flex", "flex"), (None, None)]
)
async def test_service_tier_is_reported(asked: str | None, served: str | None) -> None:
    """The served tier is in the completion and in every chunk (absent when none was asked)."""
    engine = MockEngine()
    req = request(service_tier=asked) if asked else request()
    completion = await engine.complete(req)
    chunks = await streamed(engine, req)
    assert [served] * (len(chunks) + 1) == [c.get("service_tier") for c in [completion, *chunks]]
