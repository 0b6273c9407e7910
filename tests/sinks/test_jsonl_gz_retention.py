"""jsonl_gz retention (Dynamo's DYN_REQUEST_TRACE_FILE_MAX_BYTES / _FILE_MAX_AGE_SECS): old
segments go, a segment a writer has open never does."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from auditgate.audit.record import Envelope
from auditgate.config import AuditSettings
from auditgate.sinks.jsonl_gz import JsonlGzSink, existing_segments
from tests.store.records import make_record


def numbers(prefix: Path) -> list[int]:
    return [n for n, _ in existing_segments(str(prefix))]


async def write_segments(sink: JsonlGzSink, first: int, count: int) -> None:
    """``count`` one-record batches, each its own segment (roll_lines=1)."""
    for i in range(first, first + count):
        await sink.write([Envelope(make_record(i))])


async def test_finished_segments_stay_under_max_bytes_oldest_going_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past max_bytes the oldest finished segments are deleted, each deletion logged."""
    caplog.set_level(logging.INFO, logger="auditgate.sinks")
    prefix = tmp_path / "audit"
    probe = JsonlGzSink(str(prefix), roll_lines=1)
    await probe.open()
    await write_segments(probe, 0, 1)
    await probe.close()
    size = os.path.getsize(existing_segments(str(prefix))[0][1])
    os.remove(existing_segments(str(prefix))[0][1])
    sink = JsonlGzSink(str(prefix), roll_lines=1, max_bytes=3 * size + size // 2)
    await sink.open()
    await write_segments(sink, 0, 10)
    await sink.close()
    assert numbers(prefix) == [8, 9, 10]
    assert caplog.text.count("retention removed") == 7


async def test_segments_older_than_max_age_are_deleted(tmp_path: Path) -> None:
    """Finished segments last written more than max_age ago go at the next roll."""
    prefix = tmp_path / "audit"
    sink = JsonlGzSink(str(prefix), roll_lines=1, max_age_s=600)
    await sink.open()
    await write_segments(sink, 0, 3)
    hour_ago = time.time() - 3600
    for _, path in existing_segments(str(prefix))[:2]:
        os.utime(path, (hour_ago, hour_ago))
    await write_segments(sink, 3, 1)
    await sink.close()
    assert numbers(prefix) == [3, 4]


async def test_a_segment_another_writer_has_open_is_kept(tmp_path: Path) -> None:
    """Two writers on one prefix: the other's open segment survives, however old, until closed."""
    prefix = tmp_path / "audit"
    other = JsonlGzSink(str(prefix))
    await other.open()
    await other.write([Envelope(make_record(100))])  # stays open: no roll limit reached
    assert other.segment is not None
    hour_ago = time.time() - 3600
    os.utime(other.segment, (hour_ago, hour_ago))
    sink = JsonlGzSink(str(prefix), roll_lines=1, max_age_s=600, max_bytes=1)
    await sink.open()
    await write_segments(sink, 0, 2)
    assert numbers(prefix) == [1]  # the other's; ours went over max_bytes=1 at once
    await other.close()
    os.utime(existing_segments(str(prefix))[0][1], (hour_ago, hour_ago))
    await write_segments(sink, 2, 1)
    await sink.close()
    assert numbers(prefix) == []


def test_retention_settings_use_dynamo_names() -> None:
    """DYN_REQUEST_TRACE_FILE_MAX_BYTES / _FILE_MAX_AGE_SECS, off when unset."""
    env = {
        "DYN_REQUEST_TRACE_FILE_MAX_BYTES": "1048576",
        "DYN_REQUEST_TRACE_FILE_MAX_AGE_SECS": "86400",
    }
    on, off = AuditSettings.from_env(env), AuditSettings.from_env({})
    assert (on.jsonl_gz_max_bytes, on.jsonl_gz_max_age_s) == (1 << 20, 86400.0)
    assert (off.jsonl_gz_max_bytes, off.jsonl_gz_max_age_s) == (None, None)
