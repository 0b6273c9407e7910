"""The ``jsonl`` sink: buffered appends of one record per line to one file.

Batching: the bus groups records for up to ``flush_interval_ms`` (the sink's ``batching``
linger), and each batch is appended from a worker thread (``asyncio.to_thread``), so file I/O
never runs on the event loop.  A batch is written as pieces of whole lines of at most
``buffer_bytes`` each (a single longer line is written as it is), which bounds the memory one
write copies.

No half-written lines, no duplicates on retry.  Every batch is appended under an exclusive
``flock`` on the file (so several gateway processes may share one file): the sink notes the file
size, writes the pieces, and if any write fails it truncates the file back to that size before
raising :class:`SinkError`.  The file therefore only ever grows by whole batches, and the bus's
retry of the same batch appends it exactly once.  A writer killed in the middle of a write
(SIGKILL, power loss) can still leave an incomplete last line; the next write (under the same
lock) finds the file not ending in a newline and cuts that fragment off, with a warning, before
appending.  If even the truncation fails (the disk is failing), the error is logged and the next
write repairs the tail as above; only then can a retried batch repeat lines.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Sequence

from auditgate.audit.record import Envelope
from auditgate.audit.sink import BatchPolicy
from auditgate.errors import ConfigError, SinkError

log = logging.getLogger("auditgate.sinks")

TYPICAL_RECORD_BYTES = 512
"""Rough size of a small (``usage_only``) record: turns a byte budget into a record count."""

_TAIL_SCAN = 1 << 16


def batch_policy(buffer_bytes: int, flush_interval_ms: int) -> BatchPolicy:
    """The bus grouping for a file sink: about ``buffer_bytes`` of records or the interval."""
    if buffer_bytes <= 0:
        raise ConfigError(f"buffer_bytes={buffer_bytes}: must be > 0")
    if flush_interval_ms <= 0:
        raise ConfigError(f"flush_interval_ms={flush_interval_ms}: must be > 0")
    return BatchPolicy(
        max_records=max(1, buffer_bytes // TYPICAL_RECORD_BYTES),
        linger_s=flush_interval_ms / 1000,
    )


def encoded(batch: Sequence[Envelope]) -> list[bytes]:
    """The JSON line of each record, without newlines.

    Called on the event loop before the batch goes to a worker thread: ``Envelope.json`` encodes
    once and caches the result for every sink, and doing that here keeps the cache filled by one
    thread (encoding holds the GIL anyway, so a thread would not make it cheaper).
    """
    return [envelope.json for envelope in batch]


def pieces(lines: Sequence[bytes], limit: int) -> Iterator[bytes]:
    """``lines`` newline-terminated and joined into chunks of at most ``limit`` bytes.

    A chunk always holds whole lines; a line longer than ``limit`` is a chunk by itself.
    """
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) + 1 > limit:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk += (line, b"\n")
        size += len(line) + 1
    if chunk:
        yield b"".join(chunk)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a regular file may take a short write)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_path(path: str) -> None:
    """``fsync`` the file or directory at ``path`` (opened by name); raises ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(path: str) -> None:
    """``fsync`` the directory holding ``path``: a new file's name survives a power loss."""
    fsync_path(os.path.dirname(os.path.abspath(path)))


def make_parent(path: str) -> None:
    """Create the directories above ``path``; a failure is a configuration error."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {parent!r}: {exc}") from exc


class JsonlSink:
    """Appends records, one JSON line each, to the file at ``path``."""

    name = "jsonl"

    def __init__(
        self, path: str, *, buffer_bytes: int = 1 << 20, flush_interval_ms: int = 1000
    ) -> None:
        self.path = path
        """The file records are appended to; its directory is created on open."""
        self.buffer_bytes = buffer_bytes
        """Largest chunk one ``os.write`` is given (whole lines only)."""
        self.batching = batch_policy(buffer_bytes, flush_interval_ms)
        """How the bus groups records for this sink."""
        self._fd: int | None = None
        self._named = False
        """The directory entry of the file was synced (once per open)."""
        # Serialises the worker threads of write() and close(): a write the bus gave up on
        # (cancelled at the shutdown deadline) may still be running in its thread.
        self._lock = threading.Lock()

    async def open(self) -> None:
        """Create the parent directories and open the file for appending."""
        await asyncio.to_thread(self._open_sync)

    async def write(self, batch: Sequence[Envelope]) -> None:
        """Append every record of ``batch``, or nothing (see the module docstring)."""
        if batch:
            await asyncio.to_thread(self._write_sync, encoded(batch))

    async def sync(self) -> None:
        """Make every appended line (and the file's name) survive a power loss."""
        await asyncio.to_thread(self._sync_file)

    async def close(self) -> None:
        """Flush the file to disk and close it."""
        await asyncio.to_thread(self._close_sync)

    def _sync_file(self) -> None:
        with self._lock:
            fd = self._fd
            if fd is None:
                raise SinkError("jsonl sink: sync on a closed sink")
            try:
                os.fdatasync(fd)
                if not self._named:
                    sync_directory(self.path)
                    self._named = True
            except OSError as exc:
                raise SinkError(f"jsonl sink: sync of {self.path!r} failed: {exc}") from exc

    def _open_sync(self) -> None:
        make_parent(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"jsonl sink: cannot open {self.path!r}: {exc}") from exc
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = fd
            self._named = False

    def _write_sync(self, lines: list[bytes]) -> None:
        with self._lock:
            fd = self._fd
            if fd is None:
                raise SinkError("jsonl sink: write on a closed sink")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise SinkError(f"jsonl sink: cannot lock {self.path!r}: {exc}") from exc
            try:
                self._append(fd, lines)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _append(self, fd: int, lines: list[bytes]) -> None:
        try:
            start = self._repair_tail(fd)
        except OSError as exc:
            raise SinkError(f"jsonl sink: cannot inspect {self.path!r}: {exc}") from exc
        try:
            for chunk in pieces(lines, self.buffer_bytes):
                write_all(fd, chunk)
        except OSError as exc:
            try:
                os.ftruncate(fd, start)
            except OSError as undo:
                log.error(
                    "jsonl sink: could not truncate %s back to %d bytes after a failed write "
                    "(%s); the next write repairs the tail",
                    self.path,
                    start,
                    undo,
                )
            raise SinkError(f"jsonl sink: write to {self.path!r} failed: {exc}") from exc

    def _repair_tail(self, fd: int) -> int:
        """Cut an incomplete last line (left by a killed writer); returns the file size."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        end = size
        while end > 0:
            begin = max(0, end - _TAIL_SCAN)
            newline = os.pread(fd, end - begin, begin).rfind(b"\n")
            if newline >= 0:
                end = begin + newline + 1
                break
            end = begin
        os.ftruncate(fd, end)
        log.warning(
            "jsonl sink: removed an incomplete last line (%d bytes) from %s, left by an "
            "interrupted writer",
            size - end,
            self.path,
        )
        return end

    def _close_sync(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                os.fsync(fd)
            except OSError as exc:
                raise SinkError(f"jsonl sink: fsync of {self.path!r} failed: {exc}") from exc
            finally:
                os.close(fd)
