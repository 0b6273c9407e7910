"""``AuditMiddleware`` captures ``POST /v1/responses`` of the app it wraps: the gateway's own app
(audit off) behind it, driven by the SDK; the record holds what the client received."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from auditgate.config import Settings
from auditgate.server.app import create_app
from tests.endpoints.responses.sdk import decode_sse
from tests.middleware.test_middleware import Audited, audited, sdk


@pytest.fixture
def mw() -> Iterator[Audited]:
    """The gateway's app, which serves the Responses API with its mock, audit off, behind the
    middleware (audit on, a memory sink)."""
    with audited(create_app(Settings.from_env({}))) as a:
        yield a


def test_a_response_is_recorded_as_the_client_got_it(mw: Audited) -> None:
    """Not streamed: the record's ``response`` is the body the client got; ``store`` defaults
    to true (``full``); usage in chat terms; a ``store: false`` one is ``usage_only``."""
    raw = sdk(mw.base_url).responses.with_raw_response.create(
        model="mock", input="Hello", instructions="Be brief.", metadata={"k": "v"}
    )
    sent = json.loads(raw.http_response.content)
    sdk(mw.base_url).responses.create(model="mock", input="Forget it.", store=False)
    stored, unstored = mw.records(2)
    assert (stored.endpoint, stored.mode, stored.status) == ("responses", "full", "completed")
    assert stored.response == sent
    assert stored.request == {
        "model": "mock",
        "input": "Hello",
        "instructions": "Be brief.",
        "metadata": {"k": "v"},
    }
    assert stored.metadata == {"k": "v"}
    assert stored.usage is not None
    assert (stored.usage["prompt_tokens"], stored.usage["completion_tokens"]) == (
        sent["usage"]["input_tokens"],
        sent["usage"]["output_tokens"],
    )
    assert (unstored.endpoint, unstored.mode) == ("responses", "usage_only")


def test_a_stream_is_recorded_as_its_terminal_event(mw: Audited) -> None:
    """Streamed: the record's ``response`` is the terminal event's, aggregated from the events
    the client received; it is published before that event goes out."""
    with sdk(mw.base_url).responses.with_streaming_response.create(
        model="mock", input="Tell me.", stream=True, reasoning={"effort": "low"}
    ) as raw:
        events = [event for _, event in decode_sse(raw.http_response.read())]
    [record] = mw.records(1)
    assert events[-1]["type"] == "response.completed"
    assert (record.endpoint, record.requested_streaming, record.status) == (
        "responses",
        True,
        "completed",
    )
    assert record.response == events[-1]["response"]
    assert record.usage is not None and record.usage["completion_tokens"] > 0
