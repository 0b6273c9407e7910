"""The ``jsonl_gz`` sink: rolling gzip segments, one gzip member per batch.

Segments are named ``<prefix>.NNNNNN.jsonl.gz`` (a ``.jsonl`` suffix on the prefix is dropped
first).  On start the sink continues after the highest number already on disk and creates each
segment exclusively (``O_EXCL``), so it never appends to an old segment and two processes given
the same prefix never share one.  A segment is created at the first write after start or after
a roll.

Each batch becomes one complete gzip member (``zlib`` with ``wbits=31``), compressed and written
from a worker thread.  A gzip file is a concatenation of members, so a segment stays readable by
``gzip -dc`` / ``zcat`` up to its last complete member even if the process died in the middle of
a write.  If a write fails, the segment is truncated back to the end of its last complete member
before :class:`SinkError` is raised, so the bus's retry appends the batch exactly once; should the
truncation fail as well, the segment is abandoned (the broken member stays last in it) and the
next write starts a new segment.

Rolling: after a batch, the segment is finished (fsynced and closed) once it holds at least
``roll_bytes`` uncompressed bytes or ``roll_lines`` lines.  A batch is never split across
segments, so a segment can exceed either limit by at most one batch.

Retention (Dynamo's ``DYN_REQUEST_TRACE_FILE_MAX_BYTES`` / ``..._FILE_MAX_AGE_SECS``; off by
default): at start and after each roll, finished segments of the prefix are deleted, oldest
first, while all of them together take more than ``max_bytes`` on disk, and any whose last
write is older than ``max_age_s``.  Each deletion is logged.  A segment is never deleted while a
writer has it open — this one's, or another process's with the same prefix (``--workers N``):
writers hold a shared ``flock`` on their open segment, and a segment is deleted only under an
exclusive one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Sequence

from auditgate.audit.record import Envelope
from auditgate.errors import ConfigError, SinkError
from auditgate.sinks.jsonl import (
    batch_policy,
    encoded,
    make_parent,
    pieces,
    sync_directory,
    write_all,
)

log = logging.getLogger("auditgate.sinks")

SUFFIX = ".jsonl.gz"


def segment_prefix(prefix: str) -> str:
    """The prefix segments are named after: ``prefix`` without a trailing ``.jsonl``."""
    return prefix.removesuffix(".jsonl")


def existing_segments(prefix: str) -> list[tuple[int, str]]:
    """``(number, path)`` of every segment of ``prefix`` on disk, in number order."""
    directory, base = os.path.split(os.path.abspath(segment_prefix(prefix)))
    pattern = re.compile(re.escape(base) + r"\.(\d{6,})" + re.escape(SUFFIX))
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [
        (int(m[1]), os.path.join(directory, name))
        for name in names
        if (m := pattern.fullmatch(name))
    ]
    return sorted(found)


class JsonlGzSink:
    """Writes records to rolling gzip segments ``<prefix>.NNNNNN.jsonl.gz``."""

    name = "jsonl_gz"

    def __init__(
        self,
        prefix: str,
        *,
        buffer_bytes: int = 1 << 20,
        flush_interval_ms: int = 1000,
        roll_bytes: int = 256 << 20,
        roll_lines: int | None = None,
        compresslevel: int = 6,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
    ) -> None:
        if roll_bytes <= 0:
            raise ConfigError(f"roll_bytes={roll_bytes}: must be > 0")
        if roll_lines is not None and roll_lines <= 0:
            raise ConfigError(f"roll_lines={roll_lines}: must be > 0")
        if not 0 <= compresslevel <= 9:
            raise ConfigError(f"compresslevel={compresslevel}: must be between 0 and 9")
        self.prefix = segment_prefix(prefix)
        """Segment names are ``<prefix>.NNNNNN.jsonl.gz``."""
        self.buffer_bytes = buffer_bytes
        """Largest chunk of lines handed to the compressor at once."""
        self.roll_bytes = roll_bytes
        """Uncompressed bytes after which a segment is finished."""
        self.roll_lines = roll_lines
        """Lines after which a segment is finished (``None``: no line limit)."""
        self.compresslevel = compresslevel
        """zlib compression level of each member."""
        self.max_bytes = max_bytes
        """Retention: most bytes the finished segments may take on disk (``None``: no bound)."""
        self.max_age_s = max_age_s
        """Retention: finished segments last written longer ago are deleted (``None``: never)."""
        self.batching = batch_policy(buffer_bytes, flush_interval_ms)
        """How the bus groups records for this sink."""
        self.segment: str | None = None
        """Path of the segment being written, if one is open."""
        self._fd: int | None = None
        self._number = 0
        self._size = 0
        self._bytes = 0
        self._lines = 0
        self._ready = False  # True between open() and close()
        self._unnamed = False
        """A segment was created since the last sync (its directory entry is not synced)."""
        self._sync_failure: str | None = None
        """A finished segment's fsync failed; the next sync reports it."""
        # Serialises the worker threads of write() and close(): a write the bus gave up on
        # (cancelled at the shutdown deadline) may still be running in its thread.
        self._lock = threading.Lock()

    def segment_path(self, number: int) -> str:
        """The path of segment ``number``."""
        return f"{self.prefix}.{number:06d}{SUFFIX}"

    async def open(self) -> None:
        """Create the directory and find where the numbering continues."""
        await asyncio.to_thread(self._open_sync)

    async def write(self, batch: Sequence[Envelope]) -> None:
        """Append ``batch`` as one gzip member to the current segment, or nothing."""
        if batch:
            await asyncio.to_thread(self._write_sync, encoded(batch))

    async def sync(self) -> None:
        """Make every written member survive a power loss: the current segment and the
        names of segments started since the last sync; reports a finished segment's failed
        ``fsync`` too."""
        await asyncio.to_thread(self._sync_files)

    async def close(self) -> None:
        """Finish the current segment (fsync and close)."""
        await asyncio.to_thread(self._close_sync)

    def _sync_files(self) -> None:
        with self._lock:
            failed, self._sync_failure = self._sync_failure, None
            if failed is not None:
                raise SinkError(f"jsonl_gz sink: {failed}")
            try:
                if self._fd is not None:
                    os.fdatasync(self._fd)
                if self._unnamed:
                    sync_directory(self.prefix)
                    self._unnamed = False
            except OSError as exc:
                raise SinkError(f"jsonl_gz sink: sync of {self.segment!r} failed: {exc}") from exc

    def _open_sync(self) -> None:
        make_parent(self.prefix)
        segments = existing_segments(self.prefix)
        with self._lock:
            self._number = segments[-1][0] if segments else 0
            self._ready = True
            self._prune()

    def _compress(self, lines: list[bytes]) -> tuple[bytes, int]:
        compressor = zlib.compressobj(self.compresslevel, zlib.DEFLATED, 31)
        parts: list[bytes] = []
        size = 0
        for chunk in pieces(lines, self.buffer_bytes):
            size += len(chunk)
            parts.append(compressor.compress(chunk))
        parts.append(compressor.flush())
        return b"".join(parts), size

    def _write_sync(self, lines: list[bytes]) -> None:
        member, size = self._compress(lines)  # outside the lock: it touches no sink state
        with self._lock:
            if not self._ready:
                raise SinkError("jsonl_gz sink: write on a sink that is not open")
            fd = self._fd if self._fd is not None else self._start_segment()
            segment = self.segment
            try:
                write_all(fd, member)
            except OSError as exc:
                self._undo(fd)
                raise SinkError(f"jsonl_gz sink: write to {segment!r} failed: {exc}") from exc
            self._size += len(member)
            self._bytes += size
            self._lines += len(lines)
            if self._bytes >= self.roll_bytes or (
                self.roll_lines is not None and self._lines >= self.roll_lines
            ):
                self._finish_segment()

    def _start_segment(self) -> int:
        try:
            make_parent(self.prefix)  # the directory may have been cleaned up since open()
        except ConfigError as exc:
            raise SinkError(f"jsonl_gz sink: {exc}") from exc
        number = self._number + 1
        while True:
            path = self.segment_path(number)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                number += 1  # another process with the same prefix took it
                continue
            except OSError as exc:
                raise SinkError(f"jsonl_gz sink: cannot create {path!r}: {exc}") from exc
            break
        # Held while the segment is open: retention never deletes a segment being written.
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._fd, self.segment, self._number = fd, path, number
        self._size = self._bytes = self._lines = 0
        self._unnamed = True
        return fd

    def _undo(self, fd: int) -> None:
        try:
            os.ftruncate(fd, self._size)
            os.lseek(fd, self._size, os.SEEK_SET)
        except OSError as exc:
            log.error(
                "jsonl_gz sink: could not truncate %s back to its last complete member (%s); "
                "leaving that segment, the next write starts a new one",
                self.segment,
                exc,
            )
            self._finish_segment()

    def _finish_segment(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            # The data was written; raising would make the bus write the batch again.  A
            # durable spool asks for a sync before it forgets these records: that one fails.
            log.error("jsonl_gz sink: fsync of finished segment %s failed: %s", self.segment, exc)
            self._sync_failure = f"fsync of finished segment {self.segment!r} failed: {exc}"
        finally:
            os.close(fd)
        self.segment = None
        self._prune()

    def _prune(self) -> None:
        """Delete finished segments past the retention bounds, oldest first (under the lock)."""
        if self.max_bytes is None and self.max_age_s is None:
            return
        now = time.time()
        found = []
        for _, path in existing_segments(self.prefix):
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(path)
                found.append((path, stat.st_size, stat.st_mtime))
        total = sum(size for _, size, _ in found)
        for path, size, mtime in found:
            too_old = self.max_age_s is not None and now - mtime > self.max_age_s
            too_big = self.max_bytes is not None and total > self.max_bytes
            if not (too_old or too_big) or path == self.segment:
                continue
            if self._delete(path):
                total -= size
                log.info(
                    "jsonl_gz sink: retention removed %s (%d bytes, %s)",
                    path,
                    size,
                    "older than max age" if too_old else "over max bytes",
                )

    @staticmethod
    def _delete(path: str) -> bool:
        """Delete ``path`` unless a writer has it open; True if deleted."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            os.unlink(path)
            return True
        except OSError as exc:
            log.warning("jsonl_gz sink: retention could not remove %s: %s", path, exc)
            return False
        finally:
            os.close(fd)

    def _close_sync(self) -> None:
        with self._lock:
            self._ready = False
            self._finish_segment()
