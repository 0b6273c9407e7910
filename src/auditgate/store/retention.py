"""Retention: deleting the records of whole UTC days older than N days, unless a legal hold is set.

Who runs it: the ``sqlite`` and ``postgres`` sinks every hour when ``DYN_AUDIT_RETENTION_DAYS`` is
set (in a gateway or in ``auditgate consume``), and ``auditgate retention --older-than DAYS
[--tenant T]`` on demand.  On PostgreSQL one run at a time holds an advisory lock on the store: a
sink whose turn comes while another process runs retention skips it; the command waits.

- The cutoff is the start of the UTC day ``days`` days before now (:func:`cutoff_of`): every
  record with ``created_at`` before it goes, so a day's records go together.
- PostgreSQL drops whole day partitions (:mod:`auditgate.store.partitions`), each in its own
  short transaction: the cost does not grow with the rows a day holds.  For one tenant it
  ``DELETE``\\ s that tenant's rows instead, in batches (its tenant index finds them).
- SQLite ``DELETE``\\ s in batches of :data:`BATCH` rows, one short write transaction each, so
  the sink's writes interleave with a long retention instead of waiting for it.
- The usage rollups lose exactly what was deleted, in the same transaction (rows deleted are
  returned and uncounted; a dropped partition's hours are removed), so ``stats`` stays equal to
  the raw table.
- So does the console's full-text index (:data:`~auditgate.store.migrations.TEXT_TABLE`): on
  PostgreSQL the deleted rows' entries and queued ids are deleted in the same transaction (a
  partition is locked first, so no indexer adds its rows' text meanwhile); on SQLite the
  table's delete trigger takes each indexed row out.  :attr:`Outcome.text_rows` counts them.

Legal holds (:data:`HOLDS_TABLE`, ``auditgate hold set/clear/list``): a hold without a tenant
stops all retention; a hold on a tenant stops retention of every tenant's records (which would
delete its rows) and of that tenant.  Each transaction checks the holds after locking them
against change, so a hold set while retention runs stops it before its next transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from auditgate.errors import AuditgateError, ConfigError, ServiceUnavailableError
from auditgate.store import partitions, rollups
from auditgate.store.migrations import TEXT_QUEUE_TABLE, TEXT_STATE_TABLE, TEXT_TABLE
from auditgate.store.partitions import DAY_MS
from auditgate.store.queries import sqlite_path_of
from auditgate.store.schema import HOLDS_TABLE, METADATA_TABLE, TABLE
from auditgate.store.sqlite import apply_rollups, write_transaction
from auditgate.store.sqlite import connect as sqlite_connect
from auditgate.store.sqlite import migrate as sqlite_migrate

if TYPE_CHECKING:
    from auditgate.audit.metrics import AuditMetrics

log = logging.getLogger("auditgate.store")
_T = TypeVar("_T")

BATCH: Final = 5000
"""Rows deleted per transaction where rows are deleted one by one."""
INTERVAL_S: Final = 3600.0
"""How often the sinks run retention (and, on PostgreSQL, make partitions ahead)."""
RETRY_S: Final = 5.0
"""A failed maintenance run is tried again after this, doubling up to :data:`INTERVAL_S`."""
_RETURNING: Final = f"RETURNING {rollups.SOURCE_SQL}, deleted_at"


class LegalHoldError(AuditgateError):
    """Retention refused: a legal hold covers the records it would delete."""


@dataclasses.dataclass(frozen=True, slots=True)
class Hold:
    """One legal hold."""

    name: str
    tenant: str | None
    """The tenant whose records are held; ``None``: every record."""
    reason: str
    created_at: int
    """Unix ms."""


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one retention run deleted."""

    cutoff_ms: int
    """Records with ``created_at`` before this went."""
    tenant: str | None
    rows: int = 0
    partitions: list[str] = dataclasses.field(default_factory=list)
    """PostgreSQL partitions dropped (their rows are in :attr:`rows`)."""
    text_rows: int = 0
    """Entries of the full-text index deleted with the rows (rows never indexed have none)."""


def cutoff_of(now_ms: int, days: int) -> int:
    """The start of the UTC day ``days`` days before ``now_ms`` (``days`` >= 0)."""
    if days < 0:
        raise ValueError(f"retention days must be >= 0, not {days}")
    return (now_ms // DAY_MS - days) * DAY_MS


def _blocking(holds: list[Hold], tenant: str | None) -> list[Hold]:
    return [h for h in holds if h.tenant is None or tenant is None or h.tenant == tenant]


def _refuse(blocking: list[Hold], tenant: str | None) -> LegalHoldError:
    names = ", ".join(f"{h.name!r} ({h.reason})" for h in blocking)
    scope = f"tenant {tenant!r}" if tenant is not None else "the store"
    return LegalHoldError(f"retention of {scope} refused: legal hold {names} is set")


def log_outcome(outcome: Outcome, store: str) -> None:
    """Log what a retention run deleted."""
    log.info(
        "%s store: retention deleted %d records (%d full-text index entries) before %d%s%s",
        store,
        outcome.rows,
        outcome.text_rows,
        outcome.cutoff_ms,
        f" of tenant {outcome.tenant!r}" if outcome.tenant is not None else "",
        f" (partitions {', '.join(outcome.partitions)})" if outcome.partitions else "",
    )


# -- SQLite ------------------------------------------------------------------------------------


def sqlite_holds(conn: sqlite3.Connection) -> list[Hold]:
    """Every hold, by name."""
    rows = conn.execute(
        f"SELECT name, tenant, reason, created_at FROM {HOLDS_TABLE} ORDER BY name"
    ).fetchall()
    return [Hold(*tuple(r)) for r in rows]


def sqlite_retain_batch(
    conn: sqlite3.Connection, cutoff_ms: int, tenant: str | None = None, *, batch: int = BATCH
) -> tuple[int, int]:
    """One transaction of :func:`sqlite_retain`: deletes up to ``batch`` records; how many, and
    how many of them the full-text index held (its delete trigger takes those out)."""
    params: list[Any] = [cutoff_ms]
    condition = "created_at < ?"
    if tenant is not None:
        condition += " AND tenant = ?"
        params.append(tenant)
    with write_transaction(conn):
        blocking = _blocking(sqlite_holds(conn), tenant)
        if blocking:
            raise _refuse(blocking, tenant)
        # Rows up to last_rowid are indexed (read before the trigger lowers it).
        indexed = conn.execute(f"SELECT last_rowid FROM {TEXT_STATE_TABLE}").fetchone()[0]
        deleted = conn.execute(
            f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} "
            f"WHERE {condition} LIMIT ?) {_RETURNING}, rowid AS row_number",
            [*params, batch],
        ).fetchall()
        apply_rollups(conn, _uncount(deleted))
    return len(deleted), sum(1 for row in deleted if row["row_number"] <= indexed)


def sqlite_retain(
    conn: sqlite3.Connection, cutoff_ms: int, tenant: str | None = None, *, batch: int = BATCH
) -> Outcome:
    """Delete records older than ``cutoff_ms`` (of ``tenant`` only, if given), a batch per
    transaction; LegalHoldError when a hold covers them.  ``conn`` comes from
    :func:`~auditgate.store.sqlite.connect`."""
    outcome = Outcome(cutoff_ms, tenant)
    while True:
        deleted, texts = sqlite_retain_batch(conn, cutoff_ms, tenant, batch=batch)
        outcome.rows += deleted
        outcome.text_rows += texts
        if deleted < batch:
            break
    log_outcome(outcome, "sqlite")
    return outcome


def sqlite_set_hold(conn: sqlite3.Connection, name: str, tenant: str | None, reason: str) -> None:
    """Set (or replace) hold ``name``."""
    with write_transaction(conn):
        conn.execute(
            f"INSERT INTO {HOLDS_TABLE} (name, tenant, reason, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET tenant = excluded.tenant, reason = excluded.reason",
            (name, tenant, reason, int(time.time() * 1000)),
        )


def sqlite_clear_hold(conn: sqlite3.Connection, name: str) -> bool:
    """Clear hold ``name``; whether it was set."""
    with write_transaction(conn):
        return conn.execute(f"DELETE FROM {HOLDS_TABLE} WHERE name = ?", (name,)).rowcount > 0


# -- PostgreSQL --------------------------------------------------------------------------------


async def postgres_holds(conn: Any) -> list[Hold]:
    """Every hold, by name."""
    rows = await conn.fetch(
        f"SELECT name, tenant, reason, created_at FROM {HOLDS_TABLE} ORDER BY name"
    )
    return [Hold(*tuple(r)) for r in rows]


async def _check_postgres_holds(conn: Any, tenant: str | None) -> None:
    # SHARE conflicts with the ROW EXCLUSIVE of `hold set`: no hold appears until we commit.
    await conn.execute(f"LOCK TABLE {HOLDS_TABLE} IN SHARE MODE")
    blocking = _blocking(await postgres_holds(conn), tenant)
    if blocking:
        raise _refuse(blocking, tenant)


RETENTION_LOCK: Final = 0x61677274
"""First key of the PostgreSQL advisory lock a retention run holds (the second is the hash of
the store's schema, so stores in two schemas of one database do not wait for each other)."""
_LOCK_KEYS: Final = f"{RETENTION_LOCK}, hashtext(current_schema())"


async def postgres_retain(
    conn: Any, cutoff_ms: int, tenant: str | None = None, *, batch: int = BATCH
) -> Outcome:
    """Delete records older than ``cutoff_ms`` (of ``tenant`` only, if given): whole partitions,
    or a tenant's rows in batches; LegalHoldError when a hold covers them.  Waits for a run
    another process is making (the store's retention lock) to end first."""
    await conn.execute(f"SELECT pg_advisory_lock({_LOCK_KEYS})")
    try:
        return await _postgres_retain(conn, cutoff_ms, tenant, batch=batch)
    finally:
        await conn.execute(f"SELECT pg_advisory_unlock({_LOCK_KEYS})")


async def postgres_retain_unless_running(conn: Any, cutoff_ms: int) -> Outcome | None:
    """The sinks' periodic run: :func:`postgres_retain`, or ``None`` (logged) at once when
    another process holds the store's retention lock, i.e. is running retention now.  Every
    gateway and ``auditgate consume`` writing one database runs retention; one at a time does
    the work, the others find nothing left or skip."""
    if not await conn.fetchval(f"SELECT pg_try_advisory_lock({_LOCK_KEYS})"):
        log.info("postgres store: retention skipped: another process is running it")
        return None
    try:
        return await _postgres_retain(conn, cutoff_ms, None, batch=BATCH)
    finally:
        await conn.execute(f"SELECT pg_advisory_unlock({_LOCK_KEYS})")


async def _postgres_retain(conn: Any, cutoff_ms: int, tenant: str | None, *, batch: int) -> Outcome:
    outcome = Outcome(cutoff_ms, tenant)
    if tenant is None and await partitions.partitioned(conn):
        for part in await partitions.partitions(conn):
            if part.end_ms > cutoff_ms:
                break
            async with conn.transaction():
                await _check_postgres_holds(conn, None)
                # A drop waits for every query reading the table: bounded, so writers queued
                # behind it are not held up for long; the next run tries again.  Locked before
                # it is counted and its text entries deleted: no row (or indexer) comes between.
                await conn.execute("SET LOCAL lock_timeout = '10s'")
                # The parents first, in the order writers take them (the table, then its
                # metadata side table's triggers), as every reader does: a reader of the whole
                # table holds the parent and then asks for each partition, so a drop that held
                # the partition first and then asked for the parent (as DROP does) deadlocked
                # with it (the console's indexer, a list page).  The parents only (ONLY): the
                # other days' partitions stay readable by queries already past the parent.
                await conn.execute(
                    f"LOCK TABLE ONLY {TABLE}, ONLY {METADATA_TABLE} IN ACCESS EXCLUSIVE MODE"
                )
                await conn.execute(f"LOCK TABLE {part.name} IN ACCESS EXCLUSIVE MODE")
                rows = await conn.fetchval(f"SELECT count(*) FROM {part.name}")
                outcome.text_rows += await _delete_text(
                    conn,
                    (f"SELECT request_id FROM {part.name}", []),
                    ("created_at >= $1 AND created_at < $2", [part.start_ms, part.end_ms]),
                )
                await conn.execute(f"DROP TABLE {part.name}")
                # The metadata side table's partition of that day (m014) goes with it.
                side = partitions.metadata_partition(part.name)
                await conn.execute(f"DROP TABLE IF EXISTS {side}")
                for table in rollups.TABLES:
                    await conn.execute(
                        f"DELETE FROM {table} WHERE hour >= $1 AND hour < $2",
                        part.start_ms,
                        part.end_ms,
                    )
            outcome.rows += rows
            outcome.partitions.append(part.name)
        log_outcome(outcome, "postgres")
        return outcome
    params: list[Any] = [cutoff_ms]
    condition = "created_at < $1"
    if tenant is not None:
        condition += " AND tenant = $2"
        params.append(tenant)
    while True:
        async with conn.transaction():
            await _check_postgres_holds(conn, tenant)
            deleted = await conn.fetch(
                f"DELETE FROM {TABLE} WHERE (created_at, request_id) IN (SELECT created_at, "
                f"request_id FROM {TABLE} WHERE {condition} LIMIT {int(batch)}) "
                f"{_RETURNING}, request_id",
                *params,
            )
            await _postgres_apply(conn, _uncount(deleted))
            # An indexer that read these rows before they went commits its entries before
            # this lock is granted (and one that starts later waits for our commit, then reads
            # no row): the delete below sees every entry of theirs.
            await conn.execute(f"LOCK TABLE {TEXT_TABLE} IN SHARE ROW EXCLUSIVE MODE")
            ids = [r["request_id"] for r in deleted]
            outcome.text_rows += await _delete_text(
                conn,
                ("SELECT unnest($1::text[])", [ids]),
                (
                    "(created_at, request_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
                    [[r["created_at"] for r in deleted], ids],
                ),
            )
        outcome.rows += len(deleted)
        if len(deleted) < batch:
            break
    log_outcome(outcome, "postgres")
    return outcome


async def _delete_text(conn: Any, ids: tuple[str, list[Any]], queued: tuple[str, list[Any]]) -> int:
    """Delete the full-text index entries of the request ids ``ids`` selects, and the rows of
    :data:`TEXT_QUEUE_TABLE` (keyed ``(created_at, request_id)`` since m012) matching the
    condition ``queued``, each ``(SQL, parameters)``; how many entries went.

    Queued ids an indexer has taken (locked, deleted in its open transaction) are skipped, not
    waited for: that indexer may be waiting for this transaction's lock on the table, and
    waiting for it would deadlock.  It finds no row for them once we commit, and its commit
    takes them off the queue (a rollback leaves them queued for a round that finds none)."""
    # One probe of the index's key per id: PostgreSQL would rather hash-join, reading the whole
    # index table (1.9 s for a day of 33k rows at 1M rows, growing with the store).
    await conn.execute("SET LOCAL enable_hashjoin = off")
    await conn.execute("SET LOCAL enable_mergejoin = off")
    status = await conn.execute(f"DELETE FROM {TEXT_TABLE} WHERE request_id IN ({ids[0]})", *ids[1])
    await conn.execute("SET LOCAL enable_hashjoin TO DEFAULT")
    await conn.execute("SET LOCAL enable_mergejoin TO DEFAULT")
    await conn.execute(
        f"DELETE FROM {TEXT_QUEUE_TABLE} WHERE (created_at, request_id) IN (SELECT created_at, "
        f"request_id FROM {TEXT_QUEUE_TABLE} WHERE {queued[0]} FOR UPDATE SKIP LOCKED)",
        *queued[1],
    )
    return int(status.rsplit(" ", 1)[-1])


async def postgres_set_hold(conn: Any, name: str, tenant: str | None, reason: str) -> None:
    """Set (or replace) hold ``name``."""
    await conn.execute(
        f"INSERT INTO {HOLDS_TABLE} (name, tenant, reason, created_at) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (name) DO UPDATE SET tenant = excluded.tenant, reason = excluded.reason",
        name,
        tenant,
        reason,
        int(time.time() * 1000),
    )


async def postgres_clear_hold(conn: Any, name: str) -> bool:
    """Clear hold ``name``; whether it was set."""
    status = await conn.execute(f"DELETE FROM {HOLDS_TABLE} WHERE name = $1", name)
    return bool(int(status.rsplit(" ", 1)[-1]))


async def _postgres_apply(conn: Any, delta: rollups.Delta) -> None:
    # Imported here: the postgres module needs asyncpg (the ``postgres`` extra).
    from auditgate.store.postgres import apply_rollups as postgres_apply_rollups

    await postgres_apply_rollups(conn, delta)


def _uncount(deleted: list[Any]) -> rollups.Delta:
    delta = rollups.Delta()
    for row in deleted:
        delta.add_stored(row, deleted=row["deleted_at"] is not None, sign=-1)
    return delta


# -- by store URL (the command line) -----------------------------------------------------------


async def _on_store(
    url: str,
    on_sqlite: Callable[[sqlite3.Connection], _T],
    on_postgres: Callable[[Any], Awaitable[_T]],
) -> _T:
    """Run on the store at ``url`` (migrated first); ConfigError for a bad URL or database."""
    path = sqlite_path_of(url)
    if path is not None:

        def run() -> _T:
            if not Path(path).is_file():
                raise ConfigError(f"SQLite store {path!r} does not exist")
            conn = sqlite_connect(path)
            try:
                sqlite_migrate(conn)
                return on_sqlite(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(run)
    from auditgate.store import postgres

    postgres.check_dsn(url)
    import asyncpg

    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        message = postgres.hide_password(f"{type(exc).__name__}: {exc}", url)
        raise ConfigError(f"PostgreSQL store {postgres.redact_dsn(url)!r}: {message}") from None
    try:
        await postgres.migrate(conn)
        return await on_postgres(conn)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, *postgres.UNREACHABLE) as exc:
        # A lock timeout (a long query holds a day's partition), a server gone mid-run: what
        # went before committed, the rest is for the next run; one line, not a traceback.
        message = postgres.hide_password(f"{type(exc).__name__}: {exc}", url)
        raise ServiceUnavailableError(
            f"PostgreSQL store {postgres.redact_dsn(url)!r}: {message} (run it again)"
        ) from None
    finally:
        await conn.close()


async def retain(url: str, cutoff_ms: int, tenant: str | None = None) -> Outcome:
    """Retention on the store at ``url`` (see the module docstring)."""
    return await _on_store(
        url,
        lambda conn: sqlite_retain(conn, cutoff_ms, tenant),
        lambda conn: postgres_retain(conn, cutoff_ms, tenant),
    )


async def list_holds(url: str) -> list[Hold]:
    """The legal holds of the store at ``url``."""
    return await _on_store(url, sqlite_holds, postgres_holds)


async def set_hold(url: str, name: str, tenant: str | None, reason: str) -> None:
    """Set (or replace) legal hold ``name`` on the store at ``url``."""
    await _on_store(
        url,
        lambda conn: sqlite_set_hold(conn, name, tenant, reason),
        lambda conn: postgres_set_hold(conn, name, tenant, reason),
    )


async def clear_hold(url: str, name: str) -> bool:
    """Clear legal hold ``name`` of the store at ``url``; whether it was set."""
    return await _on_store(
        url,
        lambda conn: sqlite_clear_hold(conn, name),
        lambda conn: postgres_clear_hold(conn, name),
    )


# -- the sinks' periodic run -------------------------------------------------------------------


class Maintenance:
    """Runs a sink's maintenance ``step`` now and then every ``interval_s`` until :meth:`stop`.

    ``step`` returns the retention :class:`Outcome` (or ``None`` when it ran none), counted in
    ``metrics``.  A step that fails is logged and counted, and runs again after
    :data:`RETRY_S`, doubling up to the interval: a lock timeout or a deadlock passes in seconds,
    the database may be down for a while.  A legal hold's refusal waits for the next interval.
    """

    def __init__(
        self,
        sink: str,
        step: Callable[[], Awaitable[Outcome | None]],
        *,
        interval_s: float = INTERVAL_S,
        retry_s: float = RETRY_S,
        metrics: AuditMetrics | None = None,
    ) -> None:
        self.sink = sink
        self.interval_s = interval_s
        self.retry_s = retry_s
        self._step = step
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        """Steps finished, failed or not (tests wait on it)."""

    def start(self) -> None:
        """Start the background task (on the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Cancel the task and wait for it; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        retry_s = self.retry_s
        while True:
            if await self.run_once():
                retry_s = self.retry_s
                await asyncio.sleep(self.interval_s)
            else:
                # A lock timeout, a deadlock or a database restart is usually over in seconds:
                # try again soon (doubling), not an interval later.
                await asyncio.sleep(min(retry_s, self.interval_s))
                retry_s *= 2

    async def run_once(self) -> bool:
        """One step, its outcome counted; False when it failed (a legal hold's refusal is not a
        failure: it holds until cleared).  Never raises but for cancellation."""
        metrics = self._metrics
        try:
            outcome = await self._step()
        except LegalHoldError as exc:
            log.warning("%s sink: %s", self.sink, exc)
            if metrics is not None:
                metrics.retention_refused.labels(self.sink).inc()
        except Exception as exc:  # noqa: BLE001 - the task outlives a failed run: logged, counted
            log.warning("%s sink: store maintenance failed (retried): %s", self.sink, exc)
            if metrics is not None:
                metrics.maintenance_errors.labels(self.sink).inc()
            return False
        else:
            if outcome is not None and metrics is not None:
                metrics.retention_deleted.labels(self.sink).inc(outcome.rows)
                metrics.retention_partitions.labels(self.sink).inc(len(outcome.partitions))
        finally:
            self.runs += 1
        return True
