"""``auditgate verify`` over a store a real gateway filled: every column is checked against the
record it was computed from, API updates and deletes stay intact."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import asyncpg
import openai
import pytest

from auditgate.cli.main import main
from tests.cli.test_verify import KEY, verify
from tests.support.server import gateway

# What the gateway is asked, in order (request i gets seq i): (content, metadata).
REQUESTS: list[tuple[str, dict[str, str] | None]] = [
    ("tokens: prompt and total", None),
    ("tokens: completion", None),
    ("response id: forged", None),
    ("response id: a clash that is not one", None),
    ("metadata kept exactly in originals", {"a": "b\x00c", "team": "x"}),
    ("request kept exactly in originals \x00", None),
    ("originals: a stray entry", None),
    ("side table: a pair added", {"team": "y"}),
    ("side table: a pair removed", {"team": "z", "keep": "k"}),
    ("model", None),
    ("created_at", None),
    ("status", None),
    ("tenant", None),
    ("complete", None),
]
FINAL = len(REQUESTS)
"""The seq of the gateway's final checkpoint."""

# One change per record (seq), each naming the column verify must report, or "modified" when
# the column is one of the record's own fields (then the chain itself catches it).
TAMPER: dict[str, list[str]] = {
    "both": [
        "UPDATE completions SET prompt_tokens = prompt_tokens + 100000, "
        "total_tokens = total_tokens + 100000 WHERE seq = 0",
        "UPDATE completions SET completion_tokens = completion_tokens + 1 WHERE seq = 1",
        "UPDATE completions SET response_id = 'chatcmpl-forged' WHERE seq = 2",
        "UPDATE completions SET response_id = response_id || '.1' WHERE seq = 3",
        "UPDATE completions SET originals = '{\"x\": 1}' WHERE seq = 6",
        "UPDATE completions SET model = 'forged' WHERE seq = 9",
        "UPDATE completions SET created_at = created_at + 1 WHERE seq = 10",
        "UPDATE completions SET status = 'error' WHERE seq = 11",
        "UPDATE completions SET tenant = 'forged' WHERE seq = 12",
    ],
    "sqlite": [
        'UPDATE completions SET metadata = \'{"a":"forged","team":"x"}\' WHERE seq = 4',
        "UPDATE completions SET request = "
        "json_set(request, '$.messages[0].content', 'forged') WHERE seq = 5",
        "INSERT INTO completion_metadata "
        "SELECT request_id, 'team', 'forged', created_at FROM completions WHERE seq = 7",
        "DELETE FROM completion_metadata WHERE key = 'keep' AND request_id = "
        "(SELECT request_id FROM completions WHERE seq = 8)",
        "UPDATE completions SET complete = 2 WHERE seq = 13",
        "INSERT INTO completion_metadata VALUES ('no-such-request', 'team', 'a', 0)",
    ],
    "postgres": [
        'UPDATE completions SET metadata = \'{"a": "forged", "team": "x"}\'::jsonb WHERE seq = 4',
        "UPDATE completions SET request = "
        "jsonb_set(request, '{messages,0,content}', '\"forged\"') WHERE seq = 5",
    ],
}
EXPECTED: dict[str, list[tuple[str, str | None, int]]] = {
    "sqlite": [
        ("column_mismatch", "prompt_tokens", 0),
        ("column_mismatch", "total_tokens", 0),
        ("column_mismatch", "completion_tokens", 1),
        ("column_mismatch", "response_id", 2),
        ("column_mismatch", "response_id", 3),
        ("column_mismatch", "metadata", 4),
        # The side table follows the metadata column (a trigger), so it differs from the record.
        ("column_mismatch", "completion_metadata", 4),
        ("column_mismatch", "request", 5),
        ("column_mismatch", "originals", 6),
        ("column_mismatch", "completion_metadata", 7),
        ("column_mismatch", "completion_metadata", 8),
        ("modified", None, 9),
        ("modified", None, 10),
        ("modified", None, 11),
        ("modified", None, 12),
        ("column_mismatch", "complete", 13),
    ],
    "postgres": [
        ("column_mismatch", "prompt_tokens", 0),
        ("column_mismatch", "total_tokens", 0),
        ("column_mismatch", "completion_tokens", 1),
        ("column_mismatch", "response_id", 2),
        ("column_mismatch", "response_id", 3),
        ("column_mismatch", "metadata", 4),
        ("column_mismatch", "request", 5),
        ("column_mismatch", "originals", 6),
        ("modified", None, 9),
        ("modified", None, 10),
        ("modified", None, 11),
        ("modified", None, 12),
    ],
}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, workdir: str) -> tuple[str, dict[str, str]]:
    """``(dialect, gateway settings)`` for a gateway whose sink and store is SQLite or a fresh
    PostgreSQL database, with integrity on."""
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_INTEGRITY_KEY": KEY,
    }
    if request.param == "sqlite":
        env.update(DYN_AUDIT_SINKS="sqlite", DYN_AUDIT_SQLITE_PATH=f"{workdir}/store.db")
    else:
        env.update(
            DYN_AUDIT_SINKS="postgres", DYN_AUDIT_POSTGRES_URL=request.getfixturevalue("pg_dsn")
        )
    return request.param, env


def source(env: dict[str, str]) -> str:
    """The ``auditgate verify`` source of the store ``env`` configures."""
    if env["DYN_AUDIT_SINKS"] == "sqlite":
        return f"sqlite:///{env['DYN_AUDIT_SQLITE_PATH']}"
    return env["DYN_AUDIT_POSTGRES_URL"]


def serve(env: dict[str, str], requests: list[tuple[str, dict[str, str] | None]], api: Any) -> None:
    """Run a gateway, send ``requests`` as stored completions through the SDK, wait until the
    store lists them all, call ``api(client, ids)``, stop the gateway (its final checkpoint)."""
    with gateway(env, configured_sinks=True) as g:
        client = openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)
        ids = [
            client.chat.completions.create(
                model="mock",
                messages=[{"role": "user", "content": content}],
                store=True,
                metadata=metadata,
            ).id
            for content, metadata in requests
        ]
        deadline = time.monotonic() + 10
        while len(client.chat.completions.list(limit=100).data) < len(ids):
            assert time.monotonic() < deadline, "the store did not catch up"
            time.sleep(0.01)
        api(client, ids)


def tamper(env: dict[str, str], statements: list[str]) -> None:
    """Run ``statements`` directly against the store, as someone with database access would."""
    if env["DYN_AUDIT_SINKS"] == "sqlite":
        conn = sqlite3.connect(env["DYN_AUDIT_SQLITE_PATH"])
        with conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
        return

    async def run() -> None:
        conn = await asyncpg.connect(env["DYN_AUDIT_POSTGRES_URL"])
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def findings(report: dict[str, Any], *, damage: bool) -> list[tuple[str, str | None, int | None]]:
    """``(kind, column, seq)`` of every finding that is (or is not) damage, in report order."""
    return [
        (f["kind"], f["column"], f["seq"])
        for w in report["writers"]
        for f in w["findings"]
        if f["damage"] is damage
    ]


def no_api_calls(client: openai.OpenAI, ids: list[str]) -> None:
    """Nothing but the requests."""


def test_every_column_is_checked_against_its_record(
    store: tuple[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store verifies intact; then each column changed directly in the database is named, with
    its record, or (a field of the record itself) makes that record modified."""
    dialect, env = store
    serve(env, REQUESTS, no_api_calls)
    before = verify(capsys, monkeypatch, source(env))
    tamper(env, TAMPER["both"] + TAMPER[dialect])
    code, report = verify(capsys, monkeypatch, source(env))
    orphans = [(f["kind"], f["location"]) for f in report["invalid"]]
    expected_orphans = (
        [("invalid", "completion_metadata request_id no-such-request")]
        if dialect == "sqlite"
        else []
    )
    assert ((0, True, []), (1, EXPECTED[dialect], expected_orphans)) == (
        (before[0], before[1]["intact"], findings(before[1], damage=True)),
        (code, findings(report, damage=True), orphans),
    )
    tokens = report["writers"][0]["findings"][0]
    expected_line = (
        f"  column_mismatch [prompt_tokens]: seq 0 at {tokens['location']} "
        f"request_id={tokens['request_id']}: {tokens['detail']}"
    )
    capsys.readouterr()
    assert (main(["verify", source(env)]), expected_line in capsys.readouterr().out) == (1, True)


def test_a_store_older_than_recorded_metadata_verifies(
    store: tuple[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store whose schema predates the API's metadata columns verifies as before."""
    _, env = store
    serve(env, REQUESTS[:2], no_api_calls)
    tamper(
        env,
        [
            "ALTER TABLE completions DROP COLUMN recorded_metadata",
            "ALTER TABLE completions DROP COLUMN metadata_updated_at",
            "DELETE FROM schema_migrations WHERE name = 'm004_recorded_metadata'",
        ],
    )
    code, report = verify(capsys, monkeypatch, source(env))
    assert (code, report["intact"], report["writers"][0]["records"]) == (0, True, 3)


def test_api_updates_and_deletes_stay_intact(
    store: tuple[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Metadata replaced and completions deleted through the API leave the store intact, each
    replacement a warning; a changed recorded_metadata makes its record modified."""
    _, env = store
    requests: list[tuple[str, dict[str, str] | None]] = [
        ("kept exactly", {"a": "b\x00c"}),
        ("updated then deleted", {"team": "x"}),
        ("deleted", None),
        ("untouched", {"team": "y"}),
    ]

    def calls(client: openai.OpenAI, ids: list[str]) -> None:
        client.chat.completions.update(ids[0], metadata={"reviewed": "yes"})
        client.chat.completions.update(ids[0], metadata={"reviewed": "again\x00"})
        client.chat.completions.update(ids[1], metadata={})
        client.chat.completions.delete(ids[1])
        client.chat.completions.delete(ids[2])
        listed = [c.id for c in client.chat.completions.list(limit=100).data]
        kept = client.chat.completions.retrieve(ids[0]).metadata
        assert (listed, kept) == ([ids[0], ids[3]], {"reviewed": "again\x00"})

    serve(env, requests, calls)
    code, report = verify(capsys, monkeypatch, source(env))
    updated = [("metadata_updated", "metadata", 0), ("metadata_updated", "metadata", 1)]
    assert (0, True, updated, []) == (
        code,
        report["intact"],
        findings(report, damage=False),
        findings(report, damage=True),
    )
    tamper(env, ['UPDATE completions SET recorded_metadata = \'{"a": "b"}\' WHERE seq = 0'])
    code, report = verify(capsys, monkeypatch, source(env))
    assert (code, findings(report, damage=True)) == (1, [("modified", None, 0)])
