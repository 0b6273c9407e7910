"""The stored-completions store: one schema for SQLite and PostgreSQL, ordered migrations.

- :mod:`auditgate.store.schema` — table and column names, ``record <-> row`` conversion.
- :mod:`auditgate.store.migrations` — the ordered migrations, recorded in ``schema_migrations``.
- :mod:`auditgate.store.sqlite` — ``connect``, ``migrate``, ``insert_rows`` (stdlib ``sqlite3``).
- :mod:`auditgate.store.postgres` — ``check_dsn``, ``migrate``, ``insert_rows`` (asyncpg; import
  it explicitly, it needs the ``postgres`` extra).
- :mod:`auditgate.store.partitions` — PostgreSQL's day partitions, made ahead and on demand.
- :mod:`auditgate.store.rollups` — hourly usage aggregates kept with every insert, for ``stats``.
- :mod:`auditgate.store.retention` — deleting old days (whole partitions), legal holds.
"""

from __future__ import annotations

from auditgate.store.migrations import MIGRATIONS, Migration
from auditgate.store.schema import (
    COLUMN_NAMES,
    COLUMNS,
    METADATA_TABLE,
    MIGRATIONS_TABLE,
    SELECT_COLUMNS,
    TABLE,
    Row,
    column_update,
    record_dict_from_row,
    record_from_row,
    response_id_of,
    row_from_json,
    row_from_record,
)

__all__ = [
    "COLUMNS",
    "COLUMN_NAMES",
    "METADATA_TABLE",
    "MIGRATIONS",
    "MIGRATIONS_TABLE",
    "SELECT_COLUMNS",
    "TABLE",
    "Migration",
    "Row",
    "column_update",
    "record_dict_from_row",
    "record_from_row",
    "response_id_of",
    "row_from_json",
    "row_from_record",
]
