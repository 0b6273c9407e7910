"""The spool's writer: a small process that appends records to spool segments and syncs them.

``python -m auditgate.audit.writer DIRECTORY FD [--no-sync]`` — started by
:class:`~auditgate.audit.spool.Spool` with one end of a socket pair as ``FD``.  The event loop
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
  created when first written, their directory entry ``fsync``'d);
- writer → gateway, once every batch that had arrived is written and synced (group commit:
  batches that arrive during a sync share the next one): :data:`DONE` ``(segment, end, errno)``,
  ``end`` the end of the last batch, ``errno`` 0; or ``(0, 0, errno)``: a write or sync failed,
  the writer exits, and the gateway fails what was not synced and starts a new writer.

The writer exits when the socket closes (the gateway stopped or died), after writing and syncing
what it had received.  It ignores SIGINT and SIGTERM, which a terminal or a service manager sends
to the whole process group: a gateway draining its spool at shutdown still has its writer.
"""

from __future__ import annotations

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
WRITER_LOCK: Final = "writer.lock"
"""Held (``flock``) while a writer may write: a new gateway waits for it before recovery."""


def segment_path(directory: str, segment: int) -> str:
    """The file of ``segment`` in the spool ``directory`` (the spool names them so too)."""
    return os.path.join(directory, f"{segment:016d}{SUFFIX}")


class Writer:
    """Writes batches into segment files and syncs them."""

    def __init__(self, directory: str, *, sync: bool = True) -> None:
        self.directory = directory
        self.sync = sync
        self.files: dict[int, int] = {}
        self.directory_fd = os.open(directory, os.O_RDONLY)
        lock = os.open(os.path.join(directory, WRITER_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this process exits
        self.lock_fd = lock

    def write(self, segment: int, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` of ``segment`` (not yet durable); raises OSError."""
        fd = self.files.get(segment)
        if fd is None:
            for older in [s for s in self.files if s < segment]:  # sealed: never written again
                os.close(self.files.pop(older))
            fd = os.open(segment_path(self.directory, segment), os.O_WRONLY | os.O_CREAT, 0o644)
            self.files[segment] = fd
            if self.sync:
                os.fsync(self.directory_fd)  # the new segment's name
        while data:
            written = os.pwrite(fd, data, offset)
            data = data[written:]
            offset += written

    def commit(self) -> None:
        """Make everything written durable; raises OSError."""
        if self.sync:
            for fd in self.files.values():
                os.fdatasync(fd)


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
            return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    directory, fd = argv[1], int(argv[2])
    with socket.socket(fileno=fd) as sock:
        try:
            return serve(Writer(directory, sync="--no-sync" not in argv), sock)
        except OSError as exc:  # the gateway is gone, or the directory is
            print(f"auditgate spool writer: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
