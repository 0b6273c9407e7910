"""The s3 sink's settings: our DYN_AUDIT_S3_* names, Dynamo's S3 names winning over them."""

from __future__ import annotations

import pytest

from auditgate.config import AuditSettings
from auditgate.config_s3 import S3Settings
from auditgate.errors import ConfigError


def test_defaults() -> None:
    """Parquet, 64 MiB / 10 s batches (Dynamo's), 16 MiB parts, no SSE, the SDK's region."""
    assert S3Settings.from_env({}) == S3Settings(
        bucket=None,
        prefix="",
        endpoint_url=None,
        region=None,
        format="parquet",
        batch_bytes=64 << 20,
        batch_interval_ms=10_000,
        multipart_bytes=16 << 20,
        sse=None,
        sse_kms_key_id=None,
    )


def test_every_variable_is_read() -> None:
    """Each DYN_AUDIT_S3_* variable sets its field; the prefix loses its slashes."""
    env = {
        "DYN_AUDIT_S3_BUCKET": "audit-lake",
        "DYN_AUDIT_S3_PREFIX": "/prod/gateway/",
        "DYN_AUDIT_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "DYN_AUDIT_S3_REGION": "eu-west-1",
        "DYN_AUDIT_S3_FORMAT": "NDJSON",
        "DYN_AUDIT_S3_BATCH_BYTES": "1048576",
        "DYN_AUDIT_S3_BATCH_INTERVAL_MS": "500",
        "DYN_AUDIT_S3_MULTIPART_BYTES": "8388608",
        "DYN_AUDIT_S3_SSE": "aws:kms",
        "DYN_AUDIT_S3_SSE_KMS_KEY_ID": "alias/audit",
    }
    assert S3Settings.from_env(env) == S3Settings(
        bucket="audit-lake",
        prefix="prod/gateway",
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-1",
        format="ndjson",
        batch_bytes=1 << 20,
        batch_interval_ms=500,
        multipart_bytes=8 << 20,
        sse="aws:kms",
        sse_kms_key_id="alias/audit",
    )
    assert AuditSettings.from_env(env).s3 == S3Settings.from_env(env)


def test_dynamo_names_win() -> None:
    """Dynamo 1.4+'s DYN_REQUEST_TRACE_S3_* names win over ours, as its other names do."""
    env = {
        "DYN_AUDIT_S3_BUCKET": "ours",
        "DYN_REQUEST_TRACE_S3_BUCKET": "dynamos",
        "DYN_REQUEST_TRACE_S3_PREFIX": "trace",
        "DYN_REQUEST_TRACE_S3_REGION": "us-west-2",
        "DYN_REQUEST_TRACE_S3_ROLL_UNCOMPRESSED_BYTES": "2048",
        "DYN_REQUEST_TRACE_S3_FLUSH_INTERVAL_MS": "250",
    }
    got = S3Settings.from_env(env)
    expected = ("dynamos", "trace", "us-west-2", 2048, 250)
    assert expected == (got.bucket, got.prefix, got.region, got.batch_bytes, got.batch_interval_ms)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DYN_AUDIT_S3_BUCKET": "Bad_Bucket"}, "DYN_AUDIT_S3_BUCKET='Bad_Bucket': not an S3"),
        ({"DYN_REQUEST_TRACE_S3_BUCKET": "x"}, "DYN_REQUEST_TRACE_S3_BUCKET='x': not an S3"),
        ({"DYN_AUDIT_S3_ENDPOINT_URL": "127.0.0.1:9000"}, "DYN_AUDIT_S3_ENDPOINT_URL="),
        ({"DYN_AUDIT_S3_FORMAT": "csv"}, "DYN_AUDIT_S3_FORMAT='csv': expected parquet or ndjson"),
        ({"DYN_AUDIT_S3_SSE": "rot13"}, "DYN_AUDIT_S3_SSE='rot13': expected AES256 or aws:kms"),
        ({"DYN_AUDIT_S3_SSE_KMS_KEY_ID": "k"}, "DYN_AUDIT_S3_SSE is not aws:kms"),
        ({"DYN_AUDIT_S3_MULTIPART_BYTES": "1024"}, "DYN_AUDIT_S3_MULTIPART_BYTES=1024: must be"),
        ({"DYN_AUDIT_S3_BATCH_BYTES": "0"}, "DYN_AUDIT_S3_BATCH_BYTES=0: must be >= 1"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], message: str) -> None:
    """Every bad value is a ConfigError naming the variable it came from."""
    with pytest.raises(ConfigError) as caught:
        S3Settings.from_env(env)
    assert message in str(caught.value)


def test_an_endpoint_password_is_never_shown() -> None:
    """An endpoint URL holding credentials is redacted in the error about it."""
    with pytest.raises(ConfigError) as caught:
        S3Settings.from_env({"DYN_AUDIT_S3_ENDPOINT_URL": "ftp://user:hunter2@host"})
    assert "hunter2" not in str(caught.value) and "<redacted>@host" in str(caught.value)
