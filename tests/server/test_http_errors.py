"""Every error the gateway answers is OpenAI's error object with a JSON content type, also the
ones the HTTP layer finds before any endpoint runs (uvicorn answers those in plain text)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditgate.engines.base import EngineRequest
from auditgate.engines.mock import MockEngine
from tests.support.gateway import Gateway, running_gateway
from tests.support.server import gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway({}, log_dir=tmp_path_factory.mktemp("errors")) as gateway:
        yield gateway


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while part := sock.recv(65536):
            data += part
        return data


def parse(response: bytes) -> tuple[str, dict[str, str], Any]:
    """(status line, headers, JSON body) of one whole response."""
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    assert int(headers["content-length"]) == len(body), response
    return status, headers, json.loads(body)


def error(message: str, code: str | None, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


ERROR_HEADERS = {"content-type": "application/json", "connection": "close"}

MALFORMED = {
    "bad chunk size": (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"zz\r\n",
        "Invalid character in chunk size",
    ),
    "two content-lengths": (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
        b"content-length: 3\r\n\r\n{}",
        "Duplicate Content-Length",
    ),
    "content-length and chunked": (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding can't be present with Content-Length",
    ),
    "NUL in a header": (
        b"GET /health HTTP/1.1\r\nhost: x\r\nx-a: a\x00b\r\n\r\n",
        "Invalid header value char",
    ),
    "bad method": (b"G@T /health HTTP/1.1\r\nhost: x\r\n\r\n", "Invalid method encountered"),
    "bad character in the path": (
        b"GET /he\xffalth HTTP/1.1\r\nhost: x\r\n\r\n",
        "Invalid char in url path",
    ),
    "request target that is not a URL": (
        b"GET http://[ HTTP/1.1\r\nhost: x\r\n\r\n",
        "the request target is not a valid URL",
    ),
    "unknown HTTP version": (b"GET /health HTTP/3.0\r\nhost: x\r\n\r\n", "Invalid HTTP version"),
    "bare LF line ends": (b"GET /health HTTP/1.1\nhost: x\n\n", "Expected CRLF after version"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_request_the_parser_refuses_gets_a_400_in_openai_shape(gw: Gateway, case: str) -> None:
    """Each malformed request gets a 400 ``invalid_http_request`` saying what was wrong."""
    request, reason = MALFORMED[case]
    status, headers, body = parse(exchange(gw.port, request))
    assert (status, headers | ERROR_HEADERS, body) == (
        "HTTP/1.1 400 Bad Request",
        headers,
        error(f"Invalid HTTP request: {reason}.", "invalid_http_request"),
    )


def test_http2_with_prior_knowledge_gets_a_505(gw: Gateway) -> None:
    """HTTP/2's connection preface is answered, in HTTP/1.1, with a 505 that says so."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    status, headers, body = parse(exchange(gw.port, preface))
    assert (status, headers | ERROR_HEADERS, body) == (
        "HTTP/1.1 505 HTTP Version Not Supported",
        headers,
        error(
            "This gateway speaks HTTP/1.1; HTTP/2 (with prior knowledge) is not supported.",
            "http_version_not_supported",
        ),
    )


def test_every_worker_answers_malformed_requests_in_openai_shape(tmp_path: Path) -> None:
    """``--workers 2``: each worker process runs the same protocol."""
    request, reason = MALFORMED["bad method"]
    with running_gateway({}, ["--workers", "2"], log_dir=tmp_path) as gw:
        for _ in range(6):  # new connections: the kernel spreads them over the workers
            _, _, body = parse(exchange(gw.port, request))
            assert body == error(f"Invalid HTTP request: {reason}.", "invalid_http_request")


def test_an_error_waits_for_the_response_before_it(tmp_path: Path) -> None:
    """A malformed request sent while a stream is still going out is answered after that
    stream's last byte (HTTP/1.1 answers in order), never inside it; then the connection
    closes."""
    request = json.dumps(
        {
            "model": "mock",
            "messages": [{"role": "user", "content": "count"}],
            "stream": True,
            "max_tokens": 12,
        }
    ).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    with (
        running_gateway({"AUDITGATE_MOCK_ITL_MS": "50"}, log_dir=tmp_path) as gw,
        socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock,
    ):
        sock.sendall(head + b"content-length: %d\r\n\r\n%s" % (len(request), request))
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")  # the stream has begun
        sock.sendall(MALFORMED["bad method"][0])
        while part := sock.recv(65536):
            data += part
    stream, end, rest = data.partition(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert end, data  # the stream is whole: [DONE], then the end of its chunked body
    assert b"HTTP/1.1 400" not in stream
    status, headers, body = parse(rest)
    assert (status, headers | ERROR_HEADERS, body) == (
        "HTTP/1.1 400 Bad Request",
        headers,
        error(f"Invalid HTTP request: {MALFORMED['bad method'][1]}.", "invalid_http_request"),
    )


SERVER_ERROR = error("The server had an error while processing your request.", None, "server_error")


class BrokenEngine(MockEngine):
    """An engine that breaks its contract (only API errors escape it): a bug."""

    async def complete(self, request: EngineRequest) -> dict[str, Any]:
        raise RuntimeError("a bug in the engine")


def test_an_app_that_fails_before_answering_gets_a_500_in_openai_shape() -> None:
    """When the gateway fails before it starts a response (here a broken engine), the client
    gets uvicorn's last-resort 500 in OpenAI's shape, not ``Internal Server Error`` in plain
    text; the protocol is ``serve``'s, the server in-process to plug the broken engine in."""
    body = json.dumps({"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body.encode())
    )
    protocol = "auditgate.server.protocol:BoundedHttpToolsProtocol"
    with gateway(engine=BrokenEngine(), http=protocol) as gw:
        status, headers, answer = parse(exchange(gw.server.port, request))
    assert (status, headers | ERROR_HEADERS, answer) == (
        "HTTP/1.1 500 Internal Server Error",
        headers,
        SERVER_ERROR,
    )
