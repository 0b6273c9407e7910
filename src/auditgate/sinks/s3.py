"""The ``s3`` sink: records as objects in an S3 bucket (AWS, or any S3-compatible server), a
lake that DuckDB, Athena or Spark query where it lies.

Client: ``aiobotocore`` (extra ``s3``) — botocore, the AWS SDK's own request signing,
credential chain and error model, on aiohttp, so uploads never block the event loop.
Credentials come from the SDK's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, an instance or pod role);
none of them is a setting of ours, so none can reach a repr or a log line.

- Batching, by bytes and time as Dynamo's S3 sink does: the bus hands the sink up to
  ``batch_interval_ms`` worth of records (``BatchPolicy.linger_s``), and the sink cuts each batch
  into objects of at most ``batch_bytes`` of record JSON, one set per ``date=…/hour=…``
  partition (:mod:`auditgate.sinks.lake`).  In best effort the bus writes once a quarter of
  ``DYN_AUDIT_CAPACITY`` records wait (it must not let the queue fill), so that bounds an
  object too.
- An object larger than ``multipart_bytes`` is a multipart upload in parts of that size; a
  failed one is aborted (so no parts are left billed), and the whole batch fails.
- ``write`` returns once every object of the batch is stored, or raises :class:`SinkError` and
  the bus retries the batch.  Keys depend only on the records (the first record's writer and
  seq), so the retry, or a durable spool's replay of the same records, replaces the objects it
  already wrote; objects of the batch stored before the failure are not uploaded again.  A replay
  that starts at another record can store a record in a second object: readers keep one copy
  per ``request_id`` (``auditgate export``; ``verify`` reports ``duplicate`` warnings).
- Server-side encryption: ``sse`` (``AES256`` or ``aws:kms``, with ``sse_kms_key_id``) is asked
  for on every object.
- Startup: a bucket that does not exist, or no credentials at all, is a :class:`ConfigError`;
  a server that cannot be reached is not — the sink starts, writes fail, are counted and retried
  (best effort: the queue overflows into counted drops; durable: the spool keeps everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from auditgate.audit.record import Envelope
from auditgate.config_s3 import S3Settings, redact_endpoint, validate_bucket
from auditgate.errors import ConfigError, SinkError
from auditgate.sinks import lake
from auditgate.sinks.jsonl import batch_policy, encoded

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger("auditgate.sinks.s3")

CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 60.0


async def open_client(settings: S3Settings, stack: contextlib.AsyncExitStack) -> S3Client:
    """An S3 client for ``settings``, closed when ``stack`` is; shared with the lake readers.

    The bus (and the readers' callers) retry, so botocore tries each request twice at most.
    An explicit endpoint (an S3-compatible server) gets path-style addressing, which they all
    serve.
    """
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    client = get_session().create_client(
        "s3", region_name=settings.region, endpoint_url=settings.endpoint_url, config=config
    )
    return await stack.enter_async_context(client)


def describe(exc: BaseException) -> str:
    """A one-line description of an S3 failure (botocore messages hold no credentials)."""
    return f"{type(exc).__name__}: {exc}"[:500]


def client_errors() -> tuple[type[BaseException], ...]:
    """What a failed S3 call raises: botocore's errors, and the network's underneath."""
    import aiohttp
    import botocore.exceptions

    return (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        aiohttp.ClientError,
        OSError,
        TimeoutError,
    )


class S3Sink:
    """Uploads batches as Parquet or gzip NDJSON objects under Hive-style hour partitions."""

    name = "s3"

    def __init__(self, settings: S3Settings) -> None:
        if settings.bucket is None:
            raise ConfigError("DYN_AUDIT_SINKS lists s3 but DYN_AUDIT_S3_BUCKET is unset")
        self.settings = settings
        self.bucket: str = settings.bucket
        self.batching = batch_policy(settings.batch_bytes, settings.batch_interval_ms)
        """How the bus groups records: up to ``batch_interval_ms`` (and the bytes' worth)."""
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None
        self._batch: Sequence[Envelope] | None = None
        """The batch being written: the bus retries a failed batch with the same list."""
        self._stored: set[str] = set()
        """Keys of that batch already stored (its retry skips them)."""

    def __repr__(self) -> str:
        endpoint = redact_endpoint(self.settings.endpoint_url or "aws")
        prefix = self.settings.prefix
        return f"S3Sink(bucket={self.bucket!r}, prefix={prefix!r}, endpoint={endpoint!r})"

    async def open(self) -> None:
        """Build the client and check the bucket when the server answers (see the module
        docstring for what stops startup)."""
        validate_bucket(self.bucket, "DYN_AUDIT_S3_BUCKET")
        import botocore.exceptions

        self._client = await open_client(self.settings, self._stack)
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.NoCredentialsError:
            await self.close()
            raise ConfigError(
                "s3 sink: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run with an instance or pod role)"
            ) from None
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                await self.close()
                raise ConfigError(f"s3 sink: bucket {self.bucket!r} does not exist") from None
            # 403 included: a policy may allow PutObject without ListBucket (HeadBucket).
            log.warning("audit sink s3: cannot check bucket %r (%s)", self.bucket, describe(exc))
        except client_errors() as exc:
            log.warning(
                "audit sink s3: %s is unreachable at start (%s); starting, writes will retry",
                redact_endpoint(self.settings.endpoint_url or "S3"),
                describe(exc),
            )

    async def write(self, batch: Sequence[Envelope]) -> None:
        """Store every record of ``batch`` in objects (see the module docstring), or raise."""
        client = self._client
        if client is None:
            raise SinkError("s3 sink used before open()")
        if batch is not self._batch:
            self._batch, self._stored = batch, set()
        encoded(batch)  # JSON lines encoded here, on the loop (their cache is shared)
        for chunk in self.objects(batch):
            key = lake.object_key(self.settings.prefix, self.settings.format, chunk[0].record)
            if key in self._stored:
                continue
            body = await asyncio.to_thread(lake.encode, self.settings.format, chunk)
            try:
                await self._upload(client, key, body, len(chunk))
            except client_errors() as exc:
                raise SinkError(f"upload of {key} ({len(chunk)} records): {describe(exc)}") from exc
            self._stored.add(key)
        self._batch, self._stored = None, set()

    async def close(self) -> None:
        """Close the client (every write has already been stored)."""
        self._client = None
        await self._stack.aclose()

    def objects(self, batch: Sequence[Envelope]) -> list[list[Envelope]]:
        """``batch`` cut into objects: by hour partition, then at most ``batch_bytes`` of
        record JSON each (a longer record is an object by itself), in batch order."""
        partitions: dict[str, list[list[Envelope]]] = {}
        sizes: dict[str, int] = {}
        for envelope in batch:
            part = lake.partition(envelope.record.created_at)
            size = len(envelope.json) + 1
            chunks = partitions.setdefault(part, [[]])
            if chunks[-1] and sizes[part] + size > self.settings.batch_bytes:
                chunks.append([])
                sizes[part] = 0
            chunks[-1].append(envelope)
            sizes[part] = sizes.get(part, 0) + size
        return [chunk for chunks in partitions.values() for chunk in chunks]

    def _extra(self) -> dict[str, Any]:
        """Server-side encryption arguments of every upload."""
        extra: dict[str, Any] = {}
        if self.settings.sse is not None:
            extra["ServerSideEncryption"] = self.settings.sse
        if self.settings.sse_kms_key_id is not None:
            extra["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        return extra

    async def _upload(self, client: S3Client, key: str, body: bytes, records: int) -> None:
        content_type = lake.CONTENT_TYPES[self.settings.format]
        metadata = {"auditgate-records": str(records)}
        if len(body) <= self.settings.multipart_bytes:
            await client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                Metadata=metadata,
                **self._extra(),
            )
            return
        created = await client.create_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            ContentType=content_type,
            Metadata=metadata,
            **self._extra(),
        )
        upload_id = created["UploadId"]
        try:
            parts = []
            step = self.settings.multipart_bytes
            for number, start in enumerate(range(0, len(body), step), start=1):
                part = await client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body[start : start + step],
                )
                parts.append({"ETag": part["ETag"], "PartNumber": number})
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except BaseException:
            await self._abort(client, key, upload_id)
            raise

    async def _abort(self, client: S3Client, key: str, upload_id: str) -> None:
        """Abort a failed multipart upload, so its parts are not kept (and billed)."""
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except client_errors() as exc:
            log.warning(
                "audit sink s3: could not abort the multipart upload of %s (%s); a bucket "
                "lifecycle rule (AbortIncompleteMultipartUpload) removes its parts",
                key,
                describe(exc),
            )
