"""The spool's files (DESIGN §6): who owns a directory, its cursors, and the recovery scan.

Layout of a spool directory:

- ``NNNNNNNNNNNNNNNN.seg`` — append-only segments of frames, one per record
  (:mod:`auditgate.audit.frames`: length, CRC-32, append time, the record's JSON); the live
  one may end in zeros the writer put ahead of its records (``Writer.prepare`` in
  :mod:`auditgate.audit.writer`), cut off when it is sealed and at recovery.
- ``cursor.<sink>.json`` — how far a sink has stored, ``{"segment": n, "offset": o}``.
- ``owner.lock`` (the owning gateway process) and ``writer.lock`` (its writer process): ``flock``
  locks, so two processes never write one spool.  With ``--workers N`` each worker owns the
  first free ``worker-K`` sub-directory (K < N) and replays what an earlier owner left there.

Everything here blocks (file I/O, waiting for a lock): :class:`~auditgate.audit.spool.Spool`
calls it off the event loop.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from auditgate.audit import writer
from auditgate.audit.frames import HEADER, Frame, Position, parse_frames
from auditgate.errors import AuditgateError

log = logging.getLogger("auditgate.audit.spool")

SUFFIX: Final = writer.SUFFIX
OWNER_LOCK: Final = "owner.lock"
"""Locked (``flock``) by the gateway process that owns the spool directory; holds its pid."""


class SpoolError(AuditgateError):
    """The spool could not make a record durable (disk full, I/O error, closed)."""


@dataclasses.dataclass(slots=True)
class Cut:
    """A segment cut at recovery: where, how many bytes went, and why."""

    segment: int
    offset: int
    removed: int
    reason: str


@dataclasses.dataclass(slots=True)
class Recovery:
    """What :func:`recover` found."""

    cursors: dict[str, Position]
    """Each sink's starting position (its saved cursor, or the oldest segment)."""
    backlog: dict[str, int]
    """Records each sink has not stored yet."""
    cuts: list[Cut]
    """Torn or corrupt tails that were cut."""
    live: int
    """Index of the segment new records go to; everything before it was recovered."""
    sizes: dict[int, int] = dataclasses.field(default_factory=dict)
    """Valid length of every segment kept."""


def segment_path(directory: Path, segment: int) -> Path:
    return Path(writer.segment_path(str(directory), segment))


# -- ownership -------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Claim:
    """The ``owner.lock`` this process holds on one spool directory."""

    directory: Path
    fd: int

    def release(self) -> None:
        """Unlock the directory (once its writer has stopped)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claim(root: Path, slots: int) -> Claim:
    """Lock the directory this process will own (``root``, or with several slots the first free
    ``worker-K``) and wait for a writer process a previous owner left running to finish.
    Raises :class:`SpoolError` when every slot is taken: two processes writing one spool would
    overwrite each other's frames."""
    candidates = [root] if slots == 1 else [root / f"worker-{k}" for k in range(slots)]
    for directory in candidates:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        wait_for_old_writer(directory)
        _warn_orphans(root, slots)
        return Claim(directory, fd)
    raise SpoolError(
        f"the audit spool {root} is in use by other gateway processes "
        f"({slots} slot(s), all locked): give this one its own DYN_AUDIT_SPOOL_DIR"
    )


def wait_for_old_writer(directory: Path, timeout_s: float = 30.0) -> None:
    """Wait until no writer process holds ``directory`` (raises :class:`SpoolError` after
    ``timeout_s``).  A writer outlives its gateway by the moment it takes to store what it
    received and seal its segment; recovery must not read the segments before it is done."""
    fd = os.open(directory / writer.WRITER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SpoolError(f"a spool writer process still holds {directory}") from None
                time.sleep(0.01)
    finally:
        os.close(fd)  # releases the lock: the new writer takes it


def _warn_orphans(root: Path, slots: int) -> None:
    """Records in slots no process of this configuration will claim are not replayed."""
    owned = {f"worker-{k}" for k in range(slots)} if slots > 1 else set()
    for path in sorted(root.glob("worker-*")):
        if path.name not in owned and any(path.glob("*" + SUFFIX)):
            log.warning(
                "audit spool: %s holds records from a run with more workers; they are "
                "replayed only when a worker owns that slot again (start as many workers)",
                path,
            )


# -- cursors ---------------------------------------------------------------------------------


def _cursor_path(directory: Path, sink: str) -> Path:
    return directory / f"cursor.{sink}.json"


def load_cursor(directory: Path, sink: str) -> Position | None:
    """A sink's saved cursor, or None when it has none (or it is unreadable)."""
    try:
        raw = json.loads(_cursor_path(directory, sink).read_text())
        return Position(int(raw["segment"]), int(raw["offset"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.error("audit spool: unreadable cursor of sink %s (%s); replaying from start", sink, exc)
        return None


def save_cursor(directory: Path, sink: str, position: Position) -> None:
    """Persist a sink's cursor by atomic rename (no fsync: a cursor that falls back after a
    power loss replays records, and sinks are idempotent)."""
    path = _cursor_path(directory, sink)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"segment": position.segment, "offset": position.offset}))
    os.replace(tmp, path)


# -- recovery and reading --------------------------------------------------------------------


def recover(directory: Path, sinks: Sequence[str]) -> Recovery:
    """Check every segment some sink still needs, cut each at its first torn or corrupt frame
    (truncate, log, report) or where only zeros follow (truncate), delete the segments every
    sink has passed, and count each sink's backlog.  New records go to a new segment after
    the last one found."""
    found = sorted(
        int(p.name[: -len(SUFFIX)])
        for p in directory.iterdir()
        if p.name.endswith(SUFFIX) and p.name[: -len(SUFFIX)].isdigit()
    )
    first = found[0] if found else 0
    cursors = {name: load_cursor(directory, name) or Position(first, 0) for name in sinks}
    oldest = min(cursors.values(), default=Position(first, 0))
    backlog = dict.fromkeys(sinks, 0)
    cuts: list[Cut] = []
    sizes: dict[int, int] = {}
    for segment in found:
        path = segment_path(directory, segment)
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
        if valid < len(data):  # a cut, or the zeros the writer had put ahead of its records
            with path.open("r+b") as f:
                f.truncate(valid)
                os.fsync(f.fileno())
        for frame in frames:
            for name, cursor in cursors.items():
                if frame.start >= cursor:
                    backlog[name] += 1
        sizes[segment] = valid
    live = (found[-1] + 1) if found else 0
    return Recovery(cursors, backlog, cuts, live, sizes)


def read_segment(
    directory: Path, position: Position, limit: int, max_records: int, chunk_bytes: int
) -> list[Frame]:
    """Frames of one segment from ``position`` up to its committed length ``limit`` (at most
    ``max_records``, about ``chunk_bytes`` read); a bad frame ends them (logged)."""
    try:
        with segment_path(directory, position.segment).open("rb") as f:
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
