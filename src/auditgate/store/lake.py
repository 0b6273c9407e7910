"""Reading the ``s3`` sink's lake back: ``auditgate export`` and ``auditgate verify`` take
``s3://bucket/prefix`` as a source.

The reader walks the Hive partitions (``date=…/hour=…``, :mod:`auditgate.sinks.lake`) in
order, listing one level at a time, so ``--since`` / ``--until`` skip whole days and hours
without listing them.  The server, region and credentials are those of the sink
(``DYN_AUDIT_S3_ENDPOINT_URL``, ``DYN_AUDIT_S3_REGION``, the AWS credential chain).

- :meth:`LakeReader.entries`: every record of every object, in key order, with its location
  (``s3://bucket/key#row``) — what ``verify`` checks, copies included.
- :meth:`LakeReader.records`: what ``export`` writes — one hour at a time, one copy per
  ``request_id`` (a replayed batch can store a record in two objects), in
  ``(created_at, request_id)`` order, as the stores scan; memory holds one hour of records.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from auditgate.audit.verify import SourceError
from auditgate.config_s3 import S3Settings, validate_bucket
from auditgate.errors import ConfigError
from auditgate.sinks import lake
from auditgate.store.queries import Filter

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

HOUR_MS = 3_600_000


def parse_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket[/prefix]``; ConfigError for anything else."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{url!r}: expected s3://bucket/prefix")
    validate_bucket(parsed.netloc, "s3 URL bucket")
    return parsed.netloc, parsed.path.strip("/")


def matches(record: dict[str, Any], where: Filter) -> bool:
    """Whether ``record`` is one ``where`` selects (the lake holds no tombstones)."""
    if where.stored_only and (record.get("mode") != "full" or record.get("response") is None):
        return False
    if where.requests_only and record.get("mode") == "checkpoint":
        return False
    created = record.get("created_at")
    if where.since_ms is not None and not (isinstance(created, int) and created >= where.since_ms):
        return False
    if where.until_ms is not None and not (isinstance(created, int) and created < where.until_ms):
        return False
    for field, wanted in (
        ("tenant", where.tenant),
        ("model", where.model),
        ("status", where.status),
    ):
        if wanted is not None and record.get(field) != wanted:
            return False
    metadata = record.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    return all(metadata.get(key) == value for key, value in where.metadata.items())


def _hour_start(partition: str) -> int:
    """Unix ms at which the ``date=YYYY-MM-DD/hour=HH`` partition starts."""
    date, hour = partition.split("/")
    day = datetime.date.fromisoformat(date.removeprefix("date="))
    start = datetime.datetime(day.year, day.month, day.day, int(hour.removeprefix("hour=")))
    return int(start.replace(tzinfo=datetime.UTC).timestamp() * 1000)


class LakeReader:
    """Reads one ``s3://bucket/prefix``; use ``async with``."""

    def __init__(self, url: str, settings: S3Settings | None = None) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.settings = settings if settings is not None else S3Settings.from_env()
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None

    async def __aenter__(self) -> LakeReader:
        from auditgate.sinks.s3 import open_client

        self._client = await open_client(self.settings, self._stack)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client = None
        await self._stack.aclose()

    async def partitions(self, since_ms: int | None, until_ms: int | None) -> list[str]:
        """``date=…/hour=…`` partitions that can hold records in ``[since, until)``, in order."""
        found: list[str] = []
        for day in await self._children(self._base()):
            if not day.startswith("date="):
                continue
            for hour in await self._children(self._base() + day + "/"):
                if not hour.startswith("hour="):
                    continue
                name = f"{day}/{hour}"
                start = _hour_start(name)
                if since_ms is not None and start + HOUR_MS <= since_ms:
                    continue
                if until_ms is not None and start >= until_ms:
                    continue
                found.append(name)
        return sorted(found)

    async def entries(self) -> AsyncIterator[tuple[str, dict[str, Any] | str]]:
        """Every entry of every object, in key order: ``(location, record or why not)``."""
        for partition in await self.partitions(None, None):
            for key in await self._keys(partition):
                for row, entry in enumerate(await self._read(key)):
                    yield f"s3://{self.bucket}/{key}#{row}", entry

    async def records(self, where: Filter) -> AsyncIterator[dict[str, Any]]:
        """The records ``where`` selects, once each, in ``(created_at, request_id)`` order."""
        for partition in await self.partitions(where.since_ms, where.until_ms):
            seen: dict[str, dict[str, Any]] = {}
            for key in await self._keys(partition):
                for entry in await self._read(key):
                    if isinstance(entry, dict) and isinstance(entry.get("request_id"), str):
                        seen.setdefault(entry["request_id"], entry)
            chosen = [r for r in seen.values() if matches(r, where)]
            chosen.sort(key=lambda r: (r.get("created_at", 0), r["request_id"]))
            for record in chosen:
                yield record

    def _base(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    async def _children(self, prefix: str) -> list[str]:
        """Names of the "folders" directly under ``prefix``."""
        names: list[str] = []
        async for page in self._pages(prefix, delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(prefix) :].rstrip("/"))
        return names

    async def _keys(self, partition: str) -> list[str]:
        """The object keys of one partition, in key order (a writer's objects in seq order)."""
        keys: list[str] = []
        async for page in self._pages(self._base() + partition + "/", delimiter=None):
            keys += [
                o["Key"] for o in page.get("Contents", []) if lake.KEY_PATTERN.search(o["Key"])
            ]
        return sorted(keys)

    async def _pages(self, prefix: str, delimiter: str | None) -> AsyncIterator[Any]:
        from auditgate.sinks.s3 import client_errors, describe

        assert self._client is not None, "use LakeReader in an async with block"
        paginator = self._client.get_paginator("list_objects_v2")
        pages = (
            paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter=delimiter)
            if delimiter
            else paginator.paginate(Bucket=self.bucket, Prefix=prefix)
        )
        try:
            async for page in pages:
                yield page
        except client_errors() as exc:
            raise SourceError(f"cannot list s3://{self.bucket}/{prefix}: {describe(exc)}") from exc

    async def _read(self, key: str) -> list[dict[str, Any] | str]:
        from auditgate.sinks.s3 import client_errors, describe

        assert self._client is not None, "use LakeReader in an async with block"
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                data = await body.read()
        except client_errors() as exc:
            raise SourceError(f"cannot read s3://{self.bucket}/{key}: {describe(exc)}") from exc
        try:
            return await asyncio.to_thread(lake.decode, key, data)
        except (OSError, EOFError, ValueError) as exc:
            # Not gzip, not Parquet (pyarrow's errors are OSError/ValueError subclasses).
            return [f"unreadable object: {type(exc).__name__}: {exc}"]
