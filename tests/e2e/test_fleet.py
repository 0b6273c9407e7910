"""Gateway replicas feed one database: gateways -> NATS JetStream -> consumers -> PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import openai

from auditgate.audit.record import AuditRecord, decode_record
from auditgate.store import record_from_row
from tests.support.gateway import Gateway, start_gateway
from tests.support.nats import start_consume

N = 120


def gateway_env(nats_url: str, stream: str, subject: str, out: Path) -> dict[str, str]:
    return {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "nats,jsonl",
        "DYN_AUDIT_NATS_URL": nats_url,
        "DYN_AUDIT_NATS_STREAM": stream,
        "DYN_AUDIT_NATS_SUBJECT": subject,
        "DYN_AUDIT_OUTPUT_PATH": str(out),
        "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": "20",
    }


def one_request(gateway: Gateway, i: int) -> str:
    """A store: true request, stream or not; returns the completion id the client saw."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
    body = {
        "model": "mock",
        "messages": [{"role": "user", "content": f"request {i}: say something"}],
        "store": True,
        "metadata": {"i": str(i)},
    }
    if i % 2:
        chunks = list(client.chat.completions.create(**body, stream=True))  # type: ignore[call-overload]
        return str(chunks[0].id)
    return str(client.chat.completions.create(**body).id)  # type: ignore[call-overload]


async def rows(dsn: str) -> list[AuditRecord]:
    conn = await asyncpg.connect(dsn)
    try:
        return [record_from_row(r) for r in await conn.fetch("SELECT * FROM completions")]
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def test_two_gateways_two_consumers_one_database(
    tmp_path: Path, nats_url: str, nats_names: tuple[str, str], pg_dsn: str
) -> None:
    """N stored requests over two replicas become exactly N rows equal to the published records."""
    stream, subject = nats_names
    outs = [tmp_path / "gw-a.jsonl", tmp_path / "gw-b.jsonl"]
    gateways = [
        start_gateway(gateway_env(nats_url, stream, subject, out), log_dir=tmp_path) for out in outs
    ]
    consume_args = ["--nats-url", nats_url, "--stream", stream, "--subject", subject,
                    "--durable", "fleet", "--to", pg_dsn, "--batch", "32"]  # fmt: skip
    consumers = [start_consume(consume_args, log_dir=tmp_path, name=f"c{i}") for i in range(2)]
    try:
        with ThreadPoolExecutor(8) as pool:
            seen = await asyncio.gather(
                *(
                    asyncio.wrap_future(pool.submit(one_request, gateways[i % 2], i))
                    for i in range(N)
                )
            )
        for gateway in gateways:
            assert gateway.stop() == 0
        published = [decode_record(line) for out in outs for line in out.read_bytes().splitlines()]
        assert len(published) == N

        stored: list[AuditRecord] = []
        for _ in range(300):
            stored = await rows(pg_dsn)
            if len(stored) >= N:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        stored = await rows(pg_dsn)
    finally:
        for gateway in gateways:
            if gateway.process.poll() is None:
                gateway.stop(signal.SIGKILL)
        codes = [c.stop() for c in consumers]

    assert codes == [0, 0]
    assert len(stored) == N
    by_id = {r.request_id: r for r in stored}
    assert len(by_id) == N
    assert {r.request_id: r for r in published} == by_id
    assert sorted(seen) == sorted(r.response["id"] for r in stored if r.response)  # type: ignore[index]
    writers = {r.writer for r in stored}
    assert (writers, len(writers)) == ({r.writer for r in published}, 2)
    written = [c.summary()["written"] for c in consumers]
    assert sum(written) >= N, written  # >= : a redelivered batch is written again, harmlessly
    assert json.loads(outs[0].read_bytes().splitlines()[0])["mode"] == "full"
