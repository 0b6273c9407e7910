"""Integrity on the console: one record's hash on its page, the whole trail on the verify page.

A record's page checks what can be checked from its row alone: its ``integrity.hash`` against
its content as it was hashed (the metadata it was published with, when the API replaced it),
and its columns against the record (:func:`auditgate.store.trail.trail_row`).  Whether the chain
around it is whole (no record missing, cut or reordered) needs every record of its writer: that
is the verify page, which runs :mod:`auditgate.audit.verify` over the whole store.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from typing import Any

from auditgate.audit.integrity import HmacSigner, canonical, link, respellings
from auditgate.audit.verify import Report, SourceError, Verifier, WriterReport
from auditgate.store.queries import sqlite_path_of
from auditgate.store.trail import read_postgres, read_sqlite, trail_row

log = logging.getLogger("auditgate.console")


@dataclasses.dataclass(frozen=True, slots=True)
class RecordIntegrity:
    """What a record's row says about its integrity."""

    state: str
    """``intact`` (its hash matches), ``modified`` (it does not), ``unchained`` (recorded
    with integrity off) or ``unreadable``."""
    detail: str
    notes: list[str]
    """Findings about the row's columns (metadata replaced, a column that differs)."""


def record_integrity(row: Any) -> RecordIntegrity:
    """The :class:`RecordIntegrity` of a row holding every column (``Store.scan``'s)."""
    entry = trail_row(row)
    notes = [f"{n.kind}{f' [{n.column}]' if n.column else ''}: {n.detail}" for n in entry.notes]
    if isinstance(entry.record, str):
        return RecordIntegrity("unreadable", entry.record, notes)
    record = entry.record
    chain = record.get("integrity")
    if not isinstance(chain, dict) or not {"prev", "hash"} <= chain.keys():
        return RecordIntegrity("unchained", "recorded with integrity off", notes)
    prev, digest = str(chain["prev"]), str(chain["hash"])
    try:
        candidates = [record, *respellings(record)]
        matches = any(link(prev, canonical(c)) == digest for c in candidates)
    except ValueError:
        matches = False
    if matches:
        detail = f"hash {digest[:16]}… matches the content; writer {record.get('writer')} seq "
        detail += f"{record.get('seq')} (run Verify for the whole chain)"
        return RecordIntegrity("intact", detail, notes)
    return RecordIntegrity("modified", "the content does not match its hash", notes)


SHOWN_FINDINGS = 50
"""Findings listed per writer on the page (a store of a million unchained rows has a million):
the rest are counted by kind, and ``auditgate verify --json`` lists them all."""


@dataclasses.dataclass(frozen=True, slots=True)
class IntegrityRun:
    """One finished verify run."""

    finished_at: int
    """Unix ms."""
    seconds: float
    report: Report | None
    error: str
    """Why the store could not be read (then ``report`` is ``None``)."""

    def kinds(self, writer: WriterReport) -> list[tuple[str, int]]:
        """How many findings of each kind ``writer`` has, most first."""
        counts = collections.Counter(f.kind for f in writer.findings)
        return counts.most_common()


class IntegrityRuns:
    """Runs verify on the store, one run at a time, and keeps the last result."""

    def __init__(self) -> None:
        self.last: IntegrityRun | None = None
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def run(self, store_url: str, key: str | None, *, live: bool) -> IntegrityRun:
        """Verify the whole store (a second request waits for the running one)."""
        async with self._lock:
            started = time.monotonic()
            signer = HmacSigner(key) if key else None
            verifier = Verifier(signer=signer, ordered=False, live=live)
            error = ""
            report: Report | None = None
            try:
                path = sqlite_path_of(store_url)
                if path is not None:
                    await asyncio.to_thread(read_sqlite, verifier, path)
                else:
                    await read_postgres(verifier, store_url)
                report = verifier.report()
            except SourceError as exc:
                error = str(exc)
                log.warning("console: verify could not read the store: %s", exc)
            self.last = IntegrityRun(
                int(time.time() * 1000), time.monotonic() - started, report, error
            )
            return self.last
