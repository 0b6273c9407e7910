"""The mock as clients see it through the real server, with the official SDK: structured
outputs, logprobs, parallel tool calls, the service tier, and 400s for forbidden values."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from auditgate.config import Settings
from auditgate.sinks import build_sinks
from tests.support.server import TestGateway, audit_env, gateway
from tests.support.upstream import upstream_in_thread

MESSAGES: list[Any] = [{"role": "user", "content": "Plan a small trip."}]


class Stop(BaseModel):
    city: str
    nights: int = Field(ge=1, le=14)
    transport: Literal["train", "bus", "plane"]


class Trip(BaseModel):
    """A nested model with a list, bounds and a literal, as a user would pass to parse()."""

    title: str
    stops: list[Stop]
    budget: float | None


@pytest.fixture
def gw(workdir: str) -> Iterator[TestGateway]:
    """A mock gateway with an SQLite store."""
    env = audit_env(DYN_AUDIT_SINKS="sqlite", DYN_AUDIT_SQLITE_PATH=f"{workdir}/store.db")
    with gateway(env, sinks=build_sinks(Settings.from_env(env).audit)) as g:
        yield g


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-test-not-a-secret", max_retries=0)


def test_parse_returns_the_model(gw: TestGateway) -> None:
    """``chat.completions.parse(response_format=Trip)`` gives a Trip, non-stream and streamed,
    and the audit record holds the same JSON text the client parsed."""
    api = client(gw)
    parsed = api.chat.completions.parse(
        model="mock", messages=MESSAGES, response_format=Trip, store=True, seed=4
    )
    with api.chat.completions.stream(
        model="mock", messages=MESSAGES, response_format=Trip, store=True, seed=4
    ) as stream:
        streamed = stream.get_final_completion()
    records = sorted(gw.records(2), key=lambda r: r.requested_streaming)
    texts = [r.response["choices"][0]["message"]["content"] for r in records]  # type: ignore[index]
    message, streamed_message = parsed.choices[0].message, streamed.choices[0].message
    assert (Trip, Trip, message.content, message.parsed) == (
        type(message.parsed),
        type(streamed_message.parsed),
        streamed_message.content,
        streamed_message.parsed,
    )
    assert [message.content, message.content] == texts


def test_logprobs_stream_record_equals_non_stream(gw: TestGateway) -> None:
    """With logprobs, the SDK sees one entry per token, and the record of the stream (merged by
    the aggregator) equals the non-stream response, logprobs included."""
    api = client(gw)
    body: dict[str, Any] = {"model": "mock", "messages": MESSAGES, "store": True, "seed": 1,
                            "logprobs": True, "top_logprobs": 4, "n": 2}  # fmt: skip
    completion = api.chat.completions.create(**body)
    options: Any = {"include_usage": True}  # so the client's stream, too, has the usage
    for _ in api.chat.completions.create(**body, stream=True, stream_options=options):
        pass
    plain, streamed = sorted(gw.records(2), key=lambda r: r.requested_streaming)
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = "".join(entry.token for entry in choice.logprobs.content)
    assert (choice.message.content, [4] * len(choice.logprobs.content)) == (
        tokens,
        [len(entry.top_logprobs) for entry in choice.logprobs.content],
    )

    def comparable(response: Any) -> Any:
        return {k: v for k, v in response.items() if k not in ("id", "created")}

    assert comparable(plain.response) == comparable(streamed.response)


def test_parallel_tool_calls_reach_the_sdk(gw: TestGateway) -> None:
    """Several tools and parallel calls allowed: the SDK's stream accumulator and the
    non-stream response both show several calls with arguments for their own tools."""
    api = client(gw)
    tools: list[Any] = [
        openai.pydantic_function_tool(Stop, name="add_stop"),
        openai.pydantic_function_tool(Trip, name="save_trip"),
    ]
    for seed in range(20):
        completion = api.chat.completions.create(
            model="mock", messages=MESSAGES, tools=tools, seed=seed
        )
        if len(completion.choices[0].message.tool_calls or ()) == 2:
            break
    with api.chat.completions.stream(
        model="mock", messages=MESSAGES, tools=tools, seed=seed
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert (["add_stop", "save_trip"], [Stop, Trip]) == (
        [c.function.name for c in calls],
        [type(c.function.parsed_arguments) for c in calls],  # type: ignore[union-attr]
    )
    single = api.chat.completions.create(
        model="mock", messages=MESSAGES, tools=tools, seed=seed, parallel_tool_calls=False
    )
    assert [c.function.name for c in single.choices[0].message.tool_calls or ()] == ["add_stop"]  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [False, True])
def test_service_tier_the_client_got_is_the_stored_one(gw: TestGateway, stream: bool) -> None:
    """A requested ``auto`` tier is answered as ``default``, and the stored copy says the same."""
    api = client(gw)
    kwargs: dict[str, Any] = {"model": "mock", "messages": MESSAGES, "store": True,
                              "service_tier": "auto"}  # fmt: skip
    if stream:
        chunks = list(api.chat.completions.create(**kwargs, stream=True))
        got, response_id = {c.service_tier for c in chunks}, chunks[0].id
    else:
        completion = api.chat.completions.create(**kwargs)
        got, response_id = {completion.service_tier}, completion.id
    gw.records(1)
    deadline = time.monotonic() + 10
    while not api.chat.completions.list().data:  # the store sink lags the memory sink
        assert time.monotonic() < deadline, "the store did not catch up"
        time.sleep(0.01)
    assert ({"default"}, "default") == (
        got,
        api.chat.completions.retrieve(response_id).service_tier,
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 7}, "top_p"),
        ({"logprobs": True, "top_logprobs": 1e6}, "top_logprobs"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ],
)
def test_forbidden_values_are_400s(body: dict[str, Any], param: str) -> None:
    """What the specification forbids is a 400 naming the parameter, and an error record."""
    with gateway() as g:
        request: dict[str, Any] = {"model": "mock", "messages": MESSAGES, "store": True, **body}
        with pytest.raises(openai.BadRequestError) as caught:
            client(g).chat.completions.create(**request)
        (record,) = g.records(1)
    assert (param, "error", 400) == (
        caught.value.param,
        record.status,
        record.error.status_code if record.error else None,
    )


def test_upstream_gets_what_only_the_mock_refuses() -> None:
    """In front of an upstream the same values are forwarded untouched (the upstream judges)."""
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "wizard", "content": "hi"}, {"role": "user"}],
        "temperature": 5,
        "top_p": 7,
        "top_logprobs": 1e6,
    }
    with upstream_in_thread() as upstream:
        env = audit_env(AUDITGATE_ENGINE="openai", AUDITGATE_UPSTREAM_URL=upstream.base_url)
        with gateway(env) as g:
            completion = client(g).chat.completions.create(**body)
        sent = upstream.received[-1].json()
    assert ("stop", body) == (
        completion.choices[0].finish_reason,
        {k: sent[k] for k in body},
    )


def test_json_object_content_parses() -> None:
    """Under ``json_object`` the SDK receives content that ``json.loads`` reads as an object."""
    with gateway() as g:
        completion = client(g).chat.completions.create(
            model="mock", messages=MESSAGES, response_format={"type": "json_object"}
        )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)
