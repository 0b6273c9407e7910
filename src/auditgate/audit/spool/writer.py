"""The spool's writer: a small process that appends records to spool segments and syncs them.

``python -m auditgate.audit.spool.writer DIRECTORY FD [--no-sync] [--segment-bytes N]`` — started by
:class:`~auditgate.audit.spool.spool.Spool` with one end of a socket pair as ``FD``.  The event loop
only sends bytes to this process; it never touches the disk itself.

Why a process: on the serving core, disk I/O from the event loop stalls it (an append to a file
waits behind the filesystem journal whenever anything on the machine syncs; measured 9 % of the
loop's time in ``write`` with the SQLite sink in ``bench.durable``), and a writer *thread* has to
take the gateway's GIL back after every blocking call, which on a busy core costs a pair of
context switches and a wait behind the event loop each time.  This process shares no GIL and
runs little Python: read what arrived, write it, one ``fdatasync``, one reply.

Protocol on the socket, little-endian:

- gateway → writer, a batch: :data:`BATCH` ``(segment, offset, length)`` then ``length`` bytes of
  frames to write at ``offset`` of ``segment`` (files ``NNNNNNNNNNNNNNNN.seg`` in ``DIRECTORY``,
  created when first written, their directory entry ``fsync``'d; while idle the writer puts
  synced zeros ahead of the live segment's records, up to ``--segment-bytes``, and cuts them
  off when it moves to the next segment or stops: see :meth:`Writer.prepare`);
- writer → gateway, once every batch that had arrived is written and synced (group commit:
  batches that arrive during a sync share the next one): :data:`DONE` ``(segment, end, errno)``,
  ``end`` the end of the last batch, ``errno`` 0; or ``(0, 0, errno)``: a write or sync failed,
  the writer exits, and the gateway fails what was not synced and starts a new writer.

The writer exits when the socket closes (the gateway stopped or died), after writing and syncing
what it had received.  It ignores SIGINT and SIGTERM, which a terminal or a service manager sends
to the whole process group: a gateway draining its spool at shutdown still has its writer.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import signal
import socket
import struct
import sys
from typing import Final

SUFFIX: Final = ".seg"
BATCH: Final = struct.Struct("<QQQ")
"""``(segment, offset, length)`` before each batch of frames."""
DONE: Final = struct.Struct("<QQq")
"""``(segment, end, errno)``: everything up to ``end`` of ``segment`` is durable (errno 0)."""
BUFFER_BYTES: Final = 4 << 20
"""The receive buffer (it grows for a larger batch)."""
ZERO_STEP: Final = 1 << 20
"""Zeros :meth:`Writer.prepare` puts ahead of the live segment's records at a time."""
_ZEROS: Final = bytes(ZERO_STEP)
WRITER_LOCK: Final = "writer.lock"
"""Held (``flock``) while a writer may write: a new gateway waits for it before recovery."""


def segment_path(directory: str, segment: int) -> str:
    """The file of ``segment`` in the spool ``directory`` (the spool names them so too)."""
    return os.path.join(directory, f"{segment:016d}{SUFFIX}")


class Writer:
    """Writes batches into segment files and syncs them."""

    def __init__(self, directory: str, *, sync: bool = True, segment_bytes: int = 0) -> None:
        self.directory = directory
        self.sync = sync
        self.segment_bytes = segment_bytes
        """Where the gateway seals a segment: :meth:`prepare` puts no zeros past it (0: none)."""
        self.files: dict[int, int] = {}
        self.live = -1
        """The segment written last (the gateway only ever writes the newest one)."""
        self.end = 0
        """The end of what was written to :attr:`live`."""
        self.zeroed = 0
        """:attr:`live` holds records or zeros already synced to disk up to here."""
        self._zeros_failed = False
        self.directory_fd = os.open(directory, os.O_RDONLY)
        lock = os.open(os.path.join(directory, WRITER_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this process exits
        self.lock_fd = lock

    def write(self, segment: int, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` of ``segment`` (not yet durable); raises OSError."""
        fd = self.files.get(segment)
        if fd is None:
            self.seal()
            fd = os.open(segment_path(self.directory, segment), os.O_WRONLY | os.O_CREAT, 0o644)
            self.files[segment] = fd
            self.live, self.end, self.zeroed, self._zeros_failed = segment, 0, 0, False
            if self.sync:
                os.fsync(self.directory_fd)  # the new segment's name
        while data:
            written = os.pwrite(fd, data, offset)
            data = data[written:]
            offset += written
        if segment == self.live:
            self.end = max(self.end, offset)

    def commit(self) -> None:
        """Make everything written durable; raises OSError."""
        if self.sync:
            for fd in self.files.values():
                os.fdatasync(fd)

    def prepare(self) -> None:
        """Put synced zeros ahead of the live segment's records; call when idle.

        A commit that writes over them changes no file metadata (size, block map), so its
        ``fdatasync`` writes the data alone, with no journal commit: on ext4 here, half the
        time of a sync after an append and a context switch fewer (PostgreSQL zero-fills its
        WAL segments for the same reason).  At most :data:`ZERO_STEP` at a time, when less
        than half of it is left, never past :attr:`segment_bytes`; :meth:`seal` cuts them off
        and recovery reads zeros to the end of a segment as its end.  A failure only costs
        the speed (reported once per segment): records never depend on these zeros.
        """
        if not self.sync or self.live < 0 or self._zeros_failed:
            return
        if self.zeroed - self.end >= ZERO_STEP // 2:
            return
        start = max(self.zeroed, self.end)
        stop = min(start + ZERO_STEP, self.segment_bytes)
        if stop <= start:
            return
        fd = self.files[self.live]
        try:
            with memoryview(_ZEROS) as zeros:
                offset = start
                while offset < stop:
                    offset += os.pwrite(fd, zeros[: stop - offset], offset)
            os.fdatasync(fd)
        except OSError as exc:
            self._zeros_failed = True
            print(
                f"auditgate spool writer: cannot put zeros ahead of records: {exc}", file=sys.stderr
            )
            return
        self.zeroed = stop

    def seal(self) -> None:
        """Close the live segment (it is never written again), cut off its zeros first."""
        fd = self.files.pop(self.live, None)
        if fd is None:
            return
        try:
            if os.fstat(fd).st_size > self.end:  # zeros (synced or not: a prepare may fail)
                os.ftruncate(fd, self.end)
        except OSError as exc:  # the zeros stay: recovery cuts them
            print(f"auditgate spool writer: cannot cut zeros off a segment: {exc}", file=sys.stderr)
        finally:
            os.close(fd)
        self.live, self.end, self.zeroed = -1, 0, 0


class Inbox:
    """Batches as they arrive, in one reused buffer (no allocation per read: a fresh 1 MiB
    ``bytes`` per ``recv`` cost more than the write it fed)."""

    def __init__(self, size: int = BUFFER_BYTES) -> None:
        self.buffer = bytearray(size)
        self.filled = 0

    def receive(self, sock: socket.socket, *, wait: bool) -> int | None:
        """Read what fits: the bytes read (0: nothing yet, or no room), None at end of stream.
        ``wait``: block until something arrives."""
        if self.filled == len(self.buffer):
            return 0  # full: the batches in it are taken first (see :meth:`make_room`)
        with memoryview(self.buffer) as view:
            try:
                got = sock.recv_into(view[self.filled :], 0, 0 if wait else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return 0
        self.filled += got
        return got or None

    def batches(self) -> tuple[list[tuple[int, int, int, int]], int]:
        """Complete batches as ``(segment, offset, start, end)`` (their frames are
        ``buffer[start:end]``), and the bytes they use."""
        found: list[tuple[int, int, int, int]] = []
        used = 0
        while self.filled - used >= BATCH.size:
            segment, offset, length = BATCH.unpack_from(self.buffer, used)
            start = used + BATCH.size
            if self.filled - start < length:
                break  # the rest of this batch is still on its way
            found.append((segment, offset, start, start + length))
            used = start + length
        return found, used

    def make_room(self, used: int) -> None:
        """Drop the first ``used`` bytes; grow the buffer for a batch larger than it."""
        rest = self.filled - used
        if used:
            self.buffer[:rest] = self.buffer[used : self.filled]
        self.filled = rest
        if rest >= BATCH.size:
            need = BATCH.size + BATCH.unpack_from(self.buffer, 0)[2]
            if need > len(self.buffer):
                self.buffer.extend(bytes(need - len(self.buffer)))


def serve(writer: Writer, sock: socket.socket) -> int:
    """Answer batches until the socket closes (0) or a write fails (1, after reporting it)."""
    inbox = Inbox()
    while True:
        got = inbox.receive(sock, wait=False)
        if got == 0:  # nothing arrived since the last commit: get ahead, then wait
            writer.prepare()
            got = inbox.receive(sock, wait=True)
        while got:  # take all that arrived: one sync for it
            got = inbox.receive(sock, wait=False)
        open_ = got is not None
        batches, used = inbox.batches()
        if batches:
            try:
                with memoryview(inbox.buffer) as view:
                    for segment, offset, start, end in batches:
                        writer.write(segment, offset, view[start:end])
                writer.commit()
            except OSError as exc:  # nothing unsynced is durable now: the gateway fails it all
                sock.sendall(DONE.pack(0, 0, exc.errno or errno.EIO))
                print(f"auditgate spool writer: {exc}", file=sys.stderr)
                return 1
            segment, offset, start, end = batches[-1]
            sock.sendall(DONE.pack(segment, offset + end - start, 0))
        inbox.make_room(used)
        if not open_:
            writer.seal()
            return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="python -m auditgate.audit.spool.writer")
    parser.add_argument("directory")
    parser.add_argument("fd", type=int)
    parser.add_argument("--no-sync", action="store_true")
    parser.add_argument("--segment-bytes", type=int, default=0)
    args = parser.parse_args(argv[1:])
    with socket.socket(fileno=args.fd) as sock:
        try:
            files = Writer(args.directory, sync=not args.no_sync, segment_bytes=args.segment_bytes)
            return serve(files, sock)
        except OSError as exc:  # the gateway is gone, or the directory is
            print(f"auditgate spool writer: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
