"""Audit records for store and sink tests: every optional field set, unicode, NUL, ~4 KiB."""

from __future__ import annotations

import uuid
from typing import Any

from auditgate.audit.record import AuditRecord, ErrorInfo, Integrity

_TEXT = "Grüße, 世界! 🚀 naïve café — " * 8


def make_record(seq: int, *, writer: str = "host-1:4242:9f3a61c2", **changes: Any) -> AuditRecord:
    """A full, completed, streamed record of about 4 KiB with every optional field set."""
    request_id = str(uuid.uuid4())
    content = f"{_TEXT} answer {seq} " * 7
    fields: dict[str, Any] = {
        "request_id": request_id,
        "requested_streaming": True,
        "mode": "full",
        "model": "mock",
        "usage": {"prompt_tokens": 12 + seq, "completion_tokens": 30, "total_tokens": 42 + seq},
        "request": {
            "model": "mock",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"question {seq}: {_TEXT}"},
            ],
            "store": True,
            "stream": True,
            "temperature": 0.7,
            "metadata": {"team": "a"},
            "unknown_field": [1, 2.5, None, True, {"nested": "ok"}],
        },
        "response": {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": 1758740068,
            "model": "mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        },
        "engine": "mock",
        "status": "completed",
        "complete": True,
        "error": ErrorInfo(type="api_error", message="partial failure ü", status_code=502),
        "created_at": 1758740068123 + seq,
        "completed_at": 1758740068456 + seq,
        "ttft_ms": 12.5,
        "duration_ms": 333.1,
        "tenant": "tenant-ü",
        "metadata": {"team": "a", "run": str(seq), "emoji": "🚀"},
        "client_request_id": f"client-{seq}",
        "engine_response_id": f"engine-{seq}",
        "http_request_headers": {"user-agent": "pytest", "x-trace": "abc"},
        "writer": writer,
        "seq": seq,
        "integrity": Integrity(prev="0" * 64, hash="f" * 64),
    }
    fields.update(changes)
    return AuditRecord(**fields)


def minimal_record(seq: int) -> AuditRecord:
    """A usage_only record: every optional field left out, nullable ones None."""
    return AuditRecord(
        request_id=str(uuid.uuid4()),
        requested_streaming=False,
        mode="usage_only",
        model="mock",
        usage=None,
        engine="mock",
        status="cancelled",
        complete=False,
        created_at=1758740068000 + seq,
        completed_at=1758740068001 + seq,
        ttft_ms=None,
        duration_ms=1.0,
        writer="host-2:1:abcd",
        seq=seq,
    )


def nul_record(seq: int) -> AuditRecord:
    """A record whose strings hold NUL characters everywhere a client (or engine) can put one."""
    record = make_record(seq)
    assert isinstance(record.request, dict)
    request = dict(record.request)
    request["messages"] = [{"role": "user", "content": "nul \x00 here \\u0000 literal"}]
    request["weird\x00key"] = "v\x00"
    return make_record(
        seq,
        request=request,
        model="mo\x00del",
        tenant="t\x00",
        metadata={"k\x00": "v\x00", "plain": "ok"},
        client_request_id="c\x00",
    )


def surrogate_record(seq: int) -> AuditRecord:
    """A record holding lone surrogates (only Python code can build one; no codec accepts it)."""
    record = make_record(seq)
    assert isinstance(record.response, dict)
    response = dict(record.response)
    response["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "x\ud800y"}}]
    return make_record(
        seq, response=response, metadata={"k": "\udcff"}, engine_response_id="\ud83d"
    )


def extreme_record(seq: int) -> AuditRecord:
    """A record with numbers beyond 64 bits and non-finite floats where the types allow them."""
    usage = {"prompt_tokens": 2**70, "completion_tokens": -1, "total_tokens": 2**70 - 1}
    record = make_record(seq, usage=usage, ttft_ms=float("inf"), duration_ms=-0.0)
    record.seq = 2**64 + seq
    return record


def read_sqlite(path: str) -> list[AuditRecord]:
    """Every record stored in the SQLite store at ``path``, in ``seq`` order."""
    from auditgate.store import sqlite as store
    from auditgate.store.schema import SELECT_COLUMNS, TABLE, record_from_row

    conn = store.connect(path)
    try:
        rows = conn.execute(f"SELECT {SELECT_COLUMNS} FROM {TABLE} ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [record_from_row(row) for row in rows]


async def read_postgres(dsn: str, schema: str | None = None) -> list[AuditRecord]:
    """Every record stored in the PostgreSQL store at ``dsn``, in ``seq`` order."""
    import asyncpg

    from auditgate.store.schema import SELECT_COLUMNS, TABLE, record_from_row

    table = TABLE if schema is None else f"{schema}.{TABLE}"
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT {SELECT_COLUMNS} FROM {table} ORDER BY seq")
    finally:
        await conn.close()
    return [record_from_row(row) for row in rows]
