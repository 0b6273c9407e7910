"""The ``postgres`` sink (``DYN_AUDIT_POSTGRES_URL``): batches into the stored-completions table.

A small asyncpg pool; each batch is COPYed into a temporary table and moved with one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` in one transaction, so it is stored whole or not
at all, and a retried or replayed batch adds nothing twice.  Bodies are JSONB; values PostgreSQL
cannot hold (NUL characters, lone surrogates) are stored losslessly as the schema describes
(:mod:`auditgate.store.schema`), so no record can wedge the sink in a retry loop.

The URL may hold a password: it is kept as a :class:`~auditgate.config.Secret` and every message
and repr shows it redacted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope
from auditgate.audit.sink import BatchPolicy
from auditgate.config import Secret
from auditgate.errors import ConfigError, SinkError
from auditgate.store import partitions, retention
from auditgate.store import postgres as store
from auditgate.store.schema import Row, row_from_record

log = logging.getLogger("auditgate.sinks")


class PostgresSink:
    """Writes records to PostgreSQL in the stored-completions schema.

    Startup errors and retried errors:

    - :meth:`open` raises :class:`ConfigError` when the sink is misconfigured: the URL is not a
      ``postgresql://`` / ``postgres://`` URL (unparseable, wrong scheme, bad port, options the
      driver rejects), ``schema`` is not a plain identifier, or the server answers but refuses:
      authentication fails, the database does not exist, a migration fails.
    - :meth:`open` does *not* fail when the server merely cannot be reached (connection refused,
      timeout, DNS failure, the server starting up or shutting down, too many connections): it
      logs a warning and returns.  Every :meth:`write` then first connects and applies the
      migrations, raising while the server stays away, so the bus counts the error and retries
      with backoff; the sink reconnects on its own when the server is back.  Pooled connections
      broken by a server restart are replaced on the next attempt.

    ``schema=None`` uses the connection's default ``search_path``; a named schema is created if
    missing and used for every connection of the sink.
    """

    name = "postgres"
    batching = BatchPolicy(max_records=500, linger_s=0.0)
    """Whatever is queued, up to 500 records (~2 MiB of 4 KiB records), in one transaction."""

    def __init__(
        self,
        dsn: str | Secret,
        *,
        schema: str | None = None,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 60.0,
        retention_days: int | None = None,
        maintenance_interval_s: float = retention.INTERVAL_S,
        metrics: AuditMetrics | None = None,
    ) -> None:
        self._dsn = dsn if isinstance(dsn, Secret) else Secret(dsn)
        self.retention_days = retention_days
        """Drop the day partitions older than this many days, every ``maintenance_interval_s``
        (:mod:`auditgate.store.retention`); ``None``: keep every record."""
        self.maintenance = retention.Maintenance(
            self.name, self._maintain, interval_s=maintenance_interval_s, metrics=metrics
        )
        """Also makes the day partitions ahead of time (:mod:`auditgate.store.partitions`)."""
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._pool: Any = None
        self._ready = False

    def __repr__(self) -> str:
        return f"PostgresSink(dsn={self.url!r}, schema={self.schema!r})"

    @property
    def url(self) -> str:
        """The URL with its password redacted."""
        return store.redact_dsn(self._dsn.reveal())

    async def open(self) -> None:
        """Check the URL, create the pool and migrate if the server answers (see the class doc)."""
        dsn = self._dsn.reveal()
        store.check_dsn(dsn)
        if self.schema is not None:
            store.check_schema(self.schema)
        try:
            # min_size=0: creating the pool connects nowhere, so it cannot fail on a down server.
            self._pool = await asyncpg.create_pool(
                dsn,
                min_size=0,
                max_size=2,
                timeout=self.connect_timeout_s,
                command_timeout=self.command_timeout_s,
                server_settings=store.server_settings(self.schema),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"PostgreSQL URL {self.url!r}: {self._hide(exc)}") from None
        try:
            await self._prepare()
        except store.UNREACHABLE as exc:
            log.warning(
                "postgres sink: %s unreachable (%s); starting anyway, writes will retry",
                self.url,
                self._hide(exc),
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            await self._close_pool()
            raise ConfigError(f"PostgreSQL {self.url!r}: {self._hide(exc)}") from None
        self.maintenance.start()

    async def write(self, batch: Sequence[Envelope]) -> None:
        """Store every record of ``batch`` in one transaction, or raise (the bus retries)."""
        if self._pool is None:
            raise SinkError("postgres sink is not open")
        if not self._ready:
            await self._prepare()
        records = [envelope.record for envelope in batch]
        # Encoding ~4 KiB bodies is real work: keep it off the event loop.
        rows = await asyncio.to_thread(_rows, records)
        async with self._pool.acquire() as conn:
            await store.insert_rows(conn, rows)

    async def close(self) -> None:
        """Stop maintenance, close the pool (waits for the connections to finish, then
        terminates them)."""
        await self.maintenance.stop()
        await self._close_pool()

    async def _maintain(self) -> retention.Outcome | None:
        if self._pool is None:
            raise SinkError("postgres sink is not open")
        if not self._ready:
            await self._prepare()  # migrates, and makes the partitions ahead
            if self.retention_days is None:
                return None
        async with self._pool.acquire() as conn:
            await partitions.create_ahead(conn, int(time.time() * 1000))
            if self.retention_days is None:
                return None
            cutoff = retention.cutoff_of(int(time.time() * 1000), self.retention_days)
            return await retention.postgres_retain_unless_running(conn, cutoff)

    async def _prepare(self) -> None:
        async with self._pool.acquire() as conn:
            await store.migrate(conn, self.schema)
        self._ready = True

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.connect_timeout_s)
        except TimeoutError:
            pool.terminate()

    def _hide(self, exc: BaseException) -> str:
        """``exc`` as text, with the password removed should the driver have quoted it."""
        return store.hide_password(f"{type(exc).__name__}: {exc}", self._dsn.reveal())


def _rows(records: Sequence[AuditRecord]) -> list[Row]:
    return [row_from_record(record) for record in records]
