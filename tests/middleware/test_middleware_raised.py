"""What the ASGI middleware records when the wrapped app raises: the answer the client got.

An exception that leaves the app is answered by the ASGI server, never as itself: a 500 before
the response started, a cut response after.  An ``APIError`` the app raised instead of answering
with it is no different (its status never reached the client), so the record says
``server_error`` 500 and names the exception's type, as for any other exception.
"""

from __future__ import annotations

import json

import httpx
import pytest

from auditgate.audit.record import encode_record
from auditgate.errors import APIError, ServiceUnavailableError
from auditgate.server.wire import Receive, Scope, Send
from tests.middleware.test_middleware import MESSAGES, audited, with_lifespan

CHUNK = (
    b'data: {"id":"x1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    b'[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n'
)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("boom"),
        ServiceUnavailableError("the engine is down"),
        APIError("teapot", status_code=418),
    ],
    ids=["RuntimeError", "ServiceUnavailableError", "APIError"],
)
def test_an_exception_before_the_response_is_the_servers_500(exc: Exception) -> None:
    """Whatever the app raises before it answers, the client gets the server's 500 and the
    record says so (the exception's type, never its text)."""

    @with_lifespan
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise exc

    with audited(app) as a:
        body = {"model": "m", "messages": MESSAGES, "store": True}
        response = httpx.post(a.base_url + "/chat/completions", json=body, timeout=10)
        [record] = a.records(1)
    raw = json.loads(encode_record(record))
    assert record.error is not None
    assert (response.status_code, record.status, record.complete, "response" in raw) == (
        500,
        "error",
        False,
        False,
    )
    assert (record.error.type, record.error.message, record.error.status_code) == (
        "server_error",
        f"The server raised {type(exc).__name__}.",
        500,
    )


def test_an_api_error_mid_stream_is_a_cut_response() -> None:
    """An APIError raised after the first chunk cuts the stream: the record holds that chunk
    and the server's error, not the APIError's status."""

    @with_lifespan
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        raise ServiceUnavailableError("the engine went away")

    with audited(app) as a:
        body = {"model": "m", "messages": MESSAGES, "store": True, "stream": True}
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", a.base_url + "/chat/completions", json=body, timeout=10) as r,
        ):
            r.read()
        [record] = a.records(1)
    assert record.error is not None and record.response is not None
    assert (record.status, record.complete, record.error.type, record.error.status_code) == (
        "error",
        False,
        "server_error",
        500,
    )
    assert record.response["choices"][0]["message"]["content"] == "Hel"
