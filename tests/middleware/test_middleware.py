"""``auditgate.middleware.AuditMiddleware`` on a small OpenAI-like Starlette app, driven by the SDK.

The app wraps auditgate's mock engine the way vLLM's server wraps its engine (JSON or SSE, errors
as OpenAI error JSON), so the same request can be sent to the real gateway and to the app behind
the middleware, and the two records compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from auditgate.audit.record import AuditRecord, decode_record, encode_record
from auditgate.audit.sink import MemorySink
from auditgate.config import Settings
from auditgate.engines.base import EngineRequest
from auditgate.engines.mock import MockEngine
from auditgate.errors import APIError
from auditgate.middleware import AuditMiddleware
from auditgate.server import sse_frames
from auditgate.server.wire import Receive, Scope, Send
from tests.support.server import ServerThread, TestGateway, audit_env, gateway

MESSAGES = [{"role": "user", "content": "What is 10 + 10?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
VOLATILE = (
    "request_id",
    "created_at",
    "completed_at",
    "ttft_ms",
    "duration_ms",
    "writer",
    "seq",
    "engine_response_id",
)


def openai_app(engine: MockEngine, **kwargs: Any) -> Starlette:
    """An OpenAI-compatible chat server over ``engine``, as vLLM's FastAPI app behaves."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        rid = uuid.uuid4().hex
        call = EngineRequest(body, rid, f"chatcmpl-{rid}")
        try:
            if not body.get("stream"):
                return JSONResponse(await engine.complete(call))
            batches = engine.stream(call)
            first = await anext(batches)
        except APIError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status_code)

        async def frames() -> AsyncIterator[bytes]:
            yield sse_frames.frames(first)
            async for batch in batches:
                yield sse_frames.frames(batch)
            yield sse_frames.DONE

        return StreamingResponse(frames(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], **kwargs)


class Audited:
    """The app behind the middleware, served on a loopback port, with a memory sink."""

    def __init__(self, server: ServerThread, middleware: AuditMiddleware, sink: MemorySink) -> None:
        self.server = server
        self.middleware = middleware
        self.sink = sink
        self.base_url = server.base_url

    def records(self, count: int) -> list[AuditRecord]:
        """Wait for ``count`` records, then flush: exactly ``count`` were accepted."""
        deadline = time.monotonic() + 10
        while len(self.sink.records) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.server.call(self.middleware.flush), "the audit runtime did not drain"
        assert len(self.sink.records) == count, self.sink.records
        return list(self.sink.records)


@contextlib.contextmanager
def audited(app: Any = None, env: dict[str, str] | None = None, **mock: float) -> Iterator[Audited]:
    """``app`` (default: the mock OpenAI app) behind ``AuditMiddleware``, running."""
    sink = MemorySink()
    settings = Settings.from_env(env if env is not None else audit_env())
    inner = app if app is not None else openai_app(MockEngine(("mock",), **mock))
    middleware = AuditMiddleware(inner, settings, sinks=[sink], engine="mock")
    server = ServerThread(middleware)
    server.start()
    try:
        yield Audited(server, middleware, sink)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gw() -> Iterator[TestGateway]:
    with gateway() as g:
        yield g


@pytest.fixture
def mw() -> Iterator[Audited]:
    with audited() as a:
        yield a


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def exchange(base_url: str, body: dict[str, Any]) -> Any:
    """Send ``body`` with the SDK; what the client got (the chunks, for a stream)."""
    response = sdk(base_url).chat.completions.create(**body)
    return list(response) if body.get("stream") else response  # type: ignore[call-overload]


def comparable(record: AuditRecord) -> dict[str, Any]:
    """The record as JSON without its ids and timings."""
    data: dict[str, Any] = json.loads(encode_record(record))
    for key in VOLATILE:
        data.pop(key, None)
    if "response" in data:
        data["response"] = {k: v for k, v in data["response"].items() if k not in ("id", "created")}
    return data


def gateway_record(g: TestGateway, body: dict[str, Any]) -> AuditRecord:
    """Send ``body`` to the gateway; the one record it adds."""
    before = len(g.sink.records)
    with contextlib.suppress(openai.APIStatusError):
        exchange(g.base_url, body)
    return g.records(before + 1)[-1]


USAGE = {"stream_options": {"include_usage": True}}


@pytest.mark.parametrize(
    "body",
    [
        {"store": True, "metadata": {"team": "a"}},
        {"store": True, "seed": 7, "n": 2, "tools": [WEATHER_TOOL]},
        {"store": True, "stream": True, **USAGE},
        {"store": True, "stream": True, "n": 2, "tools": [WEATHER_TOOL], **USAGE},
        {"store": True, "stream": True, "reasoning_effort": "low", **USAGE},
        {"store": True, "stream": True, "max_tokens": 3, **USAGE},
        {"store": False},
        {"stream": True, **USAGE},
    ],
    ids=[
        "plain",
        "n2-tools",
        "stream",
        "stream-n2-tools",
        "reasoning",
        "length",
        "unstored",
        "unstored-stream",
    ],
)
def test_record_equals_the_gateways(gw: TestGateway, mw: Audited, body: dict[str, Any]) -> None:
    """The same exchange gives the same record behind the middleware as through the gateway."""
    body = {"model": "mock", "messages": MESSAGES, **body}
    expected = gateway_record(gw, body)
    exchange(mw.base_url, body)
    [record] = mw.records(1)
    assert comparable(record) == comparable(expected)
    assert (record.transport, record.endpoint, record.engine) == (
        "http",
        "chat.completions",
        "mock",
    )


def test_stream_without_usage_has_no_usage_in_the_record(gw: TestGateway, mw: Audited) -> None:
    """The middleware cannot ask for usage: without include_usage the record's usage is null."""
    body = {"model": "mock", "messages": MESSAGES, "store": True, "stream": True}
    expected = gateway_record(gw, body)
    exchange(mw.base_url, body)
    [record] = mw.records(1)
    assert expected.usage is not None
    assert comparable(record) == comparable(expected) | {"usage": None}


def test_record_keeps_the_ids_the_client_saw(mw: Audited) -> None:
    """The response id in the record is the app's; request_id is a fresh key; X-Request-Id kept."""
    api = sdk(mw.base_url)
    raw = api.chat.completions.with_raw_response.create(
        model="mock",
        messages=MESSAGES,  # type: ignore[arg-type]
        store=True,
        extra_headers={"X-Request-Id": "trace-7"},
    )
    completion = raw.parse()
    [record] = mw.records(1)
    assert record.response is not None
    assert (record.response["id"], record.client_request_id) == (completion.id, "trace-7")
    assert completion.id != "chatcmpl-" + record.request_id
    assert "x-request-id" not in raw.headers


def test_engine_error_gives_the_gateways_error_record(gw: TestGateway, mw: Audited) -> None:
    """An unknown model: the app's 404 reaches the client and the same error record is written."""
    body = {"model": "nope", "messages": MESSAGES, "store": True}
    expected = gateway_record(gw, body)
    with pytest.raises(openai.NotFoundError):
        exchange(mw.base_url, body)
    [record] = mw.records(1)
    assert comparable(record) == comparable(expected)
    assert record.status == "error"


# One stream, cut at awkward places (mid-line, CRLF split across writes, a comment).
RAW_STREAM = [
    b'data: {"id":"x1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\r',
    b'\n\r\n: keep-alive\n\ndata: {"id":"x1","object":"chat.completion.chunk","created":1,',
    b'"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\nda',
    b'ta: {"id":"x1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    b'[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


def with_lifespan(app: Any) -> Any:
    """``app`` (which serves only HTTP) plus a do-nothing lifespan, as uvicorn needs."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    return wrapped


@with_lifespan
async def raw_stream_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A raw ASGI server that answers every chat request with :data:`RAW_STREAM`."""
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"text/event-stream"), (b"x-upstream", b"kept")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for piece in RAW_STREAM:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_bytes_pass_through_untouched() -> None:
    """The client receives exactly the app's bytes and headers; the record has the aggregate."""
    with audited(raw_stream_app) as a:
        body = {"model": "m", "messages": MESSAGES, "store": True, "stream": True}
        response = httpx.post(a.base_url + "/chat/completions", json=body, timeout=10)
        [record] = a.records(1)
    assert response.content == b"".join(RAW_STREAM)
    assert response.headers["x-upstream"] == "kept"
    assert "x-request-id" not in response.headers
    assert record.request == body
    assert record.response == {
        "id": "x1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": None,
    }
    assert (record.status, record.complete, record.usage) == ("completed", True, None)


def test_client_gone_mid_stream_yields_a_cancelled_record() -> None:
    """A client that stops reading after the first chunk leaves a partial cancelled record."""
    with audited(itl_s=0.1) as a:
        body = {"model": "mock", "messages": MESSAGES, "store": True, "stream": True}
        with httpx.stream("POST", a.base_url + "/chat/completions", json=body, timeout=10) as r:
            first = next(r.iter_bytes())
        [record] = a.records(1)
    assert (record.status, record.complete) == ("cancelled", False)
    assert record.response is not None
    assert record.response["choices"][0]["finish_reason"] is None
    assert first.startswith(b"data: ")


def test_an_unparsable_stream_is_an_audit_error_not_a_broken_exchange() -> None:
    """When the tap cannot follow the stream the client still gets every byte."""
    pieces = [b"data: {not json}\n\n", b"data: [DONE]\n\n"]

    @with_lifespan
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with audited(app) as a:
        body = {"model": "m", "messages": MESSAGES, "store": True, "stream": True}
        response = httpx.post(a.base_url + "/chat/completions", json=body, timeout=10)
        [record] = a.records(1)
    assert (response.status_code, response.content) == (200, b"".join(pieces))
    assert (record.status, record.complete) == ("error", False)
    assert record.error is not None
    assert (record.error.type, record.error.status_code) == ("audit_tap_error", 500)


def test_app_exception_is_an_error_record_and_still_raised() -> None:
    """An app that raises gives the server's 500 to the client and an error record."""

    @with_lifespan
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("boom")

    with audited(app) as a:
        body = {"model": "m", "messages": MESSAGES, "store": True}
        response = httpx.post(a.base_url + "/chat/completions", json=body, timeout=10)
        [record] = a.records(1)
    assert response.status_code == 500
    assert record.error is not None
    assert (record.status, record.error.type, record.error.message) == (
        "error",
        "server_error",
        "The server raised RuntimeError.",
    )


def test_invalid_body_and_other_routes_pass_without_record(mw: Audited) -> None:
    """Bodies the gateway would refuse and other paths are passed on and not recorded."""
    bad = httpx.post(mw.base_url + "/chat/completions", content=b"{", timeout=10)
    other = httpx.get(mw.base_url + "/models", timeout=10)
    assert (bad.status_code >= 400, other.status_code) == (True, 404)
    mw.records(0)


def test_add_middleware_with_settings_from_the_environment(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As vLLM loads it (``app.add_middleware(AuditMiddleware)``): env settings, drained at exit."""
    path = f"{workdir}/audit.jsonl"
    monkeypatch.setenv("DYN_AUDIT_ENABLED", "1")
    monkeypatch.setenv("DYN_AUDIT_SINKS", "jsonl")
    monkeypatch.setenv("DYN_AUDIT_OUTPUT_PATH", path)
    app = openai_app(MockEngine(("mock",)), middleware=[Middleware(AuditMiddleware)])
    server = ServerThread(app)
    server.start()
    try:
        exchange(server.base_url, {"model": "mock", "messages": MESSAGES, "store": True})
    finally:
        server.stop()  # lifespan shutdown drains the jsonl sink
    with open(path, "rb") as f:
        [record] = [decode_record(line) for line in f]
    assert (record.mode, record.request, record.engine) == (
        "full",
        {"model": "mock", "messages": MESSAGES, "store": True},
        "asgi",
    )


def test_lazy_start_without_lifespan() -> None:
    """Under a server that runs no lifespan the bus starts on the first chat request."""
    sink = MemorySink()
    middleware = AuditMiddleware(
        openai_app(MockEngine(("mock",))), Settings.from_env(audit_env()), sinks=[sink]
    )
    body = json.dumps({"model": "mock", "messages": MESSAGES, "store": True}).encode()

    async def run() -> list[AuditRecord]:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/v1/chat/completions", content=body)
            assert response.status_code == 200
        await middleware.close()
        return sink.records

    [record] = asyncio.run(run())
    assert record.request == json.loads(body)


class _UnopenableSink(MemorySink):
    """A sink whose backend is down when the app starts."""

    async def open(self) -> None:
        raise ConnectionRefusedError("the sink's server is down")


def test_sinks_down_at_startup_serves_and_counts_every_lost_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sinks that cannot open: the app keeps serving, and each record that should have been
    stored is counted as dropped for every sink and logged — never a silent unaudited 200."""
    sinks = [_UnopenableSink("db"), MemorySink("file")]
    middleware = AuditMiddleware(
        openai_app(MockEngine(("mock",))), Settings.from_env(audit_env()), sinks=sinks
    )
    server = ServerThread(middleware)
    server.start()
    try:
        client = sdk(server.base_url)
        stored = {"model": "mock", "messages": MESSAGES, "store": True}
        answers = [
            client.chat.completions.create(**stored),  # type: ignore[call-overload]
            list(client.chat.completions.create(**stored, stream=True)),  # type: ignore[call-overload]
            client.chat.completions.create(model="mock", messages=MESSAGES),  # type: ignore[arg-type]
        ]
    finally:
        server.stop()
    assert answers[0].choices[0].message.content
    assert answers[1][-1].choices[0].finish_reason == "stop"
    dropped = {
        name: middleware.registry.get_sample_value(
            "auditgate_audit_dropped_total", {"sink": name, "reason": "sink_unavailable"}
        )
        for name in ("db", "file")
    }
    # Per sink: the two stored exchanges, and the unstored one's usage_only record.
    assert dropped == {"db": 3.0, "file": 3.0}
    assert sinks[1].records == []
    assert "cannot start the sinks; serving WITHOUT audit" in caplog.text
    assert "sinks unavailable since startup; record" in caplog.text


def test_the_old_import_path_is_the_same_middleware() -> None:
    """``auditgate.asgi.AuditMiddleware`` (vLLM's ``--middleware`` flag names it) still works."""
    import auditgate.asgi
    import auditgate.middleware

    assert auditgate.asgi.AuditMiddleware is auditgate.middleware.AuditMiddleware
