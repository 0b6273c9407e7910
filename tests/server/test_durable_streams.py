"""Durable streams through the real server: a stream's response starts with its first tokens,
so an answer that is one batch goes out whole once its record is durable, and a commit that
fails before any byte was sent is an HTTP 503, never a 200."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import TestGateway, audit_env, gateway

MESSAGES = [{"role": "user", "content": "durable stream"}]


@contextmanager
def durable_gateway(tmp_path: Path, **extra: str) -> Iterator[TestGateway]:
    env = audit_env(
        DYN_AUDIT_DURABILITY="durable", DYN_AUDIT_SPOOL_DIR=str(tmp_path / "spool"), **extra
    )
    with gateway(env) as gw:
        yield gw


def writer_pid(gw: TestGateway) -> int:
    process = gw.app.gateway.audit.bus.spool._process  # type: ignore[union-attr]
    assert process is not None
    return process.pid


def block_segments(tmp_path: Path, count: int = 8) -> None:
    """Directories where the spool's next segment files would go: every write fails."""
    for segment in range(count):
        (tmp_path / "spool" / f"{segment:016d}.seg").mkdir()


def stream_request(gw: TestGateway) -> socket.socket:
    body = json.dumps({"model": "mock", "messages": MESSAGES, "stream": True, "store": True})
    sock = socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), timeout=10)
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json"
        f"\r\ncontent-length: {len(body)}\r\n\r\n{body}".encode()
    )
    return sock


def test_a_one_batch_stream_sends_nothing_before_its_record_is_durable(tmp_path: Path) -> None:
    """The writer stopped: the client gets no byte, not even the status line; once the record
    is durable, headers, the whole answer and [DONE] arrive."""
    with durable_gateway(tmp_path) as gw:
        pid = writer_pid(gw)
        os.kill(pid, signal.SIGSTOP)
        try:
            sock = stream_request(gw)
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        finally:
            os.kill(pid, signal.SIGCONT)
        sock.settimeout(10)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):  # the end of the chunked body
            data += sock.recv(65536)
        sock.close()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"data: [DONE]" in data
        [record] = gw.records(1)
        assert record.complete and record.request is not None
        assert record.request["messages"] == MESSAGES


def test_a_one_batch_stream_whose_record_fails_is_an_http_503(tmp_path: Path) -> None:
    """The spool cannot write: the SDK sees a 503 audit_spool_unavailable, not a 200 stream
    ending in an error event (nothing had been sent when the commit failed)."""
    with durable_gateway(tmp_path) as gw:
        block_segments(tmp_path)
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(
                model="mock",
                messages=MESSAGES,
                stream=True,
                store=True,  # type: ignore[arg-type]
            )
        assert failed.value.status_code == 503
        assert failed.value.code == "audit_spool_unavailable"
        assert gw.sink.records == []


def test_a_stream_already_under_way_whose_record_fails_ends_in_an_error_event(
    tmp_path: Path,
) -> None:
    """Tokens one at a time (1 ms apart): the response started with the first of them, so a
    failed commit is reported in-stream, as OpenAI reports errors mid-stream, and no [DONE]."""
    with durable_gateway(tmp_path, AUDITGATE_MOCK_ITL_MS="1") as gw:
        block_segments(tmp_path)
        body = {"model": "mock", "messages": MESSAGES, "stream": True, "store": True}
        with httpx.stream("POST", gw.base_url + "/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert len(events) > 2 and "[DONE]" not in events
        assert all("choices" in json.loads(event) for event in events[:-1])
        assert json.loads(events[-1])["error"]["code"] == "audit_spool_unavailable"
        assert gw.sink.records == []
