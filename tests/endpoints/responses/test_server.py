"""The Responses API through the real server and the official SDK, on both stores: create (plain,
streamed, tools), ``previous_response_id`` over three turns, ``store=False``, retrieve, delete,
``input_items`` pagination, tenants — and each record equals what the client received."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from auditgate.audit.record import AuditRecord
from auditgate.auth.keys import add_key
from tests.endpoints.responses.sdk import accumulate, decode_sse, event_model, response_model
from tests.server.test_stored_completions import store_env, store_gateway
from tests.support.server import TestGateway, audit_env, gateway

__all__ = ["store_env"]  # the fixture, imported for this module's tests

WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture
def gw(store_env: dict[str, str]) -> Iterator[TestGateway]:
    with store_gateway(store_env) as g:
        yield g


def client(g: TestGateway, key: str = "sk-test-not-a-secret") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)


def dump(model: Any) -> dict[str, Any]:
    """An SDK model as the JSON the server sent."""
    return json.loads(model.model_dump_json(exclude_unset=True))


def by_id(records: list[AuditRecord]) -> dict[str, AuditRecord]:
    return {r.response["id"]: r for r in records if r.response}  # type: ignore[index]


def test_create_records_what_the_client_received(gw: TestGateway) -> None:
    """A plain create: the SDK parses the object, the record holds the body as sent and that
    object, with ``endpoint: "responses"`` and chat-shaped usage."""
    api = client(gw)
    raw = api.responses.with_raw_response.create(
        model="mock",
        input="What is 10 + 10?",
        instructions="Be brief.",
        metadata={"team": "a"},
        max_output_tokens=200,
    )
    sent = json.loads(raw.http_response.content)
    response = raw.parse()
    [record] = gw.records(1)
    response_model(sent)
    assert sent["id"] == "resp_" + record.request_id == response.id
    assert raw.http_response.headers["x-request-id"] == record.request_id
    assert (record.endpoint, record.status, record.complete, record.mode) == (
        "responses",
        "completed",
        True,
        "full",
    )
    assert record.request == {
        "model": "mock",
        "input": "What is 10 + 10?",
        "instructions": "Be brief.",
        "metadata": {"team": "a"},
        "max_output_tokens": 200,
    }
    assert record.response == sent
    assert (sent["status"], sent["store"], sent["metadata"]) == ("completed", True, {"team": "a"})
    usage = sent["usage"]
    assert record.usage is not None
    assert (record.usage["prompt_tokens"], record.usage["completion_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    assert record.metadata == {"team": "a"}
    assert response.output_text == sent["output"][0]["content"][0]["text"] != ""


def test_stream_events_parse_and_the_record_is_the_final_response(gw: TestGateway) -> None:
    """A stream: every event is one of the SDK's typed models, numbered from 0; the SDK's
    accumulator and ``get_final_response()`` agree with the terminal event and the record."""
    api = client(gw)
    with api.responses.with_streaming_response.create(
        model="mock", input="Tell me a story.", stream=True, reasoning={"effort": "low"}
    ) as raw:
        data = raw.http_response.read()
    decoded = decode_sse(data)
    events = [event for _, event in decoded]
    assert [name for name, _ in decoded] == [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        event_model(event)
    types = [e["type"] for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.reasoning_text.delta" in types and "response.output_text.delta" in types
    assert types[-1] == "response.completed"
    final, built = accumulate(events)
    [record] = gw.records(1)
    assert record.response == events[-1]["response"] == final
    assert record.requested_streaming is True
    assert record.ttft_ms is not None and record.ttft_ms <= record.duration_ms
    message = next(i for i in final["output"] if i["type"] == "message")
    assert built[message["id"]] == message["content"][0]["text"]
    with api.responses.stream(model="mock", input="Again.") as stream:
        for _ in stream:
            pass
        sdk_final = stream.get_final_response()
    second = gw.records(2)[1]
    output = second.response["output"]  # type: ignore[index]
    assert (sdk_final.id, sdk_final.output_text) == (
        second.response["id"],  # type: ignore[index]
        output[0]["content"][0]["text"],
    )


def test_reasoning_summary_when_asked(gw: TestGateway) -> None:
    """``reasoning.summary`` asked: the engine's reasoning streams as the reasoning item's
    summary (``reasoning_summary_*`` events, every one an SDK model), ``content`` empty."""
    api = client(gw)
    with api.responses.with_streaming_response.create(
        model="mock", input="Think.", stream=True, reasoning={"effort": "low", "summary": "auto"}
    ) as raw:
        events = [event for _, event in decode_sse(raw.http_response.read())]
    for event in events:
        event_model(event)
    types = [e["type"] for e in events]
    assert "response.reasoning_text.delta" not in types
    deltas = [e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta"]
    [item] = [i for i in events[-1]["response"]["output"] if i["type"] == "reasoning"]
    assert item["summary"] == [{"type": "summary_text", "text": "".join(deltas)}] != []
    assert item["content"] == [] and deltas != []
    assert types.index("response.reasoning_summary_part.added") < types.index(
        "response.reasoning_summary_part.done"
    )
    [record] = gw.records(1)
    assert record.response == events[-1]["response"]


def test_function_tools_and_their_output(gw: TestGateway) -> None:
    """A required function tool is called with arguments that fit its schema; the call's output
    continues the conversation through ``previous_response_id``."""
    api = client(gw)
    first = api.responses.create(
        model="mock", input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.name, set(json.loads(call.arguments))) == ("weather", {"city"})
    with api.responses.stream(
        model="mock",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
        tool_choice="none",
    ) as stream:
        events = list(stream)
        second = stream.get_final_response()
    assert second.output_text and second.previous_response_id == first.id
    assert events[-1].type == "response.completed"
    records = gw.records(2)
    assert records[1].response["output"][0]["content"][0]["text"] == second.output_text  # type: ignore[index]


def test_three_turns_and_input_items(gw: TestGateway) -> None:
    """Three turns through ``previous_response_id``: the engine is sent the whole conversation;
    ``input_items`` lists it, newest first, in pages, both orders, ``after`` and ``before``."""
    api = client(gw)
    one = api.responses.create(model="mock", input="My name is Ada.", instructions="Terse.")
    two = api.responses.create(model="mock", input="I like tea.", previous_response_id=one.id)
    three = api.responses.create(
        model="mock",
        previous_response_id=two.id,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Who am I?"}]}],
    )
    records = gw.records(3)
    assert [r.request["previous_response_id"] for r in records[1:]] == [one.id, two.id]  # type: ignore[index]
    # The third turn was sent: turn 1 in and out, turn 2 in and out, then its own input.
    assert records[2].usage["prompt_tokens"] > records[1].usage["prompt_tokens"]  # type: ignore[index]
    everything = list(api.responses.input_items.list(three.id, order="asc", limit=2))
    kinds = [(item.type, getattr(item, "role", None)) for item in everything]
    assert kinds == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert everything[1].id == one.output[0].id and everything[3].id == two.output[0].id
    ids = [item.id for item in everything]
    newest = api.responses.input_items.list(three.id, limit=2)
    assert ([i.id for i in newest.data], newest.has_more) == (ids[::-1][:2], True)
    page = api.responses.input_items.with_raw_response.list(three.id, limit=2, order="asc")
    body = json.loads(page.http_response.content)
    assert (body["first_id"], body["last_id"], body["has_more"]) == (ids[0], ids[1], True)
    before = httpx.get(
        f"{gw.base_url}/responses/{three.id}/input_items",
        params={"order": "asc", "before": ids[3]},
    ).json()
    assert [i["id"] for i in before["data"]] == ids[:3]
    assert api.responses.retrieve(three.id).output_text == three.output_text


def test_store_false_is_not_retrievable(gw: TestGateway) -> None:
    """``store=False``: answered and audited (usage only), but a retrieve is a 404, and so is a
    ``previous_response_id`` naming it."""
    api = client(gw)
    response = api.responses.create(model="mock", input="Forget this.", store=False)
    [record] = gw.records(1)
    assert (record.mode, response.store) == ("usage_only", False)  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        api.responses.create(model="mock", input="x", previous_response_id=response.id)
    assert caught.value.body == {  # type: ignore[comparison-overlap]
        "message": f"Previous response with id '{response.id}' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }


def test_retrieve_and_delete(gw: TestGateway) -> None:
    """Retrieve gives the object the client got; delete answers OpenAI's deleted object, after
    which retrieve, delete and ``input_items`` are 404s — also once the store caught up."""
    api = client(gw)
    response = api.responses.create(model="mock", input="Keep me.")
    assert dump(api.responses.retrieve(response.id)) == dump(response)
    deleted = httpx.delete(f"{gw.base_url}/responses/{response.id}")
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    calls = (
        lambda: api.responses.retrieve(response.id),
        lambda: api.responses.delete(response.id),
        lambda: api.responses.input_items.list(response.id),
    )
    for call in calls:  # at once, whether or not the record has reached the store yet
        with pytest.raises(openai.NotFoundError):
            call()
    # The record may have reached the store after the delete: the gateway deletes it there once
    # it arrives.  Then the store alone answers.
    stored = gw.app.gateway.stored_responses
    assert gw.flush()
    deadline = time.monotonic() + 10
    while stored.pending_deletions and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stored.pending_deletions == 0
    stored.recent.ttl_s = 0
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    # Chat's stored completions never list or find a response.
    assert api.chat.completions.list().data == []
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.retrieve(response.id)


def test_tenants_see_only_their_own(store_env: dict[str, str], workdir: str) -> None:
    """A tenant's response is a 404 for another tenant (retrieve, delete, input_items,
    previous_response_id); an admin sees it."""
    path = f"{workdir}/keys.json"
    a = add_key(path, name="a", tenant="a", role="user")
    b = add_key(path, name="b", tenant="b", role="user")
    admin = add_key(path, name="admin", tenant="ops", role="admin")
    with store_gateway(store_env | {"AUDITGATE_API_KEYS_FILE": path}) as g:
        mine = client(g, a).responses.create(model="mock", input="secret of a")
        other = client(g, b)
        for call in (
            lambda: other.responses.retrieve(mine.id),
            lambda: other.responses.delete(mine.id),
            lambda: other.responses.input_items.list(mine.id),
            lambda: other.responses.create(model="mock", input="x", previous_response_id=mine.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert client(g, admin).responses.retrieve(mine.id).id == mine.id
        assert g.records(1)[0].tenant == "a"


def test_bad_requests_are_openai_errors() -> None:
    """Invalid input is a 400 naming the parameter; no store means stored responses are a 400."""
    with gateway(audit_env()) as g:
        api = client(g)
        with pytest.raises(openai.BadRequestError) as caught:
            api.responses.create(model="mock", input=[{"type": "web_search_call"}])
        assert caught.value.body["param"] == "input[0].type"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as missing:
            api.responses.retrieve("resp_nope")
        assert missing.value.code == "store_not_configured"
        with pytest.raises(openai.BadRequestError):
            api.responses.create(model="mock", input="x", previous_response_id="resp_nope")
        assert g.records(0) == []
