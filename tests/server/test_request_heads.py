"""Request heads (request line and headers) have a size and a time limit: uvicorn's httptools
protocol buffers a head of any size and waits for it for ever, so ``serve`` bounds both
(``AUDITGATE_MAX_HEADER_BYTES``, ``AUDITGATE_HEADER_TIMEOUT``)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


OK = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\ncontent-type: application/json\r\n"
    b'connection: close\r\n\r\n{"status":"ok"}'
)
"""``GET /health``'s whole response to a request with ``connection: close``."""
REFUSED_BODY = (
    b'{"error":{"message":"The request line and headers are larger than the %d-byte limit of '
    b'this gateway.","type":"invalid_request_error","param":null,'
    b'"code":"request_header_fields_too_large"}}' % LIMIT
)
REFUSED = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(REFUSED_BODY), REFUSED_BODY)
)
"""The whole 431."""
METHOD_NOT_ALLOWED = (
    b"HTTP/1.1 405 Method Not Allowed\r\nallow: GET,HEAD\r\ncontent-length: 98\r\n"
    b'content-type: application/json\r\n\r\n{"error":{"message":"Method Not Allowed",'
    b'"type":"invalid_request_error","param":null,"code":null}}'
)
"""``POST /health``'s whole response (its ``allow`` sorted): the request before the measured
one, where there is."""


def head_of(size: int) -> bytes:
    """A ``GET /health`` whose head (request line, headers, blank line) is ``size`` bytes."""
    start = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


def send_in_reads(gw: Gateway, parts: list[bytes]) -> bytes:
    """Send ``parts`` with pauses between them (so the server reads them apart); what the
    server sends until it closes."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        for part in parts:
            sock.sendall(part)
            time.sleep(0.05)
        data = b""
        while part := sock.recv(65536):
            data += part
        return data


BEFORE = {
    "nothing": b"",
    "empty lines, not counted": b"\r\n" * 8,
    "a request with a body that looks like a head": (
        b"POST /health HTTP/1.1\r\nhost: x\r\ncontent-length: 24\r\n\r\n"
        b"x\r\n\r\nGET / HTTP/1.1\r\nx: "
    ),
    "a request with a chunked body holding blank lines": (
        b"POST /health HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"6\r\nab\r\n\r\n\r\n4;x=y\r\n\r\n\r\n\r\n0\r\nx-trailer: t\r\n\r\n"
    ),
}


@pytest.mark.parametrize("before", list(BEFORE))
@pytest.mark.parametrize("reads", ["one read", "pieces", "blank line split"])
@pytest.mark.parametrize("over", [0, 1])
def test_the_head_limit_is_exact(gw: Gateway, before: str, reads: str, over: int) -> None:
    """A head of exactly the limit is served and one a byte longer refused, however it
    arrives: alone or pipelined behind another request (its body framed by length or chunked,
    blank lines in it), in one read or many, its blank line split between two reads."""
    first, head = BEFORE[before], head_of(LIMIT + over)
    if reads == "one read":
        parts = [first + head]
    elif reads == "pieces":
        parts = [first + head[:5000], head[5000:10000], head[10000:]]
    else:
        parts = [first + head[:-2], head[-2:]]
    answer = re.sub(  # the methods' order changes from one process to the next
        rb"allow: ([A-Z, ]+)\r\n",
        lambda m: b"allow: %s\r\n" % b",".join(sorted(m[1].split(b", "))),
        send_in_reads(gw, parts),
    )
    expected = REFUSED if over else OK
    if first.startswith(b"POST"):
        expected = METHOD_NOT_ALLOWED + expected
    assert answer == expected


@pytest.mark.parametrize(("size", "expected"), [(LIMIT, OK), (LIMIT + 1, REFUSED)])
def test_a_later_head_on_a_connection_has_the_same_limit(
    gw: Gateway, size: int, expected: bytes
) -> None:
    """The second head on a kept-alive connection is measured from its own first byte."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        sock.sendall(head_of(size))
        data = b""
        while part := sock.recv(65536):
            data += part
    assert data == expected


def read_response(sock: socket.socket, ending: bytes) -> bytes:
    """Read until what came ends with ``ending`` (the server keeps the connection)."""
    data = b""
    while not data.endswith(ending):
        data += sock.recv(65536)
    return data


@pytest.mark.parametrize(("size", "expected"), [(LIMIT, OK), (LIMIT + 1, REFUSED)])
def test_a_body_answered_before_it_ended_still_delimits_the_next_head(
    gw: Gateway, size: int, expected: bytes
) -> None:
    """A chunked body the gateway answered (405) before it came whole: the rest of it is read
    as body, blank lines and all, and the next head measured from its own first byte."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(
            b"POST /health HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"6\r\nab\r\n\r\n\r\n"
        )
        assert read_response(sock, b"null}}").startswith(b"HTTP/1.1 405 ")
        sock.sendall(b"4;x=y\r\n\r\n\r\n\r\n0\r\nx-trailer: t\r\n\r\n" + head_of(size))
        data = b""
        while part := sock.recv(65536):
            data += part
    assert data == expected


def test_a_request_behind_an_upgrade_request_is_answered(gw: Gateway) -> None:
    """The gateway speaks only HTTP/1.1: after an ``Upgrade`` request it reads on, so a request
    sent right behind one (in the same packet) is answered too."""
    upgrade = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
    answer = send_in_reads(gw, [upgrade + head_of(100)])
    assert answer == OK.replace(b"connection: close\r\n", b"") + OK


def chat_over_socket(gw: Gateway, head: bytes, body: list[bytes], apart: bool) -> Any:
    """POST ``body`` (its pieces) behind ``head`` on a new connection, in one write or with the
    body apart; the JSON answer."""
    parts = [head + b"".join(body)] if not apart else [head, *body]
    response = send_in_reads(gw, parts)
    status, _, answer = response.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK", response
    return json.loads(answer.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("apart", [False, True])
def test_an_upgrade_request_keeps_its_body(gw: Gateway, framing: str, apart: bool) -> None:
    """A POST that asks for an ``Upgrade`` to HTTP/2 (what ``curl --http2`` sends to an
    http:// URL) is served as HTTP/1.1, with its body: the same completion as without it."""
    payload = json.dumps(
        {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "seed": 7}
    ).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    upgrade = (
        b"connection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\n"
        b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    )
    if framing == "content-length":
        head += b"content-length: %d\r\n" % len(payload)
        body = [payload[:20], payload[20:]]
    else:
        head += b"transfer-encoding: chunked\r\n"
        body = [b"%x\r\n%s\r\n" % (len(payload), payload), b"0\r\n\r\n"]
    plain = chat_over_socket(gw, head + b"connection: close\r\n\r\n", body, apart)
    upgraded = chat_over_socket(gw, head + upgrade + b"\r\n", body, apart)
    assert upgraded["choices"] == plain["choices"]


def test_empty_lines_do_not_keep_a_connection_open(gw: Gateway) -> None:
    """After a request, a client that sends only empty lines (which a server skips before a
    request line) gets the 408 of a head that does not come."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=1) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        read_response(sock, b'{"status":"ok"}')
        data, deadline = b"", time.monotonic() + HEAD_TIMEOUT_S + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # once closed, sendall fails: read what came
                sock.sendall(b"\r\n")
            try:
                part = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:  # an empty line sent after the close: what came is in
                break
            if not part:
                break
            data += part
    assert data.startswith(b"HTTP/1.1 408 ")


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


@pytest.mark.parametrize(
    "partial",
    [b"POST /v1/chat/comp", b"PRI * HTTP/2.0\r\n\r\n"],
    ids=["half a request line", "HTTP/2's preface up to its first blank line"],
)
@pytest.mark.parametrize("earlier", [False, True])
def test_a_head_that_stops_coming_gets_a_408(gw: Gateway, earlier: bool, partial: bytes) -> None:
    """Part of a head, first on the connection or after a complete request on it: a 408 in
    OpenAI's error shape, then the connection is closed."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        if earlier:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            first = b""
            while not first.endswith(b'{"status":"ok"}'):  # head and body: two writes
                first += sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 OK")
        sock.sendall(partial)
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
