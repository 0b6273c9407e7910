"""Redaction and header capture through the gateway: no secret reaches the bytes of any sink."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from tests.support.server import gateway

EMAIL = "alice.secret@example.org"
API_KEY = "sk-proj-" + "Q7x" * 10
CARD = "4111 1111 1111 1111"
IP = "203.0.113.77"
BEARER = "gw-client-token-5f1e9a"
SECRETS = (EMAIL, API_KEY, CARD, IP, BEARER, "4111111111111111")


def send(base_url: str) -> dict[str, Any]:
    """One stored completion carrying every kind of secret, and a streamed one."""
    body: dict[str, Any] = {
        "model": "mock",
        "store": True,
        "messages": [
            {"role": "user", "content": f"mail {EMAIL}, key {API_KEY}"},
            {"role": "user", "content": [{"type": "text", "text": f"card {CARD} from {IP}"}]},
        ],
    }
    headers = {"Authorization": f"Bearer {BEARER}", "X-Team": "blue", "X-Api-Key": BEARER}
    with httpx.Client(base_url=base_url, timeout=10, headers=headers) as client:
        assert client.post("/chat/completions", json=body).status_code == 200
        streamed = client.post("/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 200
        metrics = client.get(base_url.removesuffix("/v1") + "/metrics").text
    return {"metrics": metrics}


async def test_redacted_in_every_sink(
    workdir: str,
    pg_dsn: str,
    nats_url: str,
    nats_names: tuple[str, str],
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    """stderr, jsonl, sqlite, postgres and nats all hold the markers and none of the secrets;
    listed credential headers are kept as ``<redacted>``; /metrics counts each kind."""
    stream, subject = nats_names
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "stderr,jsonl,sqlite,postgres,nats",
        "DYN_AUDIT_REDACT": "email,api_key,card,ip",
        "DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST": "authorization,x-team,x-api-key",
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_OUTPUT_PATH": f"{workdir}/audit.jsonl",
        "DYN_AUDIT_SQLITE_PATH": f"{workdir}/audit.db",
        "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": "10",
        "DYN_AUDIT_POSTGRES_URL": pg_dsn,
        "DYN_AUDIT_NATS_URL": nats_url,
        "DYN_AUDIT_NATS_STREAM": stream,
        "DYN_AUDIT_NATS_SUBJECT": subject,
    }

    def run() -> tuple[str, list[Any]]:
        with gateway(env, configured_sinks=True) as g:
            out = send(g.base_url)
            records = g.records(2)
        return out["metrics"], records

    metrics, records = await asyncio.to_thread(run)
    stderr = capfdbinary.readouterr().err
    stores: dict[str, bytes] = {
        "stderr": stderr,
        "jsonl": Path(f"{workdir}/audit.jsonl").read_bytes(),
        "sqlite": b"".join(p.read_bytes() for p in Path(workdir).glob("audit.db*")),
        "postgres": await _postgres_bytes(pg_dsn),
        "nats": await _nats_bytes(nats_url, stream),
    }
    leaks = {name: [s for s in SECRETS if s.encode() in data] for name, data in stores.items()}
    marked = {name: data.count(b"[REDACTED:email]") >= 2 for name, data in stores.items()}
    assert ({n: [] for n in stores}, {n: True for n in stores}) == (leaks, marked)
    first = records[0]
    assert (first.http_request_headers) == {
        "authorization": "<redacted>",
        "x-team": "blue",
        "x-api-key": "<redacted>",
    }
    assert [m["content"] for m in first.request["messages"]] == [
        "mail [REDACTED:email], key [REDACTED:api_key]",
        [{"type": "text", "text": "card [REDACTED:card] from [REDACTED:ip]"}],
    ]
    counted = sorted(
        line for line in metrics.splitlines() if line.startswith("auditgate_audit_redactions_total")
    )
    assert counted == [
        'auditgate_audit_redactions_total{kind="api_key"} 2.0',
        'auditgate_audit_redactions_total{kind="card"} 2.0',
        'auditgate_audit_redactions_total{kind="email"} 2.0',
        'auditgate_audit_redactions_total{kind="ip"} 2.0',
    ]


async def _postgres_bytes(dsn: str) -> bytes:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT completions::text AS t FROM completions")
    finally:
        await conn.close()
    return "\n".join(r["t"] for r in rows).encode()


async def _nats_bytes(url: str, stream: str) -> bytes:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            out.append(msg.data or b"")
        return b"\n".join(out)
    finally:
        await nc.close()


def test_authorization_never_captured_even_when_listed() -> None:
    """With credential headers listed for capture, the record holds ``<redacted>`` only."""
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST": "Authorization,Cookie,X-Session-Token,X-Team",
    }
    with gateway(env) as g:
        headers = {
            "Authorization": f"Bearer {BEARER}",
            "Cookie": f"session={BEARER}",
            "X-Session-Token": BEARER,
            "X-Team": "blue",
        }
        body = {"model": "mock", "store": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=g.base_url, timeout=10, headers=headers) as client:
            assert client.post("/chat/completions", json=body).status_code == 200
        (record,) = g.records(1)
        line = g.sink.lines[0]
    expected = {
        "authorization": "<redacted>",
        "cookie": "<redacted>",
        "x-session-token": "<redacted>",
        "x-team": "blue",
    }
    assert (expected, False) == (record.http_request_headers, BEARER.encode() in line)
