"""An engine that raises something other than an API error (a bug, an unwrapped client error):
the client gets a 500 (or, mid-stream, a broken response) and the record says ``error`` — not
``cancelled``, which is kept for a client that went away — on every endpoint, through the real
server and the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest

from auditgate.audit.record import ErrorInfo
from auditgate.engines.base import EngineRequest
from auditgate.engines.mock import MockEngine
from tests.support.server import TestGateway, audit_env, gateway

SECRET = "sk-live-0123456789abcdef"
BUG = RuntimeError(f"the upstream at https://user:{SECRET}@upstream.invalid said no")
"""What the engine raises: its text holds a secret, so none of it may be recorded."""

RECORDED = ErrorInfo(
    type="server_error", message="The server raised RuntimeError.", status_code=500
)
"""The record's error: the 500 the client got, naming the exception's type only."""

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


class BrokenEngine(MockEngine):
    """The mock engine, except that every call raises :data:`BUG`; a stream first yields
    ``batches`` of the mock's own batches (0: it fails before any output)."""

    def __init__(self, batches: int) -> None:
        super().__init__(itl_s=0.001)  # paced: the mock's stream comes in several batches
        self._batches = batches

    async def complete(self, request: EngineRequest) -> dict[str, Any]:
        raise BUG

    async def complete_text(self, request: EngineRequest) -> dict[str, Any]:
        raise BUG

    async def embed(self, request: EngineRequest) -> dict[str, Any]:
        raise BUG

    def stream(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]:
        return self._broken(super().stream(request))

    def stream_text(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]:
        return self._broken(super().stream_text(request))

    async def _broken(
        self, batches: AsyncIterator[list[dict[str, Any]]]
    ) -> AsyncIterator[list[dict[str, Any]]]:
        count = 0
        async for batch in batches:
            if count == self._batches:
                break
            count += 1
            yield batch
        raise BUG


@pytest.fixture
def before_output() -> Iterator[TestGateway]:
    with gateway(audit_env(), engine=BrokenEngine(batches=0)) as g:
        yield g


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-test-not-a-secret", max_retries=0)


def chat(api: openai.OpenAI) -> None:
    api.chat.completions.create(model="mock", messages=MESSAGES, store=True)  # type: ignore[arg-type]


def chat_stream(api: openai.OpenAI) -> None:
    for _ in api.chat.completions.create(model="mock", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        pass


def completions(api: openai.OpenAI) -> None:
    api.completions.create(model="mock", prompt="Once upon a time")


def completions_stream(api: openai.OpenAI) -> None:
    for _ in api.completions.create(model="mock", prompt="Once upon a time", stream=True):
        pass


def embeddings(api: openai.OpenAI) -> None:
    api.embeddings.create(model="mock", input="hello")


def responses(api: openai.OpenAI) -> None:
    api.responses.create(model="mock", input="Tell me a long story.")


def responses_stream(api: openai.OpenAI) -> None:
    for _ in api.responses.create(model="mock", input="Tell me a long story.", stream=True):
        pass


CALLS: dict[str, tuple[Callable[[openai.OpenAI], None], str]] = {
    "chat": (chat, "chat.completions"),
    "chat stream": (chat_stream, "chat.completions"),
    "completions": (completions, "completions"),
    "completions stream": (completions_stream, "completions"),
    "embeddings": (embeddings, "embeddings"),
    "responses": (responses, "responses"),
    "responses stream": (responses_stream, "responses"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_an_engine_bug_before_any_output_is_a_500_and_an_error_record(
    before_output: TestGateway, name: str
) -> None:
    """Before any output, the client gets OpenAI's 500 and the record is ``error``, with the
    exception's type but none of its text."""
    call, endpoint = CALLS[name]
    with pytest.raises(openai.InternalServerError) as raised:
        call(client(before_output))
    [record] = before_output.records(1)
    assert raised.value.status_code == 500
    assert (record.endpoint, record.status, record.complete, record.error) == (
        endpoint,
        "error",
        False,
        RECORDED,
    )
    assert SECRET not in str(record)


MID_STREAM: dict[str, tuple[Callable[[openai.OpenAI], None], str]] = {
    name: CALLS[name] for name in ("chat stream", "completions stream", "responses stream")
}


@pytest.mark.parametrize("name", list(MID_STREAM))
def test_an_engine_bug_mid_stream_breaks_the_response_and_is_an_error_record(name: str) -> None:
    """After the head went out, the gateway cannot answer a 500: the client's response breaks
    (the connection closes before the stream's end), and the record is ``error``, not the
    ``cancelled`` of a client that went away."""
    call, endpoint = MID_STREAM[name]
    with gateway(audit_env(), engine=BrokenEngine(batches=1)) as g:
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            call(client(g))
        [record] = g.records(1)
    assert (record.endpoint, record.status, record.complete, record.error) == (
        endpoint,
        "error",
        False,
        RECORDED,
    )


def test_a_client_gone_while_the_engine_works_is_still_cancelled() -> None:
    """The other side of the line: a client that goes away while the engine works on its
    stream's first output (the request's task is cancelled) yields ``cancelled``, no error."""
    with gateway(audit_env(AUDITGATE_MOCK_TTFT_MS="2000")) as g:
        api = openai.OpenAI(
            base_url=g.base_url, api_key="sk-test-not-a-secret", max_retries=0, timeout=0.3
        )
        with pytest.raises(openai.APITimeoutError):
            api.chat.completions.create(model="mock", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        [record] = g.records(1)
    assert (record.status, record.error) == ("cancelled", msgspec.UNSET)
