"""The durable mode's local write-ahead spool (DESIGN §6): framed segments, group commit, cursors.

The files in ``DYN_AUDIT_SPOOL_DIR`` (segments, cursors, ownership locks) and the recovery scan
are :mod:`auditgate.audit.spool.segments`; this module is the live spool on top of them.

Contracts:

- :meth:`Spool.append` runs on the event loop and is O(1): it frames the record and queues it.
  At the end of that loop iteration every queued record goes as one batch over a socket to the
  writer process (:mod:`auditgate.audit.spool.writer`), which writes it into the segment and
  ``fdatasync``s; batches that arrive while it syncs share its next sync (group commit without a
  timer: a record waits about one disk flush under any load).  The event loop never touches the
  disk and no thread of the gateway waits for it.
- A record is durable once its group's ``on_commit`` (on the event loop) ran with
  ``error=None``.  When the writer reports an error or dies, every record it had not made
  durable fails (its request gets a 503, never an unaudited answer); once that writer is gone,
  what it left after the committed end is cut off, and a new writer continues in a new segment.
- :meth:`Spool.recover` (before :meth:`Spool.start`) checks every segment some sink still needs,
  cuts each at its first torn or corrupt frame (truncates, logs, counts in the returned
  :class:`Recovery`), and deletes the segments every sink has passed but the one holding the
  newest record.  Writing always starts in a new segment, so recovered segments are never
  appended to.
- Cursors are overwritten in place without fsync (:mod:`auditgate.audit.spool.cursors`): after a
  power loss a cursor may fall back, which replays records — sinks are idempotent on
  ``request_id``, so at least once is enough.  (The durable bus syncs a sink before it saves
  that sink's cursor, so a cursor never passes a record the sink could still lose.)
- ``full`` is true while the segments hold ``max_bytes`` or more; it clears by itself once sinks
  pass whole segments and they are deleted.
- A full disk (ENOSPC) fails the records of the batch like any write error, and never wedges
  the spool: nothing that frees space needs new space (cursor saves write in place, deletion
  and cutting only unlink and truncate), a failed writer's segments without committed records
  are deleted, and a segment is at most an eighth of the volume (:meth:`Spool.recover`), so
  the one that holds the newest record, kept until a newer one commits, cannot fill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple, cast

from auditgate.audit import children
from auditgate.audit.record import Envelope
from auditgate.audit.spool import cursors, segments, writer
from auditgate.audit.spool.frames import HEADER, Frame, Position, frame_header
from auditgate.audit.spool.segments import Cut, Recovery, SpoolError

__all__ = ["CommitHook", "Cut", "Recovery", "Spool", "SpoolError"]

log = logging.getLogger("auditgate.audit.spool")

RESTART_BACKOFF_S: Final = (0.0, 0.1, 0.5, 2.0, 5.0)
"""Wait before the n-th writer restart in a row without a commit in between (then the last)."""

_Queued = tuple[Envelope, bytes]
"""A record waiting for its group commit, with its frame header."""


CommitHook = Callable[[list[tuple[Envelope, Position]], int, BaseException | None], None]
"""``on_commit(records with their end positions, appended_ms, error)``, on the event loop."""


class Spool:
    """The live spool: group commit through a writer process, committed state, per-sink reads
    and cursors over the files of :mod:`auditgate.audit.spool.segments`."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
        sync: bool = True,
        slots: int = 1,
    ) -> None:
        self.root = Path(directory)
        """``DYN_AUDIT_SPOOL_DIR``."""
        self.slots = slots
        """Processes sharing ``root`` (``--workers N``): each owns a ``worker-K`` directory."""
        self.directory = self.root
        """The directory this process owns, once :meth:`recover` claimed it."""
        self._claim: segments.Claim | None = None
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, min(64 << 20, max_bytes // 8))
        """A segment is sealed once a group would take it past this; deletion is per segment."""
        self.sync = sync
        """Sync each batch to disk (off only for tests of everything but durability: a batch
        then commits once written)."""
        self.commits = 0
        """Group commits (one sync each) so far."""
        self._lock = threading.Lock()
        """Guards what readers and cursor saves use from worker threads: ``_sizes``,
        ``_bytes``, ``_end``."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_commit: CommitHook | None = None
        self._queue: list[_Queued] = []
        """Appended records with their frame headers, sent at the end of the iteration."""
        self._flush_scheduled = False
        self._written: deque[_Written] = deque()
        """Groups sent to the writer, not yet durable, oldest first."""
        self._unsynced = 0
        """Their bytes (they count toward ``full``: the disk may be slower than the load)."""
        self._idle: asyncio.Future[None] | None = None
        """Set once nothing sent is waiting for its sync (``stop`` waits for it)."""
        self._stopping = False
        self._process: asyncio.subprocess.Process | None = None
        self._link: _WriterLink | None = None
        """The socket to the writer process; None while it is (re)starting or stopped."""
        self._restarting: asyncio.Task[None] | None = None
        self._failures = 0
        """Writer failures since the last commit (they set the restart backoff)."""
        self._backing_off = False
        self._sizes: dict[int, int] = {}
        """Committed length of every segment holding committed records."""
        self._bytes = 0
        self._end = Position(0, 0)
        """Just after the last committed record."""
        self._live = 0
        """The segment new batches go to."""
        self._written_offset = 0
        """Where the next batch goes in the live segment (ahead of ``_end`` while unsynced)."""
        self._cursors: dict[str, cursors.CursorFile] = {}
        """Each sink's cursor file (:meth:`recover` allocates them)."""

    # -- state -------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes of committed frames in the spool."""
        return self._bytes

    @property
    def full(self) -> bool:
        return self._bytes + self._unsynced >= self.max_bytes

    @property
    def end(self) -> Position:
        """Just after the last committed record."""
        return self._end

    def segments(self) -> list[int]:
        """Indices of the segments on disk, oldest first."""
        with self._lock:
            return sorted(self._sizes)

    def _path(self, segment: int) -> Path:
        return segments.segment_path(self.directory, segment)

    # -- recovery ----------------------------------------------------------------------------

    def claim(self) -> Path:
        """Lock the directory this process will own (:func:`segments.claim`); blocking.
        Raises :class:`SpoolError` when every slot is taken."""
        if self._claim is None:
            self._claim = segments.claim(self.root, self.slots)
            self.directory = self._claim.directory
        return self.directory

    def release_claim(self) -> None:
        """Unlock the owned directory (after :meth:`stop`)."""
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def recover(self, sinks: Sequence[str]) -> Recovery:
        """Claim the spool directory, scan, cut and clean it (:func:`segments.recover`), and
        allocate each sink's cursor file; blocking (run it off the event loop)."""
        directory = self.claim()
        self.segment_bytes = segments.fit_volume(directory, self.segment_bytes, self.slots)
        self._cursors = {name: cursors.CursorFile(directory, name) for name in sinks}
        saved = {name: cursor.load() for name, cursor in self._cursors.items()}
        recovery = segments.recover(directory, saved)
        for name, cursor in self._cursors.items():
            try:
                cursor.allocate()
            except OSError as exc:  # retried by every save; the spool still frees space
                log.error("audit spool: cannot create the cursor file of sink %s: %s", name, exc)
        self._sizes = dict(recovery.sizes)
        self._bytes = sum(self._sizes.values())
        self._live = recovery.live
        self._written_offset = 0
        newest = max(self._sizes, default=None)  # the newest record's: the committed end
        self._end = (
            Position(newest, self._sizes[newest]) if newest is not None else Position(self._live, 0)
        )
        return recovery

    # -- writing -----------------------------------------------------------------------------

    async def start(self, on_commit: CommitHook) -> None:
        """Start the writer process; then append on this event loop."""
        self._loop = asyncio.get_running_loop()
        self._on_commit = on_commit
        await self._start_writer()

    def append(self, envelope: Envelope) -> None:
        """Queue one record for the next group commit; on the event loop, O(1), no I/O.

        The queue goes to the writer at the end of the current event-loop iteration (one batch
        for every record appended in it), so a burst of requests shares one write and one sync.
        """
        if self._stopping or self._loop is None:
            raise SpoolError("the audit spool is closed")
        header = frame_header(envelope.json, time.time_ns() // 1_000_000)
        self._queue.append((envelope, header))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued (within ``timeout``), then stop the writer.  Records not
        durable by the deadline are reported failed (the writer may still store them: a
        restart then replays them)."""
        self._stopping = True
        if self._restarting is not None:  # let it finish: it sends what is queued
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._restarting), timeout)
        restarting = self._restarting
        if restarting is not None:
            # Still backing off or starting at the deadline: left alone it would start a
            # writer after this returned, one nobody stops (it holds the spool's writer lock,
            # and uvloop's close waits for it forever).  What it was to send fails below.
            restarting.cancel()
            await asyncio.wait([restarting])
        self._flush()
        if self._written:
            self._idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        self._fail_written(SpoolError("the audit spool stopped before the record was durable"))
        self._fail_queued(SpoolError("the audit spool stopped"))
        link, self._link = self._link, None
        if link is not None:
            link.transport.close()  # end of stream: the writer finishes and exits
        await self._reap(timeout)

    def _flush(self) -> None:
        """Send the queued records to the writer as one batch (at the end of an iteration)."""
        self._flush_scheduled = False
        link = self._link
        if link is None or not self._queue:
            if self._backing_off:
                self._fail_queued(SpoolError("audit spool writer keeps failing; retrying soon"))
            return  # a writer restart in progress sends the queue once it is up
        group, self._queue = self._queue, []
        size = HEADER.size
        total = sum(size + len(envelope.json) for envelope, _ in group)
        if self._written_offset and self._written_offset + total > self.segment_bytes:
            self._live += 1
            self._written_offset = 0
        live, start = self._live, self._written_offset
        offset = start
        parts = [writer.BATCH.pack(live, start, total)]
        placed: list[tuple[Envelope, Position]] = []
        for envelope, header in group:
            payload = envelope.json
            parts.append(header)
            parts.append(payload)
            offset += size + len(payload)
            placed.append((envelope, Position(live, offset)))
        link.transport.write(b"".join(parts))
        self._written_offset = offset
        self._unsynced += total
        self._written.append(_Written(placed, Position(live, offset), total, _appended(group)))

    def _synced(self, upto: Position) -> None:
        """Report every written group up to ``upto`` durable (one ``on_commit`` for them)."""
        assert self._on_commit is not None
        written = self._written
        if not written or written[0].end > upto:
            return
        appended_ms = written[0].appended_ms
        placed: list[tuple[Envelope, Position]] = []
        with self._lock:
            while written and written[0].end <= upto:
                group = written.popleft()
                placed += group.placed
                end = group.end  # a group lies in one segment: its end is that segment's size
                self._bytes += end.offset - self._sizes.get(end.segment, 0)
                self._sizes[end.segment] = end.offset
                self._unsynced -= group.size
                self._end = end
            self.commits += 1
        self._failures = 0
        self._on_commit(placed, appended_ms, None)
        if not written and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _writer_failed(self, why: str) -> None:
        """The writer reported an error or went away: what it had not synced failed (its
        requests get 503s); a new writer takes over in a new segment."""
        link, self._link = self._link, None
        if link is None:
            return
        link.transport.abort()  # it exits on an error anyway; make sure it stops writing
        self._failures += 1
        log.error(
            "audit spool: the writer failed: %s; starting a new one (failure %d in a row)",
            why,
            self._failures,
        )
        self._fail_written(SpoolError(f"audit spool writer failed: {why}"))
        if self._stopping:
            return
        assert self._loop is not None
        self._restarting = self._loop.create_task(self._restart(), name="audit-spool-restart")

    async def _restart(self) -> None:
        """Replace a failed writer until one starts (or the spool stops): wait out the backoff,
        cut what the old one left, start a new one in a new segment.

        A disk that keeps failing (full, read-only) must not cost a process start per batch, and
        a writer that cannot start must not leave records waiting: while backing off or after a
        failed start, new records fail at once (their requests get 503s)."""
        try:
            while not self._stopping:
                delay = RESTART_BACKOFF_S[min(self._failures, len(RESTART_BACKOFF_S)) - 1]
                if delay:
                    self._backing_off = True
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        self._backing_off = False
                await self._reap(5.0)
                self._cut_uncommitted()
                self._live += 1  # the old segment's tail is in doubt: seal it at its end
                self._written_offset = 0
                try:
                    await self._start_writer()
                except OSError as exc:
                    self._failures += 1
                    log.error(
                        "audit spool: cannot start the writer: %s (failure %d in a row)",
                        exc,
                        self._failures,
                    )
                    self._fail_queued(SpoolError(f"audit spool writer cannot start: {exc}"))
                    continue
                self._flush()
                return
        finally:
            self._restarting = None

    def _fail_written(self, error: SpoolError) -> None:
        """Report every written, not yet durable group failed."""
        assert self._on_commit is not None
        failed, self._written = list(self._written), deque()
        self._unsynced = 0
        for group in failed:
            self._on_commit(group.placed, group.appended_ms, error)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _fail_queued(self, error: SpoolError) -> None:
        """Report every queued, not yet written record failed."""
        assert self._on_commit is not None
        queued, self._queue = self._queue, []
        if queued:
            end = Position(self._live, self._written_offset)
            self._on_commit([(envelope, end) for envelope, _ in queued], _appended(queued), error)

    def _cut_uncommitted(self) -> None:
        """Cut what a failed writer left after the committed end off the segments, so no
        reader and no recovery ever sees it (run once that writer has exited); delete the
        segments it created without committing a record in them (a disk that keeps failing
        must not collect an empty file per writer restart)."""
        for segment in range(self._end.segment, self._live + 1):
            with self._lock:
                size = self._sizes.get(segment)
            path = self._path(segment)
            try:
                if size is None:
                    path.unlink()
                else:
                    os.truncate(path, size)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("audit spool: cannot cut segment %d to %s bytes: %s", segment, size, exc)

    async def _start_writer(self) -> None:
        assert self._loop is not None
        mine, theirs = socket.socketpair()
        argv = [sys.executable, "-m", "auditgate.audit.spool.writer", str(self.directory),
                str(theirs.fileno()), f"--segment-bytes={self.segment_bytes}"]  # fmt: skip
        if not self.sync:
            argv.append("--no-sync")
        try:
            self._process = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL
            )
        except BaseException:  # OSError, or cancelled by stop()
            mine.close()
            raise
        finally:
            theirs.close()
        link = _WriterLink(self)
        try:
            await self._loop.connect_accepted_socket(lambda: link, mine)
        except BaseException:  # OSError, or cancelled by stop()
            mine.close()  # the writer sees the end of its socket and exits; _reap collects it
            raise
        self._link = link

    async def _reap(self, timeout: float | None) -> None:
        """Wait for the writer process to exit (killing it after ``timeout``)."""
        process, self._process = self._process, None
        if process is None:
            return
        await children.reap(process, timeout, "audit spool: the writer")

    # -- reading -----------------------------------------------------------------------------

    def read(
        self, position: Position, max_records: int, chunk_bytes: int = 1 << 20
    ) -> tuple[list[Frame], Position]:
        """Committed frames from ``position`` on (at most ``max_records``), and the position
        after them; blocking.

        Skips past the end of sealed segments and over deleted ones, so the returned position
        moves even when no frame is returned (``([], end)`` at the committed end).  A frame that
        fails its checksum here (the disk changed since recovery) ends that segment for the
        reader: logged, and the reader moves on to the next segment.
        """
        while True:
            with self._lock:
                end = self._end
                if position >= end:
                    return [], position
                limit = self._sizes.get(position.segment)
                later = [s for s in self._sizes if s > position.segment]
            if limit is not None and position.offset < limit:
                frames = segments.read_segment(
                    self.directory, position, limit, max_records, chunk_bytes
                )
                if frames:
                    return frames, frames[-1].end
            position = Position(min(later), 0) if later else end

    # -- cursors and deletion ----------------------------------------------------------------

    def load_cursor(self, sink: str) -> Position | None:
        """A sink's saved cursor, or None when it has none (or it is unreadable)."""
        return cursors.CursorFile(self.directory, sink).load()

    def save_cursor(self, sink: str, position: Position) -> None:
        """Persist a sink's cursor, in place (no new space needed); blocking, raises OSError."""
        cursor = self._cursors.get(sink)
        if cursor is None:
            cursor = self._cursors[sink] = cursors.CursorFile(self.directory, sink)
            cursor.load()
        cursor.save(position)

    def release(self, stored: Iterable[Position]) -> int:
        """Delete sealed segments every sink has stored (``stored``: how far each has); returns
        how many went.  The newest record's segment always stays: every position is at most
        the committed end.  Blocking."""
        oldest = min(stored, default=None)
        if oldest is None:
            return 0
        with self._lock:
            done = [s for s in self._sizes if s < oldest.segment and s != self._live]
            for segment in done:
                self._bytes -= self._sizes.pop(segment)
        for segment in done:
            try:
                self._path(segment).unlink()
            except FileNotFoundError:
                log.error("audit spool: segment %d vanished before deletion", segment)
        return len(done)


class _Written(NamedTuple):
    """A group sent to the writer as one batch, not yet durable."""

    placed: list[tuple[Envelope, Position]]
    """Its records with their end positions."""
    end: Position
    """Its last record's end (a group lies in one segment)."""
    size: int
    """Its bytes."""
    appended_ms: int
    """Append time of its oldest record."""


class _WriterLink(asyncio.Protocol):
    """The event loop's end of the socket to one writer process."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.received = b""
        """Bytes of a reply not complete yet."""
        self.transport: asyncio.WriteTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream socket's transport (uvloop's does not subclass asyncio's classes).
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        """Replies: batches durable up to a position, or the writer's error."""
        spool = self.spool
        reply = self.received + data
        used = 0
        while len(reply) - used >= writer.DONE.size and spool._link is self:
            segment, end, code = writer.DONE.unpack_from(reply, used)
            used += writer.DONE.size
            if code:
                spool._writer_failed(f"{os.strerror(code)} (errno {code})")
            else:
                spool._synced(Position(segment, end))
        self.received = reply[used:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.spool._link is self:
            # A reset is the same death: it had our batch unread when it went.
            gone = exc is None or isinstance(exc, ConnectionResetError)
            self.spool._writer_failed("it exited" if gone else f"its socket failed: {exc}")


def _appended(group: list[_Queued]) -> int:
    return int(HEADER.unpack(group[0][1])[2])
