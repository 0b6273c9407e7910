"""Helpers shared by the mock engine's tests: requests, streams and their aggregate."""

from __future__ import annotations

from typing import Any

from auditgate.audit.aggregate import StreamAggregator
from auditgate.engines.base import EngineRequest
from auditgate.engines.mock import MockEngine

MESSAGES = [{"role": "user", "content": "What is 10 + 10?"}]


def request(**body: Any) -> EngineRequest:
    """An engine request for model ``mock`` with ``MESSAGES`` unless overridden."""
    return EngineRequest({"model": "mock", "messages": MESSAGES, **body}, "req-1", "chatcmpl-req-1")


async def batches(engine: MockEngine, req: EngineRequest) -> list[list[dict[str, Any]]]:
    """Every batch ``engine.stream`` yields for ``req``."""
    return [batch async for batch in engine.stream(req)]


async def streamed(engine: MockEngine, req: EngineRequest) -> list[dict[str, Any]]:
    """Every chunk ``engine.stream`` yields for ``req``, flattened."""
    return [chunk for batch in await batches(engine, req) for chunk in batch]


def aggregate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The StreamAggregator's completion for ``chunks``."""
    aggregator = StreamAggregator()
    for chunk in chunks:
        aggregator.feed(chunk)
    result = aggregator.finish()
    assert result is not None
    return result
