"""The durable mode's local write-ahead spool (DESIGN §6): framed segments, group commit, cursors.

Layout of ``DYN_AUDIT_SPOOL_DIR``:

- ``NNNNNNNNNNNNNNNN.seg`` — append-only segments.  Each record is one frame:
  ``length:u32 crc:u32 appended_ms:u64`` (little-endian) then ``length`` bytes of the record's
  JSON; ``crc`` is CRC-32 over ``appended_ms`` and the JSON, so a torn, zero-filled or flipped
  frame never passes as a record.
- ``cursor.<sink>.json`` — how far a sink has stored, ``{"segment": n, "offset": o}``.

Contracts:

- :meth:`Spool.append` is thread-safe and O(1): it frames the record and queues it for the single
  writer thread, which writes every queued record in one ``O_DSYNC`` write (data and size on
  disk when it returns, as write + fdatasync) for the whole group, then reports the group
  durable through ``on_commit`` (called on the writer thread).
- Group commits start at most every ``commit_interval_s`` (start to start).  Each commit costs
  the serving core a fixed amount (thread wake-ups, GIL hand-offs, the disk flush, the event
  loop's callback) whatever its size, and a group holds the records that arrived during the
  previous commit: on a disk whose fdatasync is fast, groups shrink to a few records and that
  fixed cost is paid every few requests.  The interval bounds it; a record waits at most that
  long more (no wait at all when the previous commit started longer ago, e.g. after idle).
- A record is durable once its group's ``on_commit`` ran with ``error=None``; a failed write is
  rolled back (the segment truncated to its last committed length) and reported with the error.
- :meth:`Spool.recover` (before :meth:`Spool.start`) checks every segment some sink still needs,
  cuts each at its first torn or corrupt frame (truncates, logs, counts in the returned
  :class:`Recovery`), and deletes the segments every sink has passed.  Writing always starts in a
  new segment, so recovered segments are never appended to.
- Cursors are saved by atomic rename without fsync: after a power loss a cursor may fall back,
  which replays records — sinks are idempotent on ``request_id``, so at least once is enough.
- ``full`` is true while the segments hold ``max_bytes`` or more; it clears by itself once sinks
  pass whole segments and they are deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from auditgate.audit.record import Envelope
from auditgate.errors import AuditgateError

log = logging.getLogger("auditgate.audit.spool")

HEADER: Final = struct.Struct("<IIQ")
"""Frame header: payload length, CRC-32 of (appended_ms bytes + payload), append time (unix ms)."""
_STAMP: Final = struct.Struct("<Q")
MAX_FRAME: Final = 1 << 30
"""A length above this is corruption, not a record."""
SUFFIX: Final = ".seg"
COMMIT_INTERVAL_S: Final = 0.005
"""Default least interval between group commits' starts (see the module docstring).  5 ms: at
c=64 on one core, 2 ms cost ~8 % more throughput for streams (bench.durable, interleaved runs),
10 ms no better than 5; after idle the first record is committed at once."""


_Queued = tuple[Envelope, bytes]
"""A record waiting for its group commit, with its frame header."""


class SpoolError(AuditgateError):
    """The spool could not make a record durable (disk full, I/O error, closed)."""


class Position(NamedTuple):
    """A byte position in the spool: segment index, offset in that segment."""

    segment: int
    offset: int


class Frame(NamedTuple):
    """One record read back from the spool."""

    payload: bytes
    """The record's JSON."""
    appended_ms: int
    start: Position
    end: Position
    """Position just after this frame: where a sink's cursor goes once it stored it."""


def encode_frame(payload: bytes, appended_ms: int) -> bytes:
    """One framed record."""
    stamp = _STAMP.pack(appended_ms)
    crc = zlib.crc32(payload, zlib.crc32(stamp))
    return HEADER.pack(len(payload), crc, appended_ms) + payload


def parse_frames(
    data: bytes, segment: int, base: int, max_records: int
) -> tuple[list[Frame], int, str | None]:
    """Frames at the start of ``data`` (which starts at offset ``base`` of ``segment``).

    Returns ``(frames, consumed, problem)``: ``consumed`` bytes hold whole valid frames; a
    ``problem`` describes the first bad frame (``None`` when the data ends cleanly or
    ``max_records`` was reached).  An incomplete frame at the very end is reported as torn.
    """
    frames: list[Frame] = []
    pos, size = 0, len(data)
    view = memoryview(data)
    while pos < size and len(frames) < max_records:
        if size - pos < HEADER.size:
            return frames, pos, f"torn header ({size - pos} of {HEADER.size} bytes)"
        length, crc, stamp = HEADER.unpack_from(data, pos)
        if length == 0 or length > MAX_FRAME:
            return frames, pos, f"bad length {length}"
        end = pos + HEADER.size + length
        if end > size:
            return frames, pos, f"torn frame ({size - pos - HEADER.size} of {length} bytes)"
        payload = bytes(view[pos + HEADER.size : end])
        if zlib.crc32(payload, zlib.crc32(_STAMP.pack(stamp))) != crc:
            return frames, pos, "checksum mismatch"
        frames.append(
            Frame(payload, stamp, Position(segment, base + pos), Position(segment, base + end))
        )
        pos = end
    return frames, pos, None


@dataclasses.dataclass(slots=True)
class Cut:
    """A segment cut at recovery: where, how many bytes went, and why."""

    segment: int
    offset: int
    removed: int
    reason: str


@dataclasses.dataclass(slots=True)
class Recovery:
    """What :meth:`Spool.recover` found."""

    cursors: dict[str, Position]
    """Each sink's starting position (its saved cursor, or the oldest segment)."""
    backlog: dict[str, int]
    """Records each sink has not stored yet."""
    cuts: list[Cut]
    """Torn or corrupt tails that were cut."""
    live: int
    """Index of the segment new records go to; everything before it was recovered."""


CommitHook = Callable[[list[tuple[Envelope, Position]], int, BaseException | None], None]
"""``on_commit(records with their end positions, appended_ms, error)``, on the writer thread."""


class Spool:
    """Segments on disk, one writer thread, per-sink cursors."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
        sync: bool = True,
        commit_interval_s: float = COMMIT_INTERVAL_S,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, min(64 << 20, max_bytes // 8))
        """A segment is sealed once a group would take it past this; deletion is per segment."""
        self.sync = sync
        """Write each group durably (``O_DSYNC``; off only for tests of everything but
        durability)."""
        self.commit_interval_s = commit_interval_s
        """Least time from one group commit's start to the next one's."""
        self.commits = 0
        """Group commits (one durable write each) so far."""
        self._lock = threading.Lock()
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        """Wakes the writer: a first record was queued, or stop()."""
        self._queue: list[_Queued] = []
        """Queued records with their frame headers."""
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._on_commit: CommitHook | None = None
        self._sizes: dict[int, int] = {}
        """Committed length of every segment on disk (the live one included)."""
        self._bytes = 0
        self._fd = -1
        self._live = 0
        self._offset = 0

    # -- state -------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes of committed frames in the spool."""
        return self._bytes

    @property
    def full(self) -> bool:
        return self._bytes >= self.max_bytes

    @property
    def end(self) -> Position:
        """Just after the last committed record."""
        return Position(self._live, self._offset)

    def segments(self) -> list[int]:
        """Indices of the segments on disk, oldest first."""
        with self._lock:
            return sorted(self._sizes)

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:016d}{SUFFIX}"

    def _cursor_path(self, sink: str) -> Path:
        return self.directory / f"cursor.{sink}.json"

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, sinks: Sequence[str]) -> Recovery:
        """Scan, cut and clean the spool; blocking (run it off the event loop)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found = sorted(
            int(p.name[: -len(SUFFIX)])
            for p in self.directory.iterdir()
            if p.name.endswith(SUFFIX) and p.name[: -len(SUFFIX)].isdigit()
        )
        first = found[0] if found else 0
        cursors = {name: self.load_cursor(name) or Position(first, 0) for name in sinks}
        oldest = min(cursors.values(), default=Position(first, 0))
        backlog = dict.fromkeys(sinks, 0)
        cuts: list[Cut] = []
        for segment in found:
            path = self._path(segment)
            passed = segment == oldest.segment and oldest.offset >= path.stat().st_size
            if segment < oldest.segment or passed:  # every sink stored all of it
                path.unlink()
                continue
            data = path.read_bytes()
            frames, valid, problem = parse_frames(data, segment, 0, len(data))
            if problem is not None:
                cut = Cut(segment, valid, len(data) - valid, problem)
                cuts.append(cut)
                log.error(
                    "audit spool: %s at %s offset %d: cut %d byte(s); the %d record(s) before it "
                    "are kept",
                    problem,
                    path,
                    valid,
                    cut.removed,
                    len(frames),
                )
                with path.open("r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            for frame in frames:
                for name, cursor in cursors.items():
                    if frame.start >= cursor:
                        backlog[name] += 1
            self._sizes[segment] = valid
        self._bytes = sum(self._sizes.values())
        self._live = (found[-1] + 1) if found else 0
        self._offset = 0
        return Recovery(cursors, backlog, cuts, self._live)

    # -- writing -----------------------------------------------------------------------------

    def start(self, on_commit: CommitHook) -> None:
        """Open the live segment and start the writer thread."""
        self._on_commit = on_commit
        self._open_live()
        self._thread = threading.Thread(target=self._run, name="auditgate-spool", daemon=True)
        self._thread.start()

    def append(self, envelope: Envelope) -> None:
        """Queue one record for the next group commit; thread-safe, never blocks on I/O.

        The frame header (length, CRC, append time) is built here, on the caller's thread (the
        event loop), so the writer thread runs almost no Python: it shares the serving core
        and the GIL, and every GIL hand-off between the two threads costs a context switch.
        """
        payload = envelope.json
        stamp = time.time_ns() // 1_000_000
        header = HEADER.pack(
            len(payload), zlib.crc32(payload, zlib.crc32(_STAMP.pack(stamp))), stamp
        )
        with self._lock:
            if self._stopping:
                raise SpoolError("the audit spool is closed")
            queue = self._queue
            queue.append((envelope, header))
            if len(queue) == 1:  # the writer may be waiting for a first record
                self._wake.put(None)

    def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop the writer and close the live segment."""
        with self._lock:
            self._stopping = True
        self._wake.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._fd >= 0 and (self._thread is None or not self._thread.is_alive()):
            os.close(self._fd)
            self._fd = -1

    def _open_live(self) -> None:
        path = self._path(self._live)
        # O_DSYNC: each write returns once its data (and the size that finds it) is on disk,
        # like write + fdatasync in one system call, so one GIL hand-off per group fewer.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_DSYNC if self.sync else 0)
        self._fd = os.open(path, flags, 0o644)
        with self._lock:
            self._sizes[self._live] = 0
        self._sync_directory()

    def _sync_directory(self) -> None:
        """Make a segment's creation durable (its name lives in the directory)."""
        if not self.sync:
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _run(self) -> None:
        started = float("-inf")  # the first commit does not wait
        wake = self._wake
        while True:
            wake.get()  # a first record was queued, or stop(); blocks without the GIL
            delay = started + self.commit_interval_s - time.monotonic()
            if delay > 0 and not self._stopping:
                # Let the group grow.  Only stop() wakes us now: append wakes on the first
                # record of a group, and this group has one already.
                with contextlib.suppress(queue.Empty):
                    wake.get(timeout=delay)
            with self._lock:
                group, self._queue = self._queue, []
                stopping = self._stopping
            if group:
                started = time.monotonic()
                self._commit(group)
            if stopping:  # append refuses once stopping: that group was the last
                return

    def _commit(self, group: list[_Queued]) -> None:
        """Write the group in one durable write, report it (durable or failed) to
        ``on_commit``; the reported append time is the group's oldest."""
        assert self._on_commit is not None
        appended_ms = HEADER.unpack(group[0][1])[2]
        placed: list[tuple[Envelope, Position]] = []
        parts: list[bytes] = []
        error: BaseException | None = None
        try:
            size = HEADER.size
            total = sum(size + len(envelope.json) for envelope, _ in group)
            if self._offset and self._offset + total > self.segment_bytes:
                os.close(self._fd)
                self._fd = -1
                self._live += 1
                self._offset = 0
                self._open_live()
            offset, live = self._offset, self._live
            for envelope, header in group:
                payload = envelope.json
                parts.append(header)
                parts.append(payload)
                offset += size + len(payload)
                placed.append((envelope, Position(live, offset)))
            data = b"".join(parts)
            _write_all(self._fd, data)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the waiting requests
            error = SpoolError(f"audit spool write failed: {type(exc).__name__}: {exc}")
            placed = [(envelope, Position(self._live, self._offset)) for envelope, _ in group]
            self._rollback()
        else:
            with self._lock:
                self._offset = offset
                self._sizes[self._live] = offset
                self._bytes += len(data)
                self.commits += 1
        self._on_commit(placed, appended_ms, error)

    def _rollback(self) -> None:
        """Cut a partly written group off the live segment, so no reader ever sees it."""
        try:
            if self._fd < 0:
                self._open_live()
            os.ftruncate(self._fd, self._offset)
        except OSError as exc:
            log.error("audit spool: cannot roll back a failed write: %s", exc)

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
                end = Position(self._live, self._offset)
                if position >= end:
                    return [], position
                limit = self._sizes.get(position.segment)
                later = [s for s in self._sizes if s > position.segment]
            if limit is not None and position.offset < limit:
                frames = self._read_segment(position, limit, max_records, chunk_bytes)
                if frames:
                    return frames, frames[-1].end
            position = Position(min(later), 0) if later else end

    def _read_segment(
        self, position: Position, limit: int, max_records: int, chunk_bytes: int
    ) -> list[Frame]:
        try:
            with self._path(position.segment).open("rb") as f:
                f.seek(position.offset)
                data = f.read(min(limit - position.offset, chunk_bytes))
                if len(data) >= HEADER.size:
                    length = HEADER.unpack_from(data, 0)[0]
                    if len(data) < HEADER.size + length <= limit - position.offset:
                        data += f.read(HEADER.size + length - len(data))  # one big record
        except FileNotFoundError:
            return []
        frames, _, problem = parse_frames(data, position.segment, position.offset, max_records)
        if problem is not None and not frames:
            log.error(
                "audit spool: %s in segment %d at offset %d; skipping the rest of the segment",
                problem,
                position.segment,
                position.offset,
            )
        return frames

    # -- cursors and deletion ----------------------------------------------------------------

    def load_cursor(self, sink: str) -> Position | None:
        """A sink's saved cursor, or None when it has none (or it is unreadable)."""
        try:
            raw = json.loads(self._cursor_path(sink).read_text())
            return Position(int(raw["segment"]), int(raw["offset"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "audit spool: unreadable cursor of sink %s (%s); replaying from start", sink, exc
            )
            return None

    def save_cursor(self, sink: str, position: Position) -> None:
        """Persist a sink's cursor by atomic rename; blocking."""
        path = self._cursor_path(sink)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"segment": position.segment, "offset": position.offset}))
        os.replace(tmp, path)

    def release(self, cursors: Iterable[Position]) -> int:
        """Delete sealed segments every cursor has passed; returns how many went.  Blocking."""
        oldest = min(cursors, default=None)
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
