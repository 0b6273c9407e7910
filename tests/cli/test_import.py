"""``auditgate import``: Dynamo's real files (captured from 1.6.1) and our own into a store,
readable with the openai SDK, idempotent and resumable."""

from __future__ import annotations

import asyncio
import gzip
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from auditgate.audit.record import Envelope
from auditgate.cli.imports import main as import_main
from auditgate.errors import SinkError
from auditgate.importer import Importer, State, expand
from auditgate.sinks.jsonl import JsonlSink
from auditgate.sinks.sqlite import SqliteSink
from tests.cli.test_consume_dynamo import expected, read_back
from tests.dynamo import fixtures
from tests.store.records import make_record, read_sqlite

FILES = fixtures.ROOT / "1.6.1" / "files"
RECORDS = 12
"""Requests (9) and tool rows (3) in the 1.6.1 files."""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A copy of Dynamo 1.6.1's files (its gz segments ``trace.NNNNNN.jsonl.gz`` and
    ``trace.jsonl``)."""
    copy = tmp_path / "dynamo"
    shutil.copytree(FILES, copy)
    return copy


def test_dynamo_files_are_readable_with_the_sdk_after_import(files: Path, tmp_path: Path) -> None:
    """A segment prefix and a jsonl file of Dynamo's: every answer retrievable as answered."""
    db = tmp_path / "out.db"
    code = import_main(
        [str(files / "trace"), str(files / "trace.jsonl"), "--to", f"sqlite:///{db}"]
    )
    assert code == 0
    assert len(read_sqlite(str(db))) == RECORDS
    assert read_back(f"sqlite:///{db}", tmp_path, "1.6.1") == expected("1.6.1")


def test_a_second_import_stores_nothing_twice_and_reads_nothing_again(
    files: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rerun with the state file: no line read again; without it: the rows are not doubled."""
    db = tmp_path / "out.db"
    args = [str(files / "trace"), str(files / "trace.jsonl"), "--to", f"sqlite:///{db}"]
    assert import_main(args) == 0
    first = read_sqlite(str(db))
    caplog.clear()
    caplog.set_level(logging.INFO, logger="auditgate.import")
    assert import_main(args) == 0
    assert "lines=0 written=0" in caplog.text
    assert import_main([*args, "--no-state"]) == 0
    assert read_sqlite(str(db)) == first


class FailingSink(SqliteSink):
    """An SQLite target whose writes fail after ``ok`` of them, as a target that goes away."""

    def __init__(self, path: str, ok: int) -> None:
        super().__init__(path)
        self.ok = ok

    async def write(self, batch: Sequence[Envelope]) -> None:
        if self.ok == 0:
            raise SinkError("target went away")
        self.ok -= 1
        await super().write(batch)


async def run_importer(paths: list[str], sink: SqliteSink, state: Path) -> int:
    """Import ``paths`` into ``sink`` in batches of 2; the lines read."""
    importer = Importer(expand(paths), sink, state=State(state), batch=2)
    await sink.open()
    try:
        return (await importer.run()).lines
    finally:
        await sink.close()


async def test_an_interrupted_import_goes_on_where_it_stopped(files: Path, tmp_path: Path) -> None:
    """A target failing mid-import: the rerun reads only the rest, and the store is complete."""
    db, state = tmp_path / "out.db", tmp_path / "state.json"
    paths = [str(files / "trace"), str(files / "trace.jsonl")]
    total = sum(len(lines) for lines in fixtures.file_lines("1.6.1").values())
    with pytest.raises(SinkError):
        await run_importer(paths, FailingSink(str(db), ok=2), state)
    stored_before = len(read_sqlite(str(db)))
    again = await run_importer(paths, SqliteSink(str(db)), state)
    assert 0 < stored_before < RECORDS
    assert 0 < again < total
    assert len(read_sqlite(str(db))) == RECORDS


def test_a_cut_off_segment_is_read_up_to_its_last_complete_line(
    files: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment whose writer died mid-member: its complete lines are imported, the cut logged."""
    segment = files / "trace.000000.jsonl.gz"
    whole = gzip.decompress(segment.read_bytes()).splitlines()
    segment.write_bytes(segment.read_bytes()[:-20])
    db = tmp_path / "out.db"
    assert import_main([str(segment), "--to", f"sqlite:///{db}", "--no-state"]) == 0
    assert "cut-off gzip member" in caplog.text
    assert 0 < len(read_sqlite(str(db))) <= len(whole)


def test_our_own_jsonl_file_imports_unchanged(tmp_path: Path) -> None:
    """auditgate's own jsonl file: the store holds exactly the records written."""
    records = [make_record(i) for i in range(20)]
    source = tmp_path / "audit.jsonl"

    async def write() -> None:
        sink = JsonlSink(str(source))
        await sink.open()
        await sink.write([Envelope(r) for r in records])
        await sink.close()

    asyncio.run(write())
    db = tmp_path / "own.db"
    assert import_main([str(source), "--to", f"sqlite:///{db}", "--input-format", "auditgate"]) == 0
    assert read_sqlite(str(db)) == records


def test_lines_that_are_not_records_are_counted_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Garbage lines do not stop an import; they are counted, and the exit status says so."""
    source = tmp_path / "mixed.jsonl"
    good = Envelope(make_record(1)).json.decode()
    source.write_text(f'{good}\nnot json\n{{"schema": "other"}}\n')
    db = tmp_path / "mixed.db"
    code = import_main([str(source), "--to", f"sqlite:///{db}", "--no-state", "--progress"])
    assert (code, len(read_sqlite(str(db)))) == (1, 1)
    err = capsys.readouterr().err
    assert "100.0% 1 records" in err and "invalid=2" in err


def test_a_path_that_is_nothing_is_a_usage_error(tmp_path: Path) -> None:
    """Neither a file nor a segment prefix: exit 2."""
    assert import_main([str(tmp_path / "nothing"), "--to", f"sqlite:///{tmp_path}/x.db"]) == 2
