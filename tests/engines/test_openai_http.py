"""The openai engine against the fake upstream: relaying, routing, credentials, errors, aborts."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from auditgate.config import Secret
from auditgate.engines.base import Engine, EngineRequest
from auditgate.engines.openai_http import OpenAIEngine, UpstreamRejection
from auditgate.errors import APIError, ConfigError, NotFoundError
from tests.support.gateway import free_port
from tests.support.upstream import (
    Behaviour,
    FakeUpstream,
    completion,
    stream_chunks,
    upstream_in_thread,
)

KEY = "sk-upstream-0123456789abcdef"
CLIENT_AUTH = "Bearer sk-client-fedcba9876543210"
BODY: dict[str, Any] = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "hi there"}],
}
STREAM_BODY: dict[str, Any] = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


def request(body: dict[str, Any], authorization: str | None = CLIENT_AUTH) -> EngineRequest:
    return EngineRequest(body, "req-1", "chatcmpl-req-1", authorization=authorization)


def error_of(exc: APIError) -> dict[str, object]:
    """Everything a client and a record see of an error."""
    return {"status_code": exc.status_code, **exc.to_dict()}


def upstream_error(message: str, code: str, status: int = 502) -> dict[str, object]:
    error = {"message": message, "type": "api_error", "param": None, "code": code}
    return {"status_code": status, "error": error}


async def collect(engine: OpenAIEngine, req: EngineRequest) -> list[list[dict[str, Any]]]:
    return [batch async for batch in engine.stream(req)]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def engine(upstream: FakeUpstream) -> AsyncIterator[OpenAIEngine]:
    engine = OpenAIEngine(upstream.base_url, api_key=Secret(KEY), timeout_s=5.0)
    await engine.start()
    yield engine
    await engine.close()


def label(upstream: FakeUpstream) -> str:
    return f"127.0.0.1:{upstream.port}"


async def test_satisfies_the_engine_protocol(engine: OpenAIEngine) -> None:
    """The engine is usable wherever an Engine is expected, under the name ``openai``."""
    as_engine: Engine = engine
    assert as_engine.name == "openai"


async def test_complete_returns_the_upstream_completion(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """A non-stream request returns the upstream's chat.completion as a dict."""
    assert completion(BODY) == await engine.complete(request(BODY))
    assert upstream.received[-1].json() == BODY


async def test_configured_key_and_request_id_go_upstream(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """The configured key is sent as Bearer, the client's own key is not, and the id correlates."""
    await engine.complete(request(BODY))
    headers = upstream.received[-1].headers
    sent = {k: headers.get(k) for k in ("authorization", "x-request-id", "content-type")}
    assert {
        "authorization": f"Bearer {KEY}",
        "x-request-id": "req-1",
        "content-type": "application/json",
    } == sent


async def test_passthrough_forwards_the_client_key(upstream: FakeUpstream) -> None:
    """With passthrough the client's Authorization goes upstream; without one, none is sent."""
    engine = OpenAIEngine(upstream.base_url, api_key=Secret(KEY), key_passthrough=True)
    await engine.start()
    try:
        await engine.complete(request(BODY))
        await engine.complete(request(BODY, authorization=None))
    finally:
        await engine.close()
    sent = [r.headers.get("authorization") for r in upstream.received if r.method == "POST"]
    assert sent == [CLIENT_AUTH, None]


async def test_no_key_means_no_authorization(upstream: FakeUpstream) -> None:
    """Without a configured key and without passthrough, no credentials go upstream."""
    engine = OpenAIEngine(upstream.base_url)
    await engine.start()
    try:
        await engine.complete(request(BODY))
    finally:
        await engine.close()
    assert None is upstream.received[-1].headers.get("authorization")


async def test_passthrough_of_a_header_with_control_characters_is_400(
    upstream: FakeUpstream,
) -> None:
    """A client Authorization that cannot be sent as a header is the client's error, not a crash."""
    engine = OpenAIEngine(upstream.base_url, key_passthrough=True)
    await engine.start()
    try:
        with pytest.raises(APIError) as caught:
            await engine.complete(request(BODY, authorization="Bearer a\r\nX-Evil: 1"))
    finally:
        await engine.close()
    assert error_of(caught.value) == {
        "status_code": 400,
        "error": {
            "message": "the Authorization header cannot be forwarded upstream",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_header",
        },
    }
    assert [r for r in upstream.received if r.method == "POST"] == []


async def test_key_never_in_repr(engine: OpenAIEngine, upstream: FakeUpstream) -> None:
    """The engine's repr names the upstream, never the key."""
    assert f"OpenAIEngine(default={label(upstream)!r}, routes=0)" == repr(engine)


async def test_stream_yields_all_chunks_in_one_batch_per_read(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """A stream written in one go arrives as one batch holding every chunk, usage included."""
    upstream.behaviour = Behaviour.normal(16)
    assert [stream_chunks(STREAM_BODY, 16)] == await collect(engine, request(STREAM_BODY))
    assert upstream.received[-1].headers["accept"] == "text/event-stream"


async def test_paced_stream_yields_a_batch_per_event(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """Events written apart in time arrive as separate batches, in order."""
    upstream.behaviour = Behaviour.normal(3, chunk_delay_s=0.03)
    batches = await collect(engine, request(STREAM_BODY))
    assert stream_chunks(STREAM_BODY, 3) == [chunk for batch in batches for chunk in batch]
    assert len(batches) > 1


async def test_connection_is_reused(engine: OpenAIEngine, upstream: FakeUpstream) -> None:
    """Sequential requests, streamed or not, share one pooled keep-alive connection."""
    for _ in range(3):
        await engine.complete(request(BODY))
        await collect(engine, request(STREAM_BODY))
    assert upstream.open_connections == 1


async def test_stream_ends_at_done_without_waiting_for_the_body_end(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """The stream ends at [DONE] even if the body's end comes much later; close() cleans up."""
    upstream.behaviour = Behaviour.normal(2, done_delay_s=30)
    batches = await asyncio.wait_for(collect(engine, request(STREAM_BODY)), 10)
    assert stream_chunks(STREAM_BODY, 2) == [chunk for batch in batches for chunk in batch]
    await engine.close()
    await upstream.wait_connections_closed()
    assert upstream.aborted == 1


async def test_connection_is_reused_after_a_late_body_end(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """A body that ends shortly after [DONE] is read off the hot path, keeping the connection."""
    upstream.behaviour = Behaviour.normal(2, done_delay_s=0.05)
    await collect(engine, request(STREAM_BODY))
    await asyncio.sleep(0.5)  # ten times the delay: the background read has finished
    await collect(engine, request(STREAM_BODY))
    assert {
        "accepted": upstream.accepted,
        "aborted": upstream.aborted,
    } == {"accepted": 1, "aborted": 0}


async def test_routes_pick_the_upstream_by_model(upstream: FakeUpstream) -> None:
    """A routed model goes to its upstream; any other model goes to the default one."""
    async with FakeUpstream() as other:
        engine = OpenAIEngine(upstream.base_url, routes=[("special", other.base_url)])
        await engine.start()
        try:
            await engine.complete(request({**BODY, "model": "special"}))
            await engine.complete(request({**BODY, "model": "anything"}))
        finally:
            await engine.close()
        models_sent = {
            "default": [r.json()["model"] for r in upstream.received if r.method == "POST"],
            "other": [r.json()["model"] for r in other.received if r.method == "POST"],
        }
    assert models_sent == {"default": ["anything"], "other": ["special"]}


async def test_unknown_model_without_default_is_404(upstream: FakeUpstream) -> None:
    """With only a routing table, a model it does not name is model_not_found."""
    engine = OpenAIEngine(None, routes=[("special", upstream.base_url)])
    await engine.start()
    try:
        with pytest.raises(NotFoundError) as caught:
            await engine.complete(request({**BODY, "model": "other"}))
    finally:
        await engine.close()
    assert error_of(caught.value) == {
        "status_code": 404,
        "error": {
            "message": "The model 'other' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        },
    }


async def test_models_lists_routes_then_upstream_models(upstream: FakeUpstream) -> None:
    """models() lists the routed models, then the default upstream's, each once."""
    upstream.models = ("fake-model", "special")
    engine = OpenAIEngine(upstream.base_url, routes=[("special", upstream.base_url)])
    await engine.start()
    await engine.close()
    models = engine.models()
    created = models[0]["created"]
    assert [
        {"id": "special", "object": "model", "created": created, "owned_by": "auditgate"},
        {"id": "fake-model", "object": "model", "created": 1_700_000_000, "owned_by": "fake"},
    ] == models


async def test_models_fall_back_to_routes_when_the_listing_fails(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """If the default upstream cannot list models at start, models() lists the routes, and warns."""
    upstream.behaviour = Behaviour.http_error(500)
    engine = OpenAIEngine(upstream.base_url, routes=[("special", upstream.base_url)])
    await engine.start()
    await engine.close()
    assert [m["id"] for m in engine.models()] == ["special"]
    assert [
        f"could not list the models of upstream {label(upstream)} (ValueError: HTTP 500); "
        "GET /v1/models lists only the routed models"
    ] == [r.getMessage() for r in caplog.records if r.name == "auditgate.engines.openai_http"]


@pytest.mark.parametrize("streaming", [False, True])
async def test_upstream_400_is_relayed(
    engine: OpenAIEngine, upstream: FakeUpstream, streaming: bool
) -> None:
    """A 4xx with an OpenAI error body reaches the client with its own status and fields."""
    upstream.behaviour = Behaviour.http_error(
        400, "max_tokens is too large", error_type="invalid_request_error", param="max_tokens"
    )
    with pytest.raises(UpstreamRejection) as caught:
        if streaming:
            await collect(engine, request(STREAM_BODY))
        else:
            await engine.complete(request(BODY))
    assert error_of(caught.value) == {
        "status_code": 400,
        "error": {
            "message": "max_tokens is too large",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": None,
        },
    }


async def test_vllm_flat_error_is_relayed(engine: OpenAIEngine, upstream: FakeUpstream) -> None:
    """vLLM's flat ``{"object": "error", ...}`` body with a numeric code is understood."""
    flat = {
        "object": "error",
        "message": "model is not loaded",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    upstream.behaviour = Behaviour.http_error(404, body=msgspec.json.encode(flat))
    with pytest.raises(UpstreamRejection) as caught:
        await engine.complete(request(BODY))
    assert error_of(caught.value) == {
        "status_code": 404,
        "error": {
            "message": "model is not loaded",
            "type": "NotFoundError",
            "param": None,
            "code": "404",
        },
    }


@pytest.mark.parametrize("streaming", [False, True])
async def test_upstream_500_is_502(
    engine: OpenAIEngine, upstream: FakeUpstream, streaming: bool
) -> None:
    """An upstream 5xx becomes 502, naming the upstream status and its message."""
    upstream.behaviour = Behaviour.http_error(503, "overloaded")
    with pytest.raises(APIError) as caught:
        if streaming:
            await collect(engine, request(STREAM_BODY))
        else:
            await engine.complete(request(BODY))
    assert upstream_error(
        f"upstream {label(upstream)} returned HTTP 503: overloaded", "upstream_error"
    ) == error_of(caught.value)


async def test_4xx_without_error_body_is_502(engine: OpenAIEngine, upstream: FakeUpstream) -> None:
    """A 4xx that is not an OpenAI error (a wrong base URL's HTML page) is a gateway problem."""
    upstream.behaviour = Behaviour.http_error(404, body=b"<html>404 page not found</html>")
    with pytest.raises(APIError) as caught:
        await engine.complete(request(BODY))
    assert upstream_error(
        f"upstream {label(upstream)} returned HTTP 404", "upstream_error"
    ) == error_of(caught.value)


async def test_upstream_message_is_scrubbed_of_the_key(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """An upstream that echoes the key in its error does not get it to the client."""
    upstream.behaviour = Behaviour.http_error(401, f"Incorrect API key provided: {KEY}")
    with pytest.raises(UpstreamRejection) as caught:
        await engine.complete(request(BODY))
    assert caught.value.message == "Incorrect API key provided: <redacted>"


@pytest.mark.parametrize("streaming", [False, True])
async def test_refused_connection_is_unreachable(streaming: bool) -> None:
    """Nothing listening on the port: 502 upstream_unreachable naming host and reason."""
    port = free_port()
    engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", api_key=Secret(KEY))
    await engine.start()
    try:
        with pytest.raises(APIError) as caught:
            if streaming:
                await collect(engine, request(STREAM_BODY))
            else:
                await engine.complete(request(BODY))
    finally:
        await engine.close()
    assert upstream_error(
        f"upstream unreachable: 127.0.0.1:{port}: Connection refused", "upstream_unreachable"
    ) == error_of(caught.value)


async def test_reset_is_retried_once_then_unreachable(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """A connection closed without an answer is retried once, then reported unreachable."""
    upstream.behaviour = Behaviour.reset()
    with pytest.raises(APIError) as caught:
        await engine.complete(request(BODY))
    assert upstream_error(
        f"upstream unreachable: {label(upstream)}: connection closed before a response",
        "upstream_unreachable",
    ) == error_of(caught.value)
    assert len([r for r in upstream.received if r.method == "POST"]) == 2


@pytest.mark.parametrize(
    ("behaviour", "streaming"),
    [
        (Behaviour.slow(30), False),
        (Behaviour.slow(30), True),
        (Behaviour.normal(50, chunk_delay_s=0.05), True),
    ],
    ids=["complete", "stream-head", "stream-body"],
)
async def test_timeout_is_504(
    upstream: FakeUpstream, behaviour: Behaviour, streaming: bool
) -> None:
    """An upstream slower than the total timeout, before or during the body, is 504."""
    upstream.behaviour = behaviour
    engine = OpenAIEngine(upstream.base_url, timeout_s=0.3, connect_timeout_s=1)
    await engine.start()
    try:
        with pytest.raises(APIError) as caught:
            if streaming:
                await collect(engine, request(STREAM_BODY))
            else:
                await engine.complete(request(BODY))
        await upstream.wait_connections_closed()
    finally:
        await engine.close()
    assert upstream_error(
        f"upstream {label(upstream)} timed out (limit 0.3s, connect 1s)", "upstream_timeout", 504
    ) == error_of(caught.value)


async def test_stream_dropped_mid_way_is_incomplete(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """A connection closed before [DONE] fails the stream after the chunks that did arrive."""
    upstream.behaviour = Behaviour.drop(after=3)
    received: list[dict[str, Any]] = []
    with pytest.raises(APIError) as caught:
        async for batch in engine.stream(request(STREAM_BODY)):
            received += batch
    assert stream_chunks(STREAM_BODY)[: len(received)] == received
    assert upstream_error(
        f"upstream {label(upstream)} connection lost mid-response (ClientPayloadError)",
        "upstream_incomplete",
    ) == error_of(caught.value)


async def test_complete_dropped_mid_body_is_incomplete(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """A JSON body cut short by a closed connection is 502 upstream_incomplete."""
    upstream.behaviour = Behaviour.drop()
    with pytest.raises(APIError) as caught:
        await engine.complete(request(BODY))
    assert upstream_error(
        f"upstream {label(upstream)} connection lost mid-response (ClientPayloadError)",
        "upstream_incomplete",
    ) == error_of(caught.value)


async def test_stream_without_done_is_incomplete(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """A body that ends cleanly but never sent [DONE] is incomplete, after its chunks."""
    upstream.behaviour = Behaviour.garbage(b'data: {"choices":[]}\n\n')
    received: list[list[dict[str, Any]]] = []
    with pytest.raises(APIError) as caught:
        async for batch in engine.stream(request(STREAM_BODY)):
            received.append(batch)
    assert received == [[{"choices": []}]]
    assert upstream_error(
        f"upstream {label(upstream)} ended the stream before [DONE]", "upstream_incomplete"
    ) == error_of(caught.value)


async def test_in_stream_error_event_fails_after_earlier_chunks(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """An ``{"error": ...}`` event raises its message, after the chunks before it were yielded."""
    upstream.behaviour = Behaviour.stream_error(after=2, message="CUDA out of memory")
    received: list[list[dict[str, Any]]] = []
    with pytest.raises(APIError) as caught:
        async for batch in engine.stream(request(STREAM_BODY)):
            received.append(batch)
    assert [stream_chunks(STREAM_BODY)[:2]] == received
    assert upstream_error("CUDA out of memory", "upstream_error") == error_of(caught.value)


@pytest.mark.parametrize(
    ("garbage", "what"),
    [
        (b"data: {not json\n\n", "an event that is not a JSON object"),
        (b'data: {"choices": "\xff\xfe"}\n\n', "an event that is not a JSON object"),
        (b"data: [1, 2]\n\n", "an event that is not a JSON object"),
        (
            b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n",
            "an event that is not a JSON object",
        ),
        (b'data: {"object": "something else"}\n\n', "an event that is not a chat.completion.chunk"),
        (
            b"event: \xff\ndata: {}\n\n",
            "a malformed event stream (event stream event type is not valid UTF-8)",
        ),
    ],
    ids=["bad-json", "bad-utf8", "not-object", "too-deep", "not-chunk", "bad-event-type"],
)
async def test_garbage_stream_is_invalid_response(
    engine: OpenAIEngine, upstream: FakeUpstream, garbage: bytes, what: str
) -> None:
    """Undecodable or unexpected stream content is 502 upstream_invalid_response, never a crash."""
    upstream.behaviour = Behaviour.garbage(garbage)
    with pytest.raises(APIError) as caught:
        await collect(engine, request(STREAM_BODY))
    assert upstream_error(
        f"upstream {label(upstream)} sent {what}", "upstream_invalid_response"
    ) == error_of(caught.value)


@pytest.mark.parametrize(
    "garbage",
    [
        b"<html>oops</html>",
        b'{"a": "\xff"}',
        b"[]",
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
async def test_garbage_completion_is_invalid_response(
    engine: OpenAIEngine, upstream: FakeUpstream, garbage: bytes
) -> None:
    """A 200 whose body is not a JSON object is 502 upstream_invalid_response."""
    upstream.behaviour = Behaviour.garbage(garbage)
    with pytest.raises(APIError) as caught:
        await engine.complete(request(BODY))
    assert upstream_error(
        f"upstream {label(upstream)} sent a response that is not a JSON object",
        "upstream_invalid_response",
    ) == error_of(caught.value)


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (b'{"error": {"message": "streaming is off"}}', "streaming is off", "upstream_error"),
        (
            msgspec.json.encode(completion(BODY)),
            "upstream {label} sent JSON instead of an event stream",
            "upstream_invalid_response",
        ),
    ],
    ids=["error", "completion"],
)
async def test_json_answer_to_a_stream_request_is_502(
    engine: OpenAIEngine, upstream: FakeUpstream, body: bytes, message: str, code: str
) -> None:
    """A 200 JSON answer where a stream was asked fails with its error, or as invalid."""
    upstream.behaviour = Behaviour.garbage(body, content_type="application/json")
    with pytest.raises(APIError) as caught:
        await collect(engine, request(STREAM_BODY))
    assert upstream_error(message.format(label=label(upstream)), code) == error_of(caught.value)


async def test_completion_with_error_body_is_502(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """A 200 JSON body that is an error, not a completion, is reported as the upstream's error."""
    upstream.behaviour = Behaviour.garbage(b'{"error": {"message": "engine crashed"}}')
    with pytest.raises(APIError) as caught:
        await engine.complete(request(BODY))
    assert upstream_error(
        f"upstream {label(upstream)} error: engine crashed", "upstream_error"
    ) == error_of(caught.value)


async def test_consumer_stopping_early_aborts_the_upstream(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """Closing the stream after the first batch closes the upstream connection mid-response."""
    upstream.behaviour = Behaviour.normal(100, chunk_delay_s=0.02)
    stream = engine.stream(request(STREAM_BODY))
    first = await anext(stream)
    await stream.aclose()
    await upstream.wait_connections_closed()
    assert [stream_chunks(STREAM_BODY, 100)[0]] == first
    assert upstream.aborted == 1


async def test_cancelled_consumer_aborts_the_upstream(
    engine: OpenAIEngine, upstream: FakeUpstream
) -> None:
    """Cancelling the task that reads the stream propagates and aborts the upstream request."""
    upstream.behaviour = Behaviour.normal(100, chunk_delay_s=0.02)
    first_batch = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream(request(STREAM_BODY)):
            first_batch.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_batch.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await upstream.wait_connections_closed()
    assert upstream.aborted == 1


async def test_not_started_is_an_api_error(upstream: FakeUpstream) -> None:
    """Using the engine before start() fails as an APIError, not an AttributeError."""
    engine = OpenAIEngine(upstream.base_url)
    with pytest.raises(APIError) as caught:
        await engine.complete(request(BODY))
    assert upstream_error("the openai engine is not started", "engine_not_started") == error_of(
        caught.value
    )


@pytest.mark.parametrize(
    ("default", "routes", "message"),
    [
        (None, [], "the openai engine needs a default upstream URL or routes"),
        ("ftp://host/v1", [], "upstream URL ftp://host/v1 must be http(s)://host[:port]/path"),
        ("http://u:p@host/v1", [], "upstream URL for host: credentials in the URL are not allowed"),
    ],
)
def test_bad_configuration_is_a_config_error(
    default: str | None, routes: list[tuple[str, str]], message: str
) -> None:
    """Missing or unusable upstream URLs are rejected at construction, without credentials."""
    with pytest.raises(ConfigError) as caught:
        OpenAIEngine(default, routes=routes)
    assert message == str(caught.value)


def test_fake_upstream_in_a_thread_serves_sync_clients() -> None:
    """The thread runner serves a plain blocking client and records what it received."""
    with upstream_in_thread(Behaviour.normal(2)) as fake:
        post = urllib.request.Request(
            fake.base_url + "/chat/completions",
            data=msgspec.json.encode(BODY),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(post, timeout=10) as response:
            answer = msgspec.json.decode(response.read())
        assert "fake-upstream" in {t.name for t in threading.enumerate()}
        assert [r.json() for r in fake.received] == [BODY]
    assert completion(BODY, 2) == answer
