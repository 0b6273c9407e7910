"""Clients that stall or trickle their request body: a 408 once the body deadline passed, the
connection closed, and the gateway serving everyone else all along."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import TestGateway, audit_env, gateway

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestGateway]:
    store = tmp_path_factory.mktemp("slow") / "store.db"
    env = audit_env(
        AUDITGATE_BODY_TIMEOUT=str(TIMEOUT_S),
        AUDITGATE_MAX_BODY_BYTES="4096",
        AUDITGATE_STORE_URL=f"sqlite:///{store}",
    )
    with gateway(env) as g:
        yield g


def _connect(gw: TestGateway, path: str, length: int, first: bytes) -> socket.socket:
    """A POST that declares ``length`` body bytes and sends only ``first``."""
    sock = socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), timeout=15)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n\r\n".encode()
        + first
    )
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat/completions/chatcmpl-x"])
@pytest.mark.parametrize("first", [b"", b'{"model": "mock", "mess'])
def test_a_stalled_body_gets_a_408_and_its_connection_is_closed(
    gw: TestGateway, path: str, first: bytes
) -> None:
    """Headers, then part of the body or nothing, then silence: an OpenAI error 408 after the
    deadline (checked once a second), then the server closes the connection."""
    started = time.monotonic()
    with _connect(gw, path, 100, first) as sock:
        response = _read_to_end(sock)  # returns only because the server closed it
    elapsed = time.monotonic() - started
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
    assert f"within {TIMEOUT_S:g} seconds" in error["message"]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 5


def test_a_slow_body_that_arrives_in_time_is_served(gw: TestGateway) -> None:
    """A client trickling its body in well before the deadline gets its answer, audited."""
    before = len(gw.sink.records)
    request = {"model": "mock", "messages": [{"role": "user", "content": "slow"}], "store": True}
    raw = json.dumps(request).encode()
    with _connect(gw, "/v1/chat/completions", len(raw), raw[:10]) as sock:
        for start in range(10, len(raw), 20):
            time.sleep(TIMEOUT_S / 20)
            sock.sendall(raw[start : start + 20])
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    assert head == b"HTTP/1.1 200 OK"
    assert gw.records(before + 1)[-1].request == request


def test_stalled_clients_do_not_hold_up_anyone_else(gw: TestGateway) -> None:
    """Ten stalled uploads in progress: other clients are answered as usual, and once the
    stalled ones are cut off the gateway still serves and records."""
    before = len(gw.sink.records)
    stalled = [_connect(gw, "/v1/chat/completions", 100, b"{") for _ in range(10)]
    try:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        completion = client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "next"}], store=True
        )
        assert gw.records(before + 1)[-1].response["id"] == completion.id  # type: ignore[index]
        answers = [_read_to_end(sock) for sock in stalled]
    finally:
        for sock in stalled:
            sock.close()
    assert [a.split(b" ", 2)[1] for a in answers] == [b"408"] * 10
    assert len(gw.sink.records) == before + 1  # no record for a request that never arrived
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'status="408"' in metrics


def test_a_metadata_update_larger_than_the_body_limit_gets_a_413(gw: TestGateway) -> None:
    """The stored-completions update reads its body under the same limit as chat (it used to
    read any size into memory)."""
    big = json.dumps({"metadata": {"k": "x" * 5000}}).encode()
    response = httpx.post(gw.base_url + "/chat/completions/chatcmpl-x", content=big, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_the_body_timeout_is_a_setting(tmp_path: Path) -> None:
    """``AUDITGATE_BODY_TIMEOUT`` defaults to 60 s and refuses nonsense."""
    from auditgate.config import GatewaySettings
    from auditgate.errors import ConfigError

    assert GatewaySettings.from_env({}).body_timeout_s == 60.0
    assert GatewaySettings.from_env({"AUDITGATE_BODY_TIMEOUT": "5"}).body_timeout_s == 5.0
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="AUDITGATE_BODY_TIMEOUT"):
            GatewaySettings.from_env({"AUDITGATE_BODY_TIMEOUT": bad})
