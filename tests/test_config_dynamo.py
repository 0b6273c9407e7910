"""Dynamo 1.4+'s DYN_REQUEST_TRACE_* names for the audit settings, in Dynamo's precedence."""

from __future__ import annotations

import pytest

from auditgate.config import AuditSettings
from auditgate.errors import ConfigError


def settings(**env: str) -> AuditSettings:
    return AuditSettings.from_env(env)


def test_request_trace_names_win_over_the_legacy_audit_names() -> None:
    """Each DYN_REQUEST_TRACE_* setting wins over its DYN_AUDIT_* alias; the first name first."""
    both = settings(
        DYN_AUDIT_ENABLED="1",
        DYN_AUDIT_SINKS="stderr",
        DYN_REQUEST_TRACE_SINKS="jsonl,nats",
        DYN_AUDIT_CAPACITY="10",
        DYN_REQUEST_TRACE_CAPACITY="20",
        DYN_AUDIT_OUTPUT_PATH="/a",
        DYN_REQUEST_TRACE_OUTPUT_PATH="/b",
        DYN_REQUEST_TRACE_FILE_PATH="/c",
        DYN_AUDIT_JSONL_BUFFER_BYTES="100",
        DYN_REQUEST_TRACE_JSONL_BUFFER_BYTES="200",
        DYN_REQUEST_TRACE_FILE_BUFFER_BYTES="300",
        DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS="5",
        DYN_REQUEST_TRACE_FILE_FLUSH_INTERVAL_MS="6",
        DYN_AUDIT_JSONL_GZ_ROLL_BYTES="1000",
        DYN_REQUEST_TRACE_JSONL_GZ_ROLL_BYTES="2000",
        DYN_AUDIT_JSONL_GZ_ROLL_LINES="7",
        DYN_REQUEST_TRACE_FILE_ROLL_LINES="8",
        DYN_AUDIT_NATS_SUBJECT="old.subject",
        DYN_REQUEST_TRACE_NATS_SUBJECT="new.subject",
        DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST="x-old",
        DYN_REQUEST_TRACE_HTTP_HEADER_CAPTURE_LIST="X-New,user-agent",
    )
    assert (
        both.sinks,
        both.capacity,
        both.output_path,
        both.jsonl_buffer_bytes,
        both.jsonl_flush_interval_ms,
        both.jsonl_gz_roll_bytes,
        both.jsonl_gz_roll_lines,
        both.nats_subject,
        both.header_capture,
    ) == (("jsonl", "nats"), 20, "/c", 300, 6, 2000, 8, "new.subject", ("x-new", "user-agent"))
    legacy = settings(DYN_AUDIT_CAPACITY="10", DYN_AUDIT_OUTPUT_PATH="/a")
    assert (legacy.capacity, legacy.output_path) == (10, "/a")


def test_a_bad_value_names_the_variable_it_came_from() -> None:
    """An error about a value read under Dynamo's name names Dynamo's variable."""
    with pytest.raises(ConfigError, match=r"^DYN_REQUEST_TRACE_CAPACITY=0: must be >= 1$"):
        settings(DYN_AUDIT_CAPACITY="5", DYN_REQUEST_TRACE_CAPACITY="0")
    with pytest.raises(ConfigError, match=r"^DYN_REQUEST_TRACE_SINKS: unknown name 'kafka'"):
        settings(DYN_REQUEST_TRACE_SINKS="kafka")


@pytest.mark.parametrize(
    ("fmt", "sinks"),
    [
        (None, ("jsonl_gz", "nats")),
        ("jsonl", ("jsonl", "nats")),
        ("jsonl.gz", ("jsonl_gz", "nats")),
    ],
)
def test_the_file_sink_is_jsonl_or_jsonl_gz_by_its_format(
    fmt: str | None, sinks: tuple[str, ...]
) -> None:
    """Dynamo's ``file`` sink is our jsonl_gz (its default) or jsonl."""
    env = {"DYN_REQUEST_TRACE_SINKS": "file,nats"}
    if fmt is not None:
        env["DYN_REQUEST_TRACE_FILE_FORMAT"] = fmt
    assert AuditSettings.from_env(env).sinks == sinks
    with pytest.raises(ConfigError, match="DYN_REQUEST_TRACE_FILE_FORMAT='parquet'"):
        settings(DYN_REQUEST_TRACE_SINKS="file", DYN_REQUEST_TRACE_FILE_FORMAT="parquet")


def test_dynamo_switches_turn_audit_on() -> None:
    """DYN_REQUEST_TRACE=1 is audit on; request_payload in DYN_REQUEST_TRACE_RECORDS is force
    logging (Dynamo's full rows for every request); request_end alone is not."""
    got = [
        (s.enabled, s.force_logging)
        for s in (
            settings(),
            settings(DYN_REQUEST_TRACE="1"),
            settings(DYN_REQUEST_TRACE_RECORDS="request_end,tool"),
            settings(DYN_REQUEST_TRACE_RECORDS="request_payload,request_end"),
            settings(DYN_REQUEST_TRACE="1", DYN_REQUEST_TRACE_RECORDS=""),
        )
    ]
    assert got == [(False, False), (True, False), (True, False), (True, True), (True, False)]


def test_output_format_names() -> None:
    """DYN_AUDIT_FORMAT: auditgate by default, dynamo-request-trace under three names."""
    names = ("auditgate", "dynamo-request-trace", "dynamo", "dynamo.request.trace.v1")
    assert [settings(DYN_AUDIT_FORMAT=n).output_format for n in names] == [
        "auditgate",
        *["dynamo-request-trace"] * 3,
    ]
    assert settings().output_format == "auditgate"
    with pytest.raises(ConfigError, match="DYN_AUDIT_FORMAT='xml'"):
        settings(DYN_AUDIT_FORMAT="xml")
