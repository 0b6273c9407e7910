"""``auditgate consume`` on Dynamo's own stream: the messages Dynamo 0.7.1 and 1.6.1 really
published (captured fixtures), through real NATS into SQLite and PostgreSQL, read back with the
official openai SDK through the stored-completions API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.js.api
import openai
import pytest

from tests.cli.test_consume import (
    consume_args,
    consumer_state,
    pg_count,
    sqlite_count,
    wait_until,
)
from tests.dynamo import fixtures
from tests.store.records import read_sqlite
from tests.support.gateway import running_gateway
from tests.support.nats import start_consume

ROOT = fixtures.ROOT


async def publish_raw(nats_url: str, stream: str, subject: str, version: str) -> int:
    """Publish every captured message of ``version`` as Dynamo did (bare JSON, no msg id)."""
    lines = (ROOT / version / "nats.jsonl").read_text().splitlines()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(nats.js.api.StreamConfig(name=stream, subjects=[subject]))
        for line in lines:
            await js.publish(subject, json.loads(line)["data"].encode())
    finally:
        await nc.close()
    return len(lines)


def answered(version: str) -> list[dict[str, Any]]:
    """The requests Dynamo audited and answered (0.x: only store: true ones)."""
    return [
        a
        for a in fixtures.answers(version)
        if not a.get("abandoned") and (version >= "1" or a["request"].get("store"))
    ]


def read_back(store_url: str, tmp_path: Path, version: str) -> dict[str, Any]:
    """What the stored-completions API of a gateway on ``store_url`` returns for the answers."""
    env = {"AUDITGATE_STORE_URL": store_url}
    with (
        running_gateway(env, log_dir=tmp_path) as gateway,
        openai.OpenAI(base_url=gateway.base_url, api_key="unused") as client,
    ):
        listed = sorted(c.id for c in client.chat.completions.list(limit=100).data)
        got = {}
        for answer in answered(version):
            rid = answer["response"]["id"]
            stored = client.chat.completions.retrieve(rid)
            messages = client.chat.completions.messages.list(rid, order="asc")
            got[rid] = (
                [c.message.content for c in stored.choices],
                [m.content for m in messages.data],
            )
    return {"listed": listed, "completions": got}


def expected(version: str) -> dict[str, Any]:
    return {
        "listed": sorted(a["response"]["id"] for a in answered(version)),
        "completions": {
            a["response"]["id"]: (
                fixtures.content(a),
                [m["content"] for m in a["request"]["messages"]],
            )
            for a in answered(version)
        },
    }


@pytest.mark.parametrize("version", fixtures.VERSIONS)
async def test_dynamo_stream_into_sqlite_is_readable_with_the_sdk(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path, version: str
) -> None:
    """Every request Dynamo answered is retrievable, listed and has its messages, as answered."""
    stream, subject = nats_names
    count = await publish_raw(nats_url, stream, subject, version)
    db = tmp_path / "dynamo.db"
    chats = len(
        [a for a in fixtures.answers(version) if version >= "1" or a["request"].get("store")]
    )
    tools = 3 if version >= "1" else 0
    consumer = start_consume(
        consume_args(nats_url, nats_names, "d1", f"sqlite:///{db}"), log_dir=tmp_path
    )
    try:
        await wait_until(lambda: sqlite_count(db), chats + tools)
    finally:
        assert consumer.stop() == 0
    summary = consumer.summary()
    assert (summary["written"], summary["dynamo"], summary["invalid"]) == (
        chats + tools,
        chats + tools,
        0,
    )
    # Every message acknowledged, the rows held for their partner included.
    assert await consumer_state(nats_url, stream, "d1") == (count, 0, 0)
    assert read_back(f"sqlite:///{db}", tmp_path, version) == expected(version)


async def test_dynamo_trace_stream_into_postgres_is_readable_with_the_sdk(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path, pg_dsn: str
) -> None:
    """The same for Dynamo 1.6.1 into PostgreSQL, with --input-format forced."""
    stream, subject = nats_names
    await publish_raw(nats_url, stream, subject, "1.6.1")
    args = consume_args(nats_url, nats_names, "d1", pg_dsn)
    consumer = start_consume([*args, "--input-format", "dynamo-request-trace"], log_dir=tmp_path)
    try:
        await wait_until(lambda: _pg_count(pg_dsn), 12)
    finally:
        assert consumer.stop() == 0
    assert consumer.summary()["written"] == 12
    assert read_back(pg_dsn, tmp_path, "1.6.1") == expected("1.6.1")


async def test_a_payload_row_whose_timing_never_comes_is_stored_alone(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """Only request_payload rows: each is stored without timing once half the ack wait passed,
    and acknowledged."""
    stream, subject = nats_names
    rows = [v for v in fixtures.messages("1.6.1") if v["event_type"] == "request_payload"]
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(nats.js.api.StreamConfig(name=stream, subjects=[subject]))
        for row in rows:
            await js.publish(subject, json.dumps(row).encode())
    finally:
        await nc.close()
    db = tmp_path / "alone.db"
    args = consume_args(nats_url, nats_names, "d1", f"sqlite:///{db}")
    consumer = start_consume([*args, "--ack-wait", "2"], log_dir=tmp_path)
    try:
        await wait_until(lambda: sqlite_count(db), len(rows))
        await wait_until(lambda: consumer_state(nats_url, stream, "d1"), (len(rows), 0, 0))
    finally:
        assert consumer.stop() == 0
    stored = read_sqlite(str(db))
    assert sorted((r.request_id, r.ttft_ms, r.duration_ms) for r in stored) == sorted(
        (row["payload"]["request_id"], None, 0.0) for row in rows
    )


async def test_a_forced_format_terminates_other_records(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """--input-format dynamo-audit: 1.6.1's trace rows are invalid there, counted, terminated."""
    stream, subject = nats_names
    count = await publish_raw(nats_url, stream, subject, "1.6.1")
    db = tmp_path / "none.db"
    args = consume_args(nats_url, nats_names, "d1", f"sqlite:///{db}")
    consumer = start_consume([*args, "--input-format", "dynamo-audit"], log_dir=tmp_path)
    try:
        consumer.wait_for_log(r"not an audit record", timeout=30)
        # Terminated messages leave nothing to deliver and nothing unacknowledged.
        await wait_until(lambda: consumer_state(nats_url, stream, "d1"), (count, 0, 0))
    finally:
        assert consumer.stop() == 0
    assert (consumer.summary()["invalid"], consumer.summary()["written"]) == (count, 0)


async def _pg_count(dsn: str) -> int:
    try:
        return await pg_count(dsn)
    except asyncpg.UndefinedTableError:  # the table appears with the consumer's first write
        return 0
