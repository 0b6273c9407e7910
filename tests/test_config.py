"""Settings from the environment: every bad value stops ``serve`` with one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gateway import serve_until_exit


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "99999"], {}, "AUDITGATE_PORT=99999: must be 0-65535"),
        (["--grpc-port", "70000"], {}, "AUDITGATE_GRPC_PORT=70000: must be 1-65535"),
        ([], {"DYN_AUDIT_ENABLED": "maybe"}, "DYN_AUDIT_ENABLED='maybe'"),
        ([], {"DYN_AUDIT_ENABLED": "1", "DYN_AUDIT_CAPACITY": "0"}, "DYN_AUDIT_CAPACITY=0"),
        (
            [],
            {"DYN_AUDIT_ENABLED": "1", "DYN_AUDIT_CAPACITY_BYTES": "0"},
            "DYN_AUDIT_CAPACITY_BYTES=0: must be >= 1",
        ),
        (
            [],
            {"DYN_AUDIT_ENABLED": "1", "DYN_AUDIT_CAPACITY_BYTES": "32MiB"},
            "DYN_AUDIT_CAPACITY_BYTES='32MiB': expected an integer",
        ),
        ([], {"DYN_AUDIT_SINKS": "stderr,kafka"}, "DYN_AUDIT_SINKS: unknown name 'kafka'"),
        (
            [],
            {"DYN_AUDIT_ENABLED": "1", "DYN_AUDIT_SINKS": "s3"},
            "DYN_AUDIT_SINKS lists s3 but DYN_AUDIT_S3_BUCKET is unset",
        ),
        ([], {"DYN_AUDIT_S3_FORMAT": "csv"}, "DYN_AUDIT_S3_FORMAT='csv': expected parquet"),
        ([], {"AUDITGATE_LOG_LEVEL": "loud"}, "AUDITGATE_LOG_LEVEL='loud'"),
    ],
)
def test_a_bad_setting_is_exit_2_and_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    """Checked before anything starts: exit code 2, one line on stderr that names the setting
    (a port of 99999 used to be served on 99999 % 65536)."""
    done = serve_until_exit(env, args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("auditgate: configuration error: ") and message in line, line
