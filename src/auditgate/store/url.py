"""A :class:`~auditgate.store.queries.Store` from its URL: the one module that knows every
reader, so that the readers can import :mod:`auditgate.store.queries` without a cycle.

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy's spelling), or a
  bare file path: :class:`~auditgate.store.sqlite_reader.SqliteStore`.
- ``postgresql://...`` / ``postgres://...``:
  :class:`~auditgate.store.postgres_reader.PostgresStore` (needs the ``postgres`` extra,
  imported only then).
"""

from __future__ import annotations

from auditgate.errors import ConfigError
from auditgate.store.queries import Store, sqlite_path_of


def open_store(url: str, *, must_exist: bool = False) -> Store:
    """The store for ``url`` (not yet opened; call :meth:`Store.open`).

    ``must_exist``: a SQLite file that does not exist is a ConfigError at open, instead of an
    empty store being created (for the command-line readers).
    """
    path = sqlite_path_of(url)
    if path is not None:
        from auditgate.store.sqlite_reader import SqliteStore

        return SqliteStore(path, must_exist=must_exist)
    scheme = url.split("://", 1)[0]
    if scheme in ("postgresql", "postgres"):
        from auditgate.store.postgres_reader import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"store URL scheme {scheme!r}: expected sqlite:///PATH or postgresql://...")
