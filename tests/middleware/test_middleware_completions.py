"""``AuditMiddleware`` captures legacy ``POST /v1/completions`` of the app it wraps, as the
gateway would: the same exchange gives the same record behind the middleware as through it."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from auditgate.audit.record import AuditRecord
from auditgate.engines.base import EngineRequest
from auditgate.engines.mock import MockEngine
from auditgate.errors import APIError
from auditgate.server import sse_frames
from tests.middleware.test_middleware import Audited, audited, comparable, sdk
from tests.support.server import TestGateway, gateway

USAGE = {"stream_options": {"include_usage": True}}


def completions_app(engine: MockEngine) -> Starlette:
    """An OpenAI-compatible legacy completions server over ``engine`` (vLLM's shape)."""

    async def completions(request: Request) -> Response:
        body = await request.json()
        rid = uuid.uuid4().hex
        call = EngineRequest(body, rid, f"cmpl-{rid}")
        try:
            if not body.get("stream"):
                return JSONResponse(await engine.complete_text(call))
            batches = engine.stream_text(call)
            first = await anext(batches)
        except APIError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status_code)

        async def frames() -> AsyncIterator[bytes]:
            yield sse_frames.frames(first)
            async for batch in batches:
                yield sse_frames.frames(batch)
            yield sse_frames.DONE

        return StreamingResponse(frames(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def gw() -> Iterator[TestGateway]:
    with gateway() as g:
        yield g


@pytest.fixture
def mw() -> Iterator[Audited]:
    with audited(completions_app(MockEngine(("mock",)))) as a:
        yield a


def exchange(base_url: str, body: dict[str, Any]) -> Any:
    """Send ``body`` with the SDK; what the client got (the chunks, for a stream)."""
    extra = {k: body.pop(k) for k in ("store",) if k in body}
    response = sdk(base_url).completions.create(**body, extra_body=extra)
    return list(response) if body.get("stream") else response


def gateway_record(g: TestGateway, body: dict[str, Any]) -> AuditRecord:
    """Send ``body`` to the gateway; the one record it adds."""
    before = len(g.sink.records)
    with contextlib.suppress(openai.APIStatusError):
        exchange(g.base_url, dict(body))
    deadline = time.monotonic() + 10
    while len(g.sink.records) <= before and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(g.sink.records) == before + 1
    return g.sink.records[-1]


@pytest.mark.parametrize(
    "body",
    [
        {"store": True},
        {"store": True, "prompt": ["a", "b"], "n": 2, "echo": True, "logprobs": 2},
        {"store": True, "stream": True, **USAGE},
        {"store": True, "stream": True, "n": 2, "logprobs": 1, **USAGE},
        {"store": True, "stream": True, "max_tokens": 3, **USAGE},
        {},
        {"stream": True, **USAGE},
        {"store": True, "model": "unknown"},
    ],
    ids=["plain", "n2-echo", "stream", "stream-n2", "length", "unstored", "unstored-stream", "404"],
)
def test_record_equals_the_gateways(gw: TestGateway, mw: Audited, body: dict[str, Any]) -> None:
    """The same legacy exchange gives the same record behind the middleware as through the
    gateway: endpoint ``completions``, streams aggregated per choice, errors recorded."""
    body = {"model": "mock", "prompt": "Once upon a time", **body}
    expected = gateway_record(gw, body)
    with contextlib.suppress(openai.APIStatusError):
        exchange(mw.base_url, dict(body))
    [record] = mw.records(1)
    assert comparable(record) == comparable(expected)
    assert (record.transport, record.endpoint, record.engine) == ("http", "completions", "mock")


def test_invalid_body_passes_without_record(mw: Audited) -> None:
    """A body the gateway would refuse is the app's to answer, and leaves no record."""
    with pytest.raises(openai.APIStatusError):
        sdk(mw.base_url).post("/completions", body={"model": "mock", "prompt": []}, cast_to=dict)
    time.sleep(0.1)
    assert mw.sink.records == []
