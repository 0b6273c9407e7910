"""The Responses API goes through the same capture point as chat: force logging, sampling,
redaction, header capture, integrity, durable commits before the end of the answer, and a
record for a client that went away — through the real server and the official SDK."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import openai
import pytest

from auditgate.audit.record import AuditRecord
from auditgate.config import Settings
from auditgate.sinks import build_sinks
from tests.support.server import TestGateway, audit_env, gateway


def client(g: TestGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="sk-test-not-a-secret", max_retries=0)


def test_force_logging_records_but_does_not_store(workdir: str) -> None:
    """Force logging: a ``store=False`` response is recorded in full, yet not retrievable."""
    env = audit_env(
        DYN_AUDIT_FORCE_LOGGING="1",
        DYN_AUDIT_SINKS="sqlite",
        DYN_AUDIT_SQLITE_PATH=f"{workdir}/s.db",
    )
    with gateway(env, sinks=build_sinks(Settings.from_env(env).audit)) as g:
        api = client(g)
        response = api.responses.create(model="mock", input="Hi.", store=False)
        [record] = g.records(1)
        assert (record.mode, record.request, record.response["id"]) == (  # type: ignore[index]
            "full",
            {"model": "mock", "input": "Hi.", "store": False},
            response.id,
        )
        g.app.gateway.stored_responses.recent.ttl_s = 0
        time.sleep(1.5)  # past the sqlite sink's batch interval: the row is in the store
        with pytest.raises(openai.NotFoundError):
            api.responses.retrieve(response.id)


def test_sampling_keeps_stored_responses() -> None:
    """``store`` defaults to true, and stored responses are never sampled away; ``store=False``
    ones are (usage-only records at sample rate 0)."""
    with gateway(audit_env(DYN_AUDIT_SAMPLE_RATE="0")) as g:
        api = client(g)
        api.responses.create(model="mock", input="kept")
        api.responses.create(model="mock", input="sampled away", store=False)
        [record] = g.records(1)
        assert (record.mode, record.request["input"]) == ("full", "kept")  # type: ignore[index]


def test_redaction_headers_and_integrity(workdir: str) -> None:
    """Redaction reaches the request and the response object (and what retrieve returns);
    listed headers are captured; the records are chained."""
    env = audit_env(
        DYN_AUDIT_REDACT="email",
        DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST="x-team,authorization",
        DYN_AUDIT_INTEGRITY="1",
        DYN_AUDIT_SINKS="sqlite",
        DYN_AUDIT_SQLITE_PATH=f"{workdir}/s.db",
    )
    with gateway(env, sinks=build_sinks(Settings.from_env(env).audit)) as g:
        api = client(g)
        response = api.responses.create(
            model="mock",
            input="Write to ada@example.com",
            instructions="Sign as bob@example.com",
            extra_headers={"x-team": "blue"},
        )
        stored = api.responses.retrieve(response.id)
        records = [r for r in g.records(1) if r.mode == "full"]
    [record] = records
    assert record.request == {
        "model": "mock",
        "input": "Write to [REDACTED:email]",
        "instructions": "Sign as [REDACTED:email]",
    }
    assert record.response["instructions"] == "Sign as [REDACTED:email]"  # type: ignore[index]
    assert stored.instructions == "Sign as [REDACTED:email]"
    assert record.http_request_headers == {"x-team": "blue", "authorization": "<redacted>"}
    assert record.integrity is not None


def test_a_client_that_goes_away_yields_a_cancelled_record() -> None:
    """A stream the client leaves mid-way: one record, ``cancelled``, whose response is the
    partial object (status ``cancelled``, the text so far)."""
    with gateway(audit_env(AUDITGATE_MOCK_ITL_MS="400")) as g:
        api = client(g)
        with api.responses.stream(model="mock", input="A long story, please.") as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    break
        [record] = g.records(1)
    assert (record.status, record.complete) == ("cancelled", False)
    response = record.response
    assert response is not None and response["status"] == "cancelled"  # type: ignore[index]
    assert response["output"][0]["status"] == "incomplete"  # type: ignore[index]


def durable_env(tmp_path: Path) -> dict[str, str]:
    return audit_env(DYN_AUDIT_DURABILITY="durable", DYN_AUDIT_SPOOL_DIR=str(tmp_path / "spool"))


def test_durable_holds_the_end_until_the_record_is_committed(tmp_path: Path) -> None:
    """Durable mode: with the spool's writer stopped, a stream whose answer is one batch (the
    mock's) sends nothing, not even its head; once the record is durable, the whole stream
    arrives, ending with ``response.completed``."""
    with gateway(durable_env(tmp_path)) as g:
        process = g.app.gateway.audit.bus.spool._process  # type: ignore[union-attr]
        assert process is not None
        body = json.dumps({"model": "mock", "input": "durable", "stream": True}).encode()
        sock = socket.create_connection(("127.0.0.1", g.server.port), timeout=10)
        try:
            os.kill(process.pid, signal.SIGSTOP)
            try:
                sock.sendall(
                    b"POST /v1/responses HTTP/1.1\r\nhost: g\r\n"
                    b"content-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%b" % (len(body), body)
                )
                sock.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    sock.recv(1)
            finally:
                os.kill(process.pid, signal.SIGCONT)
            sock.settimeout(10)
            data = b""
            while not data.endswith(b"0\r\n\r\n"):
                data += sock.recv(65536)
        finally:
            sock.close()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"event: response.created" in data and b"event: response.completed" in data
        [record] = g.records(1)
    assert_stored(record)


def assert_stored(record: AuditRecord) -> None:
    assert (record.endpoint, record.mode, record.complete) == ("responses", "full", True)
