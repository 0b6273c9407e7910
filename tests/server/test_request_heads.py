"""Request heads (request line and headers) have a size and a time limit: uvicorn's httptools
protocol buffers a head of any size and waits for it for ever, so ``serve`` bounds both
(``AUDITGATE_MAX_HEADER_BYTES``, ``AUDITGATE_HEADER_TIMEOUT``)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from auditgate.config import GatewaySettings
from auditgate.errors import ConfigError
from tests.support.gateway import Gateway, running_gateway

LIMIT = 16384
HEAD_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {
        "AUDITGATE_MAX_HEADER_BYTES": str(LIMIT),
        "AUDITGATE_HEADER_TIMEOUT": str(HEAD_TIMEOUT_S),
    }
    with running_gateway(env, log_dir=tmp_path_factory.mktemp("heads")) as gateway:
        yield gateway


def exchange(gw: Gateway, head: bytes, chunk: int = 65536) -> bytes:
    """Send ``head`` (in pieces, as a client streaming it would) and read until the server
    closes the connection or stops answering."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        try:
            for start in range(0, len(head), chunk):
                sock.sendall(head[start : start + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-head: the answer is already there to read
        data = b""
        while part := sock.recv(65536):
            data += part
        return data


def assert_refused(response: bytes) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in head
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == (
        "invalid_request_error",
        "request_header_fields_too_large",
    )
    assert f"{LIMIT}-byte limit" in error["message"]


@pytest.mark.parametrize("shape", ["one endless header", "many headers", "endless url"])
def test_a_head_over_the_limit_gets_a_431_and_the_connection_closed(
    gw: Gateway, shape: str
) -> None:
    """Whatever makes the head large, the client gets OpenAI's error shape and the server
    closes the connection after reading little more than the limit (4 MiB offered here)."""
    if shape == "one endless header":
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (4 << 20)
    elif shape == "many headers":
        head = b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-h: v\r\n" * (4 << 17)
    else:
        head = b"GET /v1/models?" + b"q" * (4 << 20)
    assert_refused(exchange(gw, head))


def test_the_gateway_serves_on_after_refusing_heads(gw: Gateway) -> None:
    """A head just under the limit is served; so are the next SDK requests."""
    padding = "p" * (LIMIT - 1024)
    response = httpx.get(gw.url + "/health", headers={"x-padding": padding})
    assert response.status_code == 200
    assert_refused(exchange(gw, b"GET /health HTTP/1.1\r\nx-big: " + b"a" * (LIMIT * 2)))
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    answer = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "still here"}]
    )
    assert answer.choices[0].message.content


def test_a_large_body_right_behind_small_headers_is_not_taken_for_a_head(gw: Gateway) -> None:
    """Bodies far over the head limit arrive in the same reads as their headers: served."""
    content = "b" * (3 << 20)
    for stream in (False, True):
        response = httpx.post(
            gw.base_url + "/chat/completions",
            json={
                "model": "mock",
                "messages": [{"role": "user", "content": content}],
                "stream": stream,
            },
            timeout=30,
        )
        assert response.status_code == 200


def test_every_worker_process_has_the_limit(tmp_path: Path) -> None:
    """``--workers 2``: the config goes to each worker process, the limit with it."""
    env = {"AUDITGATE_MAX_HEADER_BYTES": str(LIMIT)}
    with running_gateway(env, ["--workers", "2"], log_dir=tmp_path) as gw:
        for _ in range(6):  # new connections: the kernel spreads them over the workers
            assert_refused(exchange(gw, b"GET /health HTTP/1.1\r\nx-big: " + b"a" * (LIMIT * 2)))
        assert httpx.get(gw.url + "/health").status_code == 200


def wait_for_close(sock: socket.socket) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and after how many seconds."""
    started = time.monotonic()
    data = b""
    while part := sock.recv(65536):
        data += part
    return data, time.monotonic() - started


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(gw: Gateway) -> None:
    """Open and silent: closed, without an answer (nobody asked anything)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        data, elapsed = wait_for_close(sock)
    assert data == b""
    assert HEAD_TIMEOUT_S <= elapsed < HEAD_TIMEOUT_S + 5


@pytest.mark.parametrize("earlier", [False, True])
def test_a_head_that_stops_coming_gets_a_408(gw: Gateway, earlier: bool) -> None:
    """Half a request line, first on the connection or after a complete request on it: a 408
    in OpenAI's error shape, then the connection is closed."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        if earlier:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            first = b""
            while not first.endswith(b'{"status":"ok"}'):  # head and body: two writes
                first += sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 OK")
        sock.sendall(b"POST /v1/chat/comp")
        data, elapsed = wait_for_close(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
    assert f"within {HEAD_TIMEOUT_S:g} seconds" in error["message"]
    assert HEAD_TIMEOUT_S <= elapsed < HEAD_TIMEOUT_S + 5


def test_a_slow_head_that_arrives_in_time_is_served(gw: Gateway) -> None:
    """A head trickling in well within the timeout is answered as usual."""
    head = b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: yes\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        for start in range(0, len(head), 8):
            sock.sendall(head[start : start + 8])
            time.sleep(HEAD_TIMEOUT_S / 20)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_an_upgrade_request_is_plain_http(gw: Gateway) -> None:
    """The gateway has no WebSocket endpoints: ``Upgrade: websocket`` is answered as HTTP."""
    response = httpx.get(
        gw.url + "/health",
        headers={
            "connection": "upgrade",
            "upgrade": "websocket",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            "sec-websocket-version": "13",
        },
    )
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_the_head_limits_are_settings() -> None:
    defaults = GatewaySettings.from_env({})
    assert (defaults.max_header_bytes, defaults.header_timeout_s) == (64 << 10, 30.0)
    assert GatewaySettings.from_env({"AUDITGATE_MAX_HEADER_BYTES": "4096"}).max_header_bytes == 4096
    assert GatewaySettings.from_env({"AUDITGATE_HEADER_TIMEOUT": "5"}).header_timeout_s == 5.0
    with pytest.raises(ConfigError, match="AUDITGATE_MAX_HEADER_BYTES"):
        GatewaySettings.from_env({"AUDITGATE_MAX_HEADER_BYTES": "100"})
    with pytest.raises(ConfigError, match="AUDITGATE_HEADER_TIMEOUT"):
        GatewaySettings.from_env({"AUDITGATE_HEADER_TIMEOUT": "0.5"})
