"""Which tools the mock calls: one, several in parallel, the named one, the allowed ones."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest

from auditgate.engines.mock import MockEngine
from auditgate.errors import InvalidRequestError
from tests.engines.mock.common import request, streamed


def tool(name: str, **properties: Any) -> dict[str, Any]:
    """A function tool taking ``properties`` (all required)."""
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS = [
    tool("search", query={"type": "string"}),
    tool("add", a={"type": "integer"}, b={"type": "integer"}),
    tool("clock"),
    tool("unused"),
]


async def names(**body: Any) -> list[list[str]]:
    """The names called by each of 40 seeds' answers."""
    engine = MockEngine()
    called = []
    for seed in range(40):
        completion = await engine.complete(request(tools=TOOLS, seed=seed, **body))
        message = completion["choices"][0]["message"]
        called.append([c["function"]["name"] for c in message["tool_calls"]])
    return called


async def test_parallel_calls_take_one_to_three_tools_in_order() -> None:
    """With parallel calls allowed, answers call the first 1, 2 or 3 tools; every count occurs."""
    called = await names()
    counts = collections.Counter(len(c) for c in called)
    assert ({1, 2, 3}, [["search", "add", "clock"][: len(c)] for c in called]) == (
        set(counts),
        called,
    )


async def test_parallel_tool_calls_false_calls_one_tool() -> None:
    """``parallel_tool_calls: false`` makes every answer call the first tool alone."""
    assert await names(parallel_tool_calls=False) == [["search"]] * 40


async def test_allowed_tools_restricts_the_candidates() -> None:
    """``allowed_tools`` limits calls to the tools it lists, in the order of ``tools``."""
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "clock"}},
        {"type": "function", "function": {"name": "add"}}]}}  # fmt: skip
    called = await names(tool_choice=allowed)
    assert {("add",), ("add", "clock")} == {tuple(c) for c in called}


async def test_parallel_calls_have_distinct_ids_and_valid_arguments() -> None:
    """Each call of a parallel answer has its own id and JSON arguments with its properties."""
    engine = MockEngine()
    for seed in range(40):
        completion = await engine.complete(request(tools=TOOLS[:2], seed=seed))
        calls = completion["choices"][0]["message"]["tool_calls"]
        if len(calls) == 2:
            break
    arguments = [json.loads(c["function"]["arguments"]) for c in calls]
    assert (
        len({c["id"] for c in calls}),
        [sorted(a) for a in arguments],
    ) == (2, [["query"], ["a", "b"]])


async def test_parallel_stream_opens_each_call_with_its_header() -> None:
    """A parallel stream opens call 0 in the role chunk and every later call with its header on
    its first fragment."""
    engine = MockEngine()
    req = request(tools=[TOOLS[2], TOOLS[3]], seed=0)
    for seed in range(40):
        req = request(tools=[TOOLS[2], TOOLS[3]], seed=seed)
        if len((await engine.complete(req))["choices"][0]["message"]["tool_calls"]) == 2:
            break
    chunks = await streamed(engine, req)
    ids = [c["id"] for c in (await engine.complete(req))["choices"][0]["message"]["tool_calls"]]
    assert [
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [{"index": 0,
         "id": ids[0], "type": "function", "function": {"name": "clock", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]},
        {"tool_calls": [{"index": 1, "id": ids[1], "type": "function",
                         "function": {"name": "unused", "arguments": "{"}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]},
        {},
    ] == [c["choices"][0]["delta"] for c in chunks]  # fmt: skip


async def test_allowed_tools_naming_no_tool_is_a_400() -> None:
    """``allowed_tools`` that lists none of the function tools is a 400 naming tool_choice."""
    nope = {"type": "function", "function": {"name": "nope"}}
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [nope]}}
    with pytest.raises(InvalidRequestError) as caught:
        await MockEngine().complete(request(tools=TOOLS, tool_choice=allowed))
    assert caught.value.param == "tool_choice"
