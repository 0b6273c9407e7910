"""``auditgate verify`` over trails a real gateway wrote: intact, then damaged on purpose."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from auditgate.cli.main import main
from tests.support.server import gateway

KEY = "verify-test-key"
REQUESTS = 6


def run_gateway(
    env: dict[str, str], requests: int = REQUESTS, extra: dict[str, Any] | None = None
) -> None:
    """Start a gateway with ``env``, send ``requests`` stored completions (with the ``extra``
    body fields), stop it."""
    with gateway(env, configured_sinks=True) as g:
        with httpx.Client(base_url=g.base_url, timeout=10) as client:
            for i in range(requests):
                body = {
                    "model": "mock",
                    "store": True,
                    "messages": [{"role": "user", "content": f"question {i}"}],
                    **(extra or {}),
                }
                assert client.post("/chat/completions", json=body).status_code == 200
        g.records(requests + requests // 4)  # a checkpoint every 4; the final one at stop


def base_env(workdir: str, sinks: str, **extra: str) -> dict[str, str]:
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": sinks,
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_INTEGRITY_KEY": KEY,
        "DYN_AUDIT_CHECKPOINT_EVERY": "4",
        "DYN_AUDIT_OUTPUT_PATH": f"{workdir}/audit.jsonl",
        "DYN_AUDIT_SQLITE_PATH": f"{workdir}/audit.db",
        "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": "10",
    }
    env.update(extra)
    return env


def verify(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, dict[str, Any]]:
    """Run ``auditgate verify --json`` with the key in the environment."""
    monkeypatch.setenv("DYN_AUDIT_INTEGRITY_KEY", KEY)
    capsys.readouterr()
    code = main(["verify", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def findings(report: dict[str, Any]) -> list[tuple[str, int | None, str | None]]:
    """``(kind, seq, location)`` of every damage finding."""
    return [
        (f["kind"], f["seq"], f["location"])
        for w in report["writers"]
        for f in w["findings"]
        if f["damage"]
    ] + [(f["kind"], f["seq"], f["location"]) for f in report["invalid"]]


@pytest.fixture
def trail(workdir: str) -> Path:
    """A jsonl trail of one writer: 6 records, checkpoints at seq 4 and (final) 7."""
    run_gateway(base_env(workdir, "jsonl"))
    return Path(workdir) / "audit.jsonl"


def test_intact_jsonl(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trail a gateway wrote verifies clean, with its checkpoints counted."""
    code, report = verify(capsys, monkeypatch, str(trail))
    writer = report["writers"][0]
    summary = (writer["records"], writer["checkpoints"], writer["last_checkpoint_seq"])
    assert (code, report["intact"], summary, writer["findings"]) == (0, True, (8, 2, 7), [])


def test_edited_byte(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One changed byte names that line as modified."""
    lines = trail.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"question 2", b"question X", 1)
    trail.write_bytes(b"".join(lines))
    assert (1, [("modified", 2, f"{trail}:3")]) == _damage(capsys, monkeypatch, trail)


def test_deleted_line(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted line is a missing seq."""
    lines = trail.read_bytes().splitlines(keepends=True)
    del lines[1]
    trail.write_bytes(b"".join(lines))
    assert _damage(capsys, monkeypatch, trail) == (1, [("missing", 1, None)])


def test_swapped_lines(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two swapped lines are reordered at the line that moved up."""
    lines = trail.read_bytes().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    trail.write_bytes(b"".join(lines))
    assert (1, [("reordered", 2, f"{trail}:4")]) == _damage(capsys, monkeypatch, trail)


def test_dropped_tail(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without its last two lines the trail has a record after its last checkpoint."""
    lines = trail.read_bytes().splitlines(keepends=True)
    trail.write_bytes(b"".join(lines[:-2]))
    assert (1, [("unsealed", 5, f"{trail}:6")]) == _damage(capsys, monkeypatch, trail)


def test_wrong_key(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another key fails both checkpoint signatures."""
    monkeypatch.setenv("OTHER_KEY", "not-the-key")
    capsys.readouterr()
    code = main(["verify", "--json", "--key-env", "OTHER_KEY", str(trail)])
    report = json.loads(capsys.readouterr().out)
    assert (1, [("bad_signature", 4, f"{trail}:5"), ("bad_signature", 7, f"{trail}:8")]) == (
        code,
        findings(report),
    )


def test_multi_writer_gz_segments(
    workdir: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateway runs (two writers) into one jsonl_gz prefix verify clean, each on its own."""
    env = base_env(workdir, "jsonl_gz", DYN_AUDIT_OUTPUT_PATH=f"{workdir}/seg")
    run_gateway(env)
    run_gateway(env, requests=3)
    code, report = verify(capsys, monkeypatch, f"{workdir}/seg")
    counts = sorted((w["records"], w["intact"]) for w in report["writers"])
    assert (code, counts) == (0, [(4, True), (8, True)])
    segment = sorted(Path(workdir).glob("seg.*.jsonl.gz"))[0]
    lines = gzip.decompress(segment.read_bytes()).splitlines(keepends=True)
    segment.write_bytes(gzip.compress(b"".join(lines[:1] + lines[2:])))
    code, report = verify(capsys, monkeypatch, f"{workdir}/seg")
    assert (code, findings(report)) == (1, [("missing", 1, None)])


def test_sqlite_store(
    workdir: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQLite store verifies clean; an edited, a deleted and two swapped rows are named."""
    run_gateway(base_env(workdir, "sqlite"))
    db = f"{workdir}/audit.db"
    code, report = verify(capsys, monkeypatch, db)
    assert (code, report["intact"]) == (0, True)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE completions SET model = 'other' WHERE seq = 1")
        conn.execute("DELETE FROM completions WHERE seq = 3")
        # Swap the positions of two records in the sequence.
        conn.execute(
            "UPDATE completions SET seq = CASE seq WHEN 5 THEN 6 ELSE 5 END WHERE seq IN (5, 6)"
        )
        rowids = dict(conn.execute("SELECT seq, rowid FROM completions"))
    conn.close()
    code, report = verify(capsys, monkeypatch, f"sqlite:///{db}")
    expected = [
        ("modified", 1, f"rowid {rowids[1]}"),
        ("missing", 3, None),
        ("modified", 5, f"rowid {rowids[5]}"),
        ("broken_link", 5, f"rowid {rowids[5]}"),
        ("modified", 6, f"rowid {rowids[6]}"),
        ("broken_link", 6, f"rowid {rowids[6]}"),
        ("broken_link", 7, f"rowid {rowids[7]}"),
    ]
    assert (1, expected) == (code, findings(report))


async def test_postgres_store(
    workdir: str,
    pg_dsn: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The PostgreSQL store (JSONB bodies) verifies clean, also with floats JSONB prints back
    as integers next to genuine big integers; a changed body, a deleted row and a cut tail are
    named."""
    env = base_env(workdir, "postgres", DYN_AUDIT_POSTGRES_URL=pg_dsn)
    big = {"x_vendor": {"scale": 1e16, "huge": 4.5e45, "count": 10**17, "ratio": 0.25}}
    await asyncio.to_thread(run_gateway, env, REQUESTS, big)
    code, report = await asyncio.to_thread(verify, capsys, monkeypatch, pg_dsn)
    assert (code, report["intact"]) == (0, True)
    conn = await asyncpg.connect(pg_dsn)
    try:
        rid = await conn.fetchval("SELECT request_id FROM completions WHERE seq = 2")
        last = await conn.fetchval("SELECT request_id FROM completions WHERE seq = 5")
        await conn.execute(
            "UPDATE completions SET request = jsonb_set(request, '{messages,0,content}', "
            "'\"forged\"') WHERE seq = 2"
        )
        await conn.execute("DELETE FROM completions WHERE seq IN (1, 6, 7)")
    finally:
        await conn.close()
    code, report = await asyncio.to_thread(verify, capsys, monkeypatch, pg_dsn)
    assert (
        1,
        [
            ("missing", 1, None),
            ("modified", 2, f"request_id {rid}"),
            ("unsealed", 5, f"request_id {last}"),
        ],
    ) == (code, [(k, s, loc) for k, s, loc in findings(report)])


async def test_nats_stream(
    workdir: str,
    nats_url: str,
    nats_names: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The JetStream stream the nats sink filled verifies clean."""
    stream, subject = nats_names
    env = base_env(
        workdir,
        "nats",
        DYN_AUDIT_NATS_URL=nats_url,
        DYN_AUDIT_NATS_STREAM=stream,
        DYN_AUDIT_NATS_SUBJECT=subject,
    )
    await asyncio.to_thread(run_gateway, env)
    code, report = await asyncio.to_thread(
        verify, capsys, monkeypatch, nats_url, "--stream", stream
    )
    assert (code, report["intact"], report["writers"][0]["records"]) == (0, True, 8)


def _damage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, trail: Path
) -> tuple[int, list[tuple[str, int | None, str | None]]]:
    code, report = verify(capsys, monkeypatch, str(trail))
    return code, findings(report)
