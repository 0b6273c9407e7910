"""Sink cursors in a spool directory: how far each sink has stored, saved without new space.

A sink's saved cursor is what lets the spool delete the segments it has passed, so saving one
must work when the disk is full — that is when space has to be freed.  ``cursor.<sink>`` is
therefore a file of :data:`FILE_BYTES` whose blocks are written and synced once, when the sink
is first seen (:meth:`CursorFile.allocate`); every save after that overwrites a few bytes in
place: no new file, no rename, no growth, so no new blocks or directory entries.

The file holds two slots :data:`SLOT` ``(generation, segment, offset, crc32)``.  A save writes
the next generation into the slot of the older one; the CRC-32 over the first three fields
detects a torn or lost write, and the other slot still holds the previous cursor.  So a cursor
may fall back (records are replayed, and sinks are idempotent on ``request_id``), never forward.
Saves are not synced: after a power loss a cursor may fall back for the same reason.

Everything here blocks; the spool calls it off the event loop.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Final

from auditgate.audit.spool.frames import Position

log = logging.getLogger("auditgate.audit.spool")

SLOT: Final = struct.Struct("<QQQI4x")
"""One slot: generation (0: never written), segment, offset, CRC-32 of those three."""
_FIELDS: Final = struct.Struct("<QQQ")
FILE_BYTES: Final = 2 * SLOT.size


def cursor_path(directory: Path, sink: str) -> Path:
    return directory / f"cursor.{sink}"


def _legacy_paths(directory: Path, sink: str) -> tuple[Path, Path]:
    """Where earlier versions kept the cursor (JSON, saved by rename from a ``.tmp`` file)."""
    return directory / f"cursor.{sink}.json", directory / f"cursor.{sink}.tmp"


def _pack(generation: int, position: Position) -> bytes:
    fields = _FIELDS.pack(generation, position.segment, position.offset)
    return SLOT.pack(generation, position.segment, position.offset, zlib.crc32(fields))


def _newest_slot(data: bytes) -> tuple[int, Position] | None:
    """The valid slot with the highest generation: ``(generation, position)``."""
    best: tuple[int, Position] | None = None
    for index in range(min(len(data), FILE_BYTES) // SLOT.size):
        start = index * SLOT.size
        generation, segment, offset, crc = SLOT.unpack_from(data, start)
        valid = generation and zlib.crc32(data[start : start + _FIELDS.size]) == crc
        if valid and (best is None or generation > best[0]):
            best = (generation, Position(segment, offset))
    return best


class CursorFile:
    """One sink's cursor file; saves come from one thread at a time (the sink's reader)."""

    def __init__(self, directory: Path, sink: str) -> None:
        self.directory = directory
        self.sink = sink
        self.path = cursor_path(directory, sink)
        self.generation = 0
        """Generation of the newest slot, as loaded or saved."""
        self._allocated = False
        self._legacy: Position | None = None
        """A cursor read from an earlier version's file, moved into this one on allocation."""

    def load(self) -> Position | None:
        """The saved cursor, or None when there is none (or no slot is readable: the sink then
        starts from the oldest segment).  Reads an earlier version's JSON cursor when this
        file holds none."""
        try:
            newest = _newest_slot(self.path.read_bytes())
        except FileNotFoundError:
            newest = None
        if newest is not None:
            self.generation, position = newest
            return position
        self._legacy = self._load_legacy()
        return self._legacy

    def allocate(self) -> None:
        """Make sure the file exists at its full size with its blocks written and synced, so
        that saves never need new space (and holds a cursor an earlier version saved); raises
        OSError (e.g. the disk is full)."""
        if self._allocated:
            return
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < FILE_BYTES:  # new, or a creation that failed half-way: pad it with zeros
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if os.pwrite(fd, bytes(FILE_BYTES - size), size) != FILE_BYTES - size:
                    raise OSError(errno.ENOSPC, "short write allocating a cursor file")
                os.fsync(fd)
            finally:
                os.close(fd)
            fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)  # the new file's name
            finally:
                os.close(fd)
        self._allocated = True
        if self._legacy is not None:
            self.save(self._legacy)
            self._legacy = None
            self._drop_legacy()

    def save(self, position: Position) -> None:
        """Overwrite the older slot with ``position``; raises OSError."""
        self.allocate()
        generation = self.generation + 1
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.pwrite(fd, _pack(generation, position), (generation % 2) * SLOT.size)
        finally:
            os.close(fd)
        if written != SLOT.size:
            raise OSError(errno.EIO, f"short write saving the cursor of sink {self.sink}")
        self.generation = generation

    def _load_legacy(self) -> Position | None:
        path, _ = _legacy_paths(self.directory, self.sink)
        try:
            raw = json.loads(path.read_text())
            return Position(int(raw["segment"]), int(raw["offset"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "audit spool: unreadable cursor of sink %s (%s); replaying from the oldest segment",
                self.sink,
                exc,
            )
            return None

    def _drop_legacy(self) -> None:
        """Delete an earlier version's cursor files (once this one holds the cursor)."""
        for path in _legacy_paths(self.directory, self.sink):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
