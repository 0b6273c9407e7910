"""The spool's files (DESIGN §6): who owns a directory, its cursors, and the recovery scan.

Layout of a spool directory:

- ``NNNNNNNNNNNNNNNN.seg`` — append-only segments of frames, one per record
  (:mod:`auditgate.audit.spool.frames`: length, CRC-32, append time, the record's JSON); the live
  one may end in zeros the writer put ahead of its records (``Writer.prepare`` in
  :mod:`auditgate.audit.spool.writer`), cut off when it is sealed and at recovery.
- ``cursor.<sink>`` — how far a sink has stored (:mod:`auditgate.audit.spool.cursors`: allocated
  once, then overwritten in place, so saving one never needs new space).
- ``owner.lock`` (the owning gateway process) and ``writer.lock`` (its writer process): ``flock``
  locks, so two processes never write one spool.  With ``--workers N`` each worker owns the
  first free ``worker-K`` sub-directory (K < N) and replays what an earlier owner left there.

Everything here blocks (file I/O, waiting for a lock): :class:`~auditgate.audit.spool.spool.Spool`
calls it off the event loop.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from auditgate.audit.commit import CommitError
from auditgate.audit.spool import writer
from auditgate.audit.spool.frames import HEADER, Frame, Position, parse_frames

log = logging.getLogger("auditgate.audit.spool")

SUFFIX: Final = writer.SUFFIX
OWNER_LOCK: Final = "owner.lock"
"""Locked (``flock``) by the gateway process that owns the spool directory; holds its pid."""


class SpoolError(CommitError):
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
    last: bytes | None = None
    """The newest record in the spool (its JSON), or None when it holds none: where the chain
    of the process that wrote it ended, if that process did not seal it."""


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
        _note_pid(fd, directory)
        wait_for_old_writer(directory)
        _warn_orphans(root, slots)
        return Claim(directory, fd)
    raise SpoolError(
        f"the audit spool {root} is in use by other gateway processes "
        f"({slots} slot(s), all locked): give this one its own DYN_AUDIT_SPOOL_DIR"
    )


def _note_pid(fd: int, directory: Path) -> None:
    """Write this process's pid into its ``owner.lock`` for people looking at the directory:
    over the old one in place (no new space: the disk may be full), and only as a courtesy."""
    pid = f"{os.getpid()}\n".encode()
    try:
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
    except OSError as exc:
        log.warning("audit spool: cannot note this process's pid in %s: %s", directory, exc)


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


def fit_volume(directory: Path, segment_bytes: int, slots: int) -> int:
    """``segment_bytes``, at most an eighth of the volume holding ``directory`` (a share of
    that per worker slot): the segment holding the newest record is kept until a newer record
    commits, so it must never be able to fill the disk the spool needs to free."""
    try:
        volume = os.statvfs(directory)
    except OSError as exc:
        log.warning("audit spool: cannot tell the size of its volume: %s", exc)
        return segment_bytes
    size = volume.f_blocks * volume.f_frsize
    bound = max(4096, size // (8 * slots))
    if bound >= segment_bytes:
        return segment_bytes
    log.info("audit spool: segments of %d bytes (an eighth of the volume's %d)", bound, size)
    return bound


# -- recovery and reading --------------------------------------------------------------------


def recover(directory: Path, saved: Mapping[str, Position | None]) -> Recovery:
    """Check every segment some sink still needs, cut each at its first torn or corrupt frame
    (truncate, log, report) or where only zeros follow (truncate), delete the segments every
    sink has passed and those without records, and count each sink's backlog.

    ``saved``: each sink's saved cursor (None: it starts at the oldest segment).  The segment
    holding the newest record is kept even when every sink has passed it: that record says
    where the chain of the process that wrote it ended (:attr:`Recovery.last`), and it goes
    once a newer record is committed.  New records go to a new segment, numbered after every
    segment and cursor found, so no cursor can ever be ahead of them.
    """
    found = sorted(
        int(p.name[: -len(SUFFIX)])
        for p in directory.iterdir()
        if p.name.endswith(SUFFIX) and p.name[: -len(SUFFIX)].isdigit()
    )
    first = found[0] if found else 0
    cursors = {name: position or Position(first, 0) for name, position in saved.items()}
    oldest = min(cursors.values(), default=Position(first, 0))
    newest, parsed = _newest_record(directory, found)
    last = parsed[newest][0][-1].payload if newest is not None else None
    backlog = dict.fromkeys(cursors, 0)
    cuts: list[Cut] = []
    sizes: dict[int, int] = {}
    for segment in found:
        path = segment_path(directory, segment)
        size = path.stat().st_size
        if segment != newest and (size == 0 or Position(segment, size) <= oldest):
            path.unlink()  # no records, or every sink stored all of them
            continue
        known = parsed.pop(segment, None)
        frames, valid = _cut(path, segment, known if known is not None else _parse(path), cuts)
        if not valid:
            path.unlink()
            continue
        for frame in frames:
            for name, cursor in cursors.items():
                if frame.start >= cursor:
                    backlog[name] += 1
        sizes[segment] = valid
    ahead = [position.segment + 1 for position in saved.values() if position is not None]
    live = max([found[-1] + 1 if found else 0, *ahead])
    return Recovery(cursors, backlog, cuts, live, sizes, last)


_Parsed = tuple[list[Frame], int, str | None, int]
"""A segment's frames, their valid length, the problem after them, and the file's length."""


def _parse(path: Path) -> _Parsed:
    data = path.read_bytes()
    frames, valid, problem = parse_frames(data, int(path.name[: -len(SUFFIX)]), 0, len(data))
    return frames, valid, problem, len(data)


def _newest_record(directory: Path, found: list[int]) -> tuple[int | None, dict[int, _Parsed]]:
    """The newest segment holding a valid record, and what was parsed to find it."""
    parsed: dict[int, _Parsed] = {}
    for segment in reversed(found):
        parsed[segment] = result = _parse(segment_path(directory, segment))
        if result[0]:
            return segment, parsed
    return None, parsed


def _cut(path: Path, segment: int, parsed: _Parsed, cuts: list[Cut]) -> tuple[list[Frame], int]:
    """Truncate a segment after its valid frames (a torn or corrupt tail: logged and added to
    ``cuts``; or the writer's zeros ahead of its records); its frames and valid length."""
    frames, valid, problem, size = parsed
    if problem is not None:
        cut = Cut(segment, valid, size - valid, problem)
        cuts.append(cut)
        log.error(
            "audit spool: %s at %s offset %d: cut %d byte(s); the %d record(s) before it are kept",
            problem,
            path,
            valid,
            cut.removed,
            len(frames),
        )
    if valid < size:
        with path.open("r+b") as f:
            f.truncate(valid)
            os.fsync(f.fileno())
    return frames, valid


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
