"""The ``s3`` lake sink's settings (part of :mod:`auditgate.config`).

Our names are ``DYN_AUDIT_S3_*``; Dynamo 1.4+'s S3 request-trace sink names win over them when
set, as Dynamo's other names do (``DYN_REQUEST_TRACE_S3_BUCKET``, ``..._PREFIX``,
``..._REGION``, ``..._ROLL_UNCOMPRESSED_BYTES``, ``..._FLUSH_INTERVAL_MS``).  Credentials are
never settings of ours: the AWS SDK (botocore) reads the standard ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` / ``AWS_PROFILE`` / instance-role chain itself,
so no key passes through this module, a repr or a log line.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping
from typing import Final

from auditgate.config import Env
from auditgate.errors import ConfigError

S3_FORMATS: Final = ("parquet", "ndjson")
SSE_MODES: Final = ("AES256", "aws:kms")
MIN_PART_BYTES: Final = 5 << 20
"""S3's smallest part of a multipart upload (all but the last)."""
DYNAMO_S3_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "DYN_AUDIT_S3_BUCKET": ("DYN_REQUEST_TRACE_S3_BUCKET",),
    "DYN_AUDIT_S3_PREFIX": ("DYN_REQUEST_TRACE_S3_PREFIX",),
    "DYN_AUDIT_S3_REGION": ("DYN_REQUEST_TRACE_S3_REGION",),
    "DYN_AUDIT_S3_BATCH_BYTES": ("DYN_REQUEST_TRACE_S3_ROLL_UNCOMPRESSED_BYTES",),
    "DYN_AUDIT_S3_BATCH_INTERVAL_MS": ("DYN_REQUEST_TRACE_S3_FLUSH_INTERVAL_MS",),
}
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class S3Settings:
    """Where and how the ``s3`` sink writes its objects (and ``export`` / ``verify`` read)."""

    bucket: str | None = None
    """The bucket (``DYN_AUDIT_S3_BUCKET``); required when ``s3`` is a sink."""
    prefix: str = ""
    """Key prefix, without leading or trailing ``/`` (``DYN_AUDIT_S3_PREFIX``)."""
    endpoint_url: str | None = None
    """An S3-compatible server (MinIO, Ceph, moto...); unset: AWS (or ``AWS_ENDPOINT_URL``)."""
    region: str | None = None
    """Region; unset: the SDK's own resolution (``AWS_REGION``, profile, instance metadata)."""
    format: str = "parquet"
    """``parquet`` (zstd-compressed columns) or ``ndjson`` (gzip JSON lines)."""
    batch_bytes: int = 64 << 20
    """An object holds at most this many bytes of records (their JSON, uncompressed)."""
    batch_interval_ms: int = 10_000
    """Longest time a record waits for its batch to fill before the batch is uploaded."""
    multipart_bytes: int = 16 << 20
    """Objects larger than this are uploaded in parts of this size (at least 5 MiB)."""
    sse: str | None = None
    """Server-side encryption asked for on every object: ``AES256`` or ``aws:kms``."""
    sse_kms_key_id: str | None = None
    """With ``aws:kms``: the KMS key (id, ARN or alias); unset: the bucket's default key."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Read and check the ``DYN_AUDIT_S3_*`` variables; ConfigError names a bad one."""
        env = Env(environ, DYNAMO_S3_NAMES)
        bucket = env.optional("DYN_AUDIT_S3_BUCKET")
        if bucket is not None:
            validate_bucket(bucket, env.label("DYN_AUDIT_S3_BUCKET"))
        endpoint = env.optional("DYN_AUDIT_S3_ENDPOINT_URL")
        if endpoint is not None:
            parsed = urllib.parse.urlsplit(endpoint)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigError(
                    f"DYN_AUDIT_S3_ENDPOINT_URL={redact_endpoint(endpoint)!r}: "
                    "expected http(s)://host[:port]"
                )
        fmt = env.text("DYN_AUDIT_S3_FORMAT", "parquet").lower()
        if fmt not in S3_FORMATS:
            raise ConfigError(f"DYN_AUDIT_S3_FORMAT={fmt!r}: expected parquet or ndjson")
        sse = env.optional("DYN_AUDIT_S3_SSE")
        if sse is not None and sse not in SSE_MODES:
            raise ConfigError(f"DYN_AUDIT_S3_SSE={sse!r}: expected AES256 or aws:kms")
        key_id = env.optional("DYN_AUDIT_S3_SSE_KMS_KEY_ID")
        if key_id is not None and sse != "aws:kms":
            raise ConfigError(
                "DYN_AUDIT_S3_SSE_KMS_KEY_ID is set but DYN_AUDIT_S3_SSE is not aws:kms"
            )
        return cls(
            bucket=bucket,
            prefix=env.text("DYN_AUDIT_S3_PREFIX", "").strip("/"),
            endpoint_url=endpoint,
            region=env.optional("DYN_AUDIT_S3_REGION"),
            format=fmt,
            batch_bytes=env.req_int("DYN_AUDIT_S3_BATCH_BYTES", 64 << 20, minimum=1),
            batch_interval_ms=env.req_int("DYN_AUDIT_S3_BATCH_INTERVAL_MS", 10_000, minimum=1),
            multipart_bytes=env.req_int(
                "DYN_AUDIT_S3_MULTIPART_BYTES", 16 << 20, minimum=MIN_PART_BYTES
            ),
            sse=sse,
            sse_kms_key_id=key_id,
        )


def validate_bucket(bucket: str, name: str = "bucket") -> None:
    """ConfigError unless ``bucket`` is a valid S3 bucket name (3-63 of ``a-z0-9.-``)."""
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{name}={bucket!r}: not an S3 bucket name (3-63 characters of a-z, 0-9, '.', '-')"
        )


def redact_endpoint(url: str) -> str:
    """``url`` without any user or password, for logs and errors."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.username is None and parsed.password is None:
        return url
    netloc = "<redacted>@" + parsed.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
