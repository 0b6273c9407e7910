"""The openai engine behind the real server: upstream failures and a gateway chained to itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.gateway import free_port
from tests.support.server import TestGateway, audit_env, gateway
from tests.support.upstream import Behaviour, FakeUpstream, upstream_in_thread

MESSAGES = [{"role": "user", "content": "What is 10 + 10?"}]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with upstream_in_thread() as u:
        yield u


def openai_env(url: str, **extra: str) -> dict[str, str]:
    return audit_env(AUDITGATE_ENGINE="openai", AUDITGATE_UPSTREAM_URL=url, **extra)


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-client-secret", max_retries=0)


def test_upstream_500_gives_openai_error_and_error_record(upstream: FakeUpstream) -> None:
    """An upstream 5xx is a 502 for the client and an error record with no response."""
    upstream.behaviour = Behaviour.http_error(500, "engine exploded")
    with gateway(openai_env(upstream.base_url)) as g:
        with pytest.raises(openai.APIStatusError) as caught:
            client(g).chat.completions.create(model="m", messages=MESSAGES, store=True)  # type: ignore[arg-type]
        assert caught.value.status_code == 502
        assert "engine exploded" in caught.value.message
        [record] = g.records(1)
        assert (record.status, record.complete) == ("error", False)
        assert record.error is not None
        assert (record.error.status_code, record.error.type) == (502, "api_error")
        assert "response" not in json.loads(g.sink.lines[0])


def test_upstream_400_is_passed_through(upstream: FakeUpstream) -> None:
    """An upstream 4xx reaches the client with its own status, message and param."""
    upstream.behaviour = Behaviour.http_error(
        400, "temperature too hot", error_type="invalid_request_error", param="temperature"
    )
    with gateway(openai_env(upstream.base_url)) as g:
        with pytest.raises(openai.BadRequestError) as caught:
            client(g).chat.completions.create(model="m", messages=MESSAGES, store=True)  # type: ignore[arg-type]
        assert caught.value.param == "temperature"
        assert caught.value.body == {
            "message": "temperature too hot",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        }
        [record] = g.records(1)
        assert record.error is not None and record.error.status_code == 400


@pytest.mark.parametrize("stream", [False, True])
def test_connection_refused_gives_502_and_error_record(stream: bool) -> None:
    """An upstream nobody listens on is a clear 502 before any output, stream or not."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with gateway(openai_env(dead)) as g:
        with pytest.raises(openai.APIStatusError) as caught:
            result = client(g).chat.completions.create(
                model="m",
                messages=MESSAGES,  # type: ignore[arg-type]
                store=True,
                stream=stream,
            )
            list(result) if stream else None  # type: ignore[call-overload]
        assert caught.value.status_code == 502
        assert "unreachable" in caught.value.message
        [record] = g.records(1)
        assert (record.status, record.requested_streaming) == ("error", stream)


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour.drop(after=3, chunks=6), Behaviour.stream_error(after=3, chunks=6)],
    ids=["connection-dropped", "in-stream-error"],
)
def test_mid_stream_failure_gives_error_event_and_partial_record(
    upstream: FakeUpstream, behaviour: Behaviour
) -> None:
    """A stream that breaks mid-way ends with an error event; the record keeps what was sent."""
    upstream.behaviour = behaviour
    with gateway(openai_env(upstream.base_url)) as g:
        received: list[Any] = []
        stream = client(g).chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            store=True,
            stream=True,
        )
        with pytest.raises(openai.APIError):
            for chunk in stream:
                received.append(chunk)
        [record] = g.records(1)
        assert (record.status, record.complete) == ("error", False)
        assert record.response is not None
        content = record.response["choices"][0]["message"].get("content") or ""
        seen = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
        assert (content, len(received) > 0) == (seen, True)


def test_client_key_is_not_forwarded_and_upstream_key_is(upstream: FakeUpstream) -> None:
    """The configured upstream key goes upstream; the client's key never does."""
    env = openai_env(upstream.base_url, AUDITGATE_UPSTREAM_API_KEY="sk-upstream-key")
    with gateway(env) as g:
        client(g).chat.completions.create(model="m", messages=MESSAGES, store=True)  # type: ignore[arg-type]
        [request] = [r for r in upstream.received if r.path.endswith("/chat/completions")]
        assert request.headers.get("authorization") == "Bearer sk-upstream-key"
        assert b"sk-client-secret" not in b"".join(g.sink.lines)
        assert "sk-upstream-key" not in g.app.gateway.engine.__repr__()


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_chained_to_itself_gives_the_same_records(stream: bool) -> None:
    """auditgate(openai) -> auditgate(mock) records the same answer as the mock gateway itself."""
    with (
        gateway() as inner,
        gateway(openai_env(inner.base_url)) as outer,
    ):
        sent = {"model": "mock", "messages": MESSAGES, "store": True, "seed": 3, "n": 2}
        c = client(outer)
        if stream:
            list(c.chat.completions.create(**sent, stream=True))  # type: ignore[call-overload]
        else:
            c.chat.completions.create(**sent)  # type: ignore[call-overload]
        [front] = outer.records(1)
        [back] = inner.records(1)
        assert front.response is not None and back.response is not None
        assert front.engine_response_id == back.response["id"]
        # The outer gateway asked the inner one for usage and stripped it from its own client's
        # stream (which did not ask), so only the inner stream's aggregate carries it.
        expected = {**back.response, "usage": None} if stream else back.response
        assert {**front.response, "id": back.response["id"]} == expected
        assert front.usage == back.usage
        assert front.request == {**sent, **({"stream": True} if stream else {})}
        assert (front.engine, back.engine) == ("openai", "mock")
        assert (front.status, front.complete) == (back.status, back.complete) == ("completed", True)
