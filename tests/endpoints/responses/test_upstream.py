"""The Responses API in front of an upstream: translated to chat completions by default, relayed
to the upstream's own ``/v1/responses`` with ``AUDITGATE_RESPONSES=passthrough`` — through the
real server, the official SDK as the client, a fake upstream as the backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.endpoints.responses.sdk import decode_sse, event_model, response_model
from tests.server.test_stored_completions import store_gateway
from tests.support import upstream_responses
from tests.support.server import TestGateway, audit_env
from tests.support.upstream import Behaviour, FakeUpstream, upstream_in_thread


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with upstream_in_thread() as fake:
        yield fake


def env(upstream: FakeUpstream, workdir: str, mode: str) -> dict[str, str]:
    return audit_env(
        AUDITGATE_ENGINE="openai",
        AUDITGATE_UPSTREAM_URL=upstream.base_url,
        AUDITGATE_RESPONSES=mode,
        DYN_AUDIT_SINKS="sqlite",
        DYN_AUDIT_SQLITE_PATH=f"{workdir}/store.db",
    )


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-client", max_retries=0)


def posted(upstream: FakeUpstream) -> list[tuple[str, Any]]:
    return [(r.path, r.json()) for r in upstream.received if r.method == "POST"]


def test_translate_sends_chat_completions(upstream: FakeUpstream, workdir: str) -> None:
    """By default the upstream gets a chat completion: instructions as the system message, the
    conversation of ``previous_response_id`` before the input."""
    with store_gateway(env(upstream, workdir, "translate")) as g:
        api = client(g)
        first = api.responses.create(model="fake-model", input="Hi.", instructions="Terse.")
        with api.responses.stream(
            model="fake-model", input="Again.", previous_response_id=first.id
        ) as stream:
            list(stream)
            second = stream.get_final_response()
        records = g.records(2)
    (path1, body1), (path2, body2) = posted(upstream)
    assert (path1, path2) == ("/v1/chat/completions", "/v1/chat/completions")
    assert body1["messages"] == [
        {"role": "system", "content": "Terse."},
        {"role": "user", "content": "Hi."},
    ]
    assert body2["messages"] == [
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "tok0 tok1 tok2 tok3 "},
        {"role": "user", "content": "Again."},
    ]
    assert (first.output_text, second.output_text) == ("tok0 tok1 tok2 tok3 ",) * 2
    assert [r.engine_response_id for r in records] == ["chatcmpl-fake"] * 2
    assert records[1].response["id"] == second.id  # type: ignore[index]


def test_passthrough_relays_the_upstream_response(upstream: FakeUpstream, workdir: str) -> None:
    """Passthrough, not streamed: the upstream's object with the gateway's id; the upstream is
    asked not to store; the record has the upstream's id and usage in chat terms."""
    with store_gateway(env(upstream, workdir, "passthrough")) as g:
        api = client(g)
        raw = api.responses.with_raw_response.create(
            model="fake-model", input="Hello you.", metadata={"k": "v"}
        )
        sent = json.loads(raw.http_response.content)
        [record] = g.records(1)
        assert api.responses.retrieve(sent["id"]).output_text == "tok0 tok1 tok2 tok3 "
    [(path, body)] = posted(upstream)
    assert (path, body) == (
        "/v1/responses",
        {"model": "fake-model", "input": "Hello you.", "metadata": {"k": "v"}, "store": False},
    )
    response_model(sent)
    expected = upstream_responses.response(body) | {
        "id": "resp_" + record.request_id,
        "previous_response_id": None,
        "store": True,
    }
    assert sent == expected == record.response
    assert (record.engine_response_id, record.endpoint, record.usage) == (
        "resp_fake",
        "responses",
        {
            "prompt_tokens": 2,
            "completion_tokens": 4,
            "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    )


def test_passthrough_stream_and_conversation(upstream: FakeUpstream, workdir: str) -> None:
    """Passthrough, streamed: the upstream's events in order with the gateway's ids (every one
    an SDK model), the record the terminal event's response; a ``previous_response_id`` is
    resolved by the gateway and sent as input items."""
    with store_gateway(env(upstream, workdir, "passthrough")) as g:
        api = client(g)
        first = api.responses.create(model="fake-model", input="One.")
        with api.responses.with_streaming_response.create(
            model="fake-model", input="Two.", previous_response_id=first.id, stream=True
        ) as raw:
            events = [event for _, event in decode_sse(raw.http_response.read())]
        records = g.records(2)
    for event in events:
        event_model(event)
    (_, _), (_, body) = posted(upstream)
    assert "previous_response_id" not in body
    assert [(i["type"], i.get("role")) for i in body["input"]] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert [e["type"] for e in events] == [e["type"] for e in upstream_responses.events(body)]
    own = "resp_" + records[1].request_id
    assert {e["response"]["id"] for e in events if "response" in e} == {own}
    assert events[-1]["response"] == records[1].response
    assert records[1].response["previous_response_id"] == first.id  # type: ignore[index]
    assert (records[1].status, records[1].requested_streaming) == ("completed", True)


def test_passthrough_stream_error_fails_the_response(upstream: FakeUpstream, workdir: str) -> None:
    """An upstream ``error`` event mid-stream: the client gets ``response.failed`` (numbered
    after the last event), the record is an error with the partial output."""
    with store_gateway(env(upstream, workdir, "passthrough")) as g:
        upstream.behaviour = Behaviour(kind="stream_error", after=6)
        api = client(g)
        with api.responses.with_streaming_response.create(
            model="fake-model", input="Fail.", stream=True
        ) as raw:
            events = [event for _, event in decode_sse(raw.http_response.read())]
        [record] = g.records(1)
    for event in events:
        event_model(event)
    assert [e["sequence_number"] for e in events] == list(range(7))
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["output"][0]["content"][0]["text"] == "tok0 tok1 "
    assert (record.status, record.response) == ("error", failed["response"])
    assert record.error.message.endswith("engine fell over")  # type: ignore[union-attr]


def test_translate_engine_failure_mid_stream(upstream: FakeUpstream, workdir: str) -> None:
    """An upstream error after some chat chunks: the client's stream ends with
    ``response.failed`` holding the text so far; the record is an error with that response."""
    with store_gateway(env(upstream, workdir, "translate")) as g:
        upstream.behaviour = Behaviour.stream_error(after=3, message="engine fell over")
        api = client(g)
        with api.responses.with_streaming_response.create(
            model="fake-model", input="Fail.", stream=True
        ) as raw:
            events = [event for _, event in decode_sse(raw.http_response.read())]
        [record] = g.records(1)
    for event in events:
        event_model(event)
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"]["code"] == "server_error"
    assert failed["response"]["output"][0]["content"][0]["text"] == "tok0 tok1 "
    assert (record.status, record.response) == ("error", failed["response"])
    assert record.error.message.endswith("engine fell over")  # type: ignore[union-attr]


def test_upstream_errors_are_openai_errors(upstream: FakeUpstream, workdir: str) -> None:
    """Before any output: an upstream 4xx is relayed with its status and fields (both modes);
    a connection cut mid-stream in passthrough ends the stream with ``response.failed``."""
    for mode in ("translate", "passthrough"):
        Path(workdir, mode).mkdir()
        with store_gateway(env(upstream, f"{workdir}/{mode}", mode)) as g:
            upstream.behaviour = Behaviour.http_error(
                422,
                "bad max_output_tokens",
                error_type="invalid_request_error",
                param="max_output_tokens",
                code="bad",
            )
            with pytest.raises(openai.UnprocessableEntityError) as caught:
                client(g).responses.create(model="fake-model", input="x")
            assert caught.value.body == {  # type: ignore[comparison-overlap]
                "message": "bad max_output_tokens",
                "type": "invalid_request_error",
                "param": "max_output_tokens",
                "code": "bad",
            }
            upstream.behaviour = Behaviour.normal()
    Path(workdir, "cut").mkdir()
    with store_gateway(env(upstream, f"{workdir}/cut", "passthrough")) as g:
        upstream.behaviour = Behaviour.drop(after=5)
        with client(g).responses.with_streaming_response.create(
            model="fake-model", input="Cut.", stream=True
        ) as raw:
            events = [event for _, event in decode_sse(raw.http_response.read())]
        [record] = g.records(1)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.failed"
    assert (record.status, record.response["status"]) == ("error", "failed")  # type: ignore[index]
