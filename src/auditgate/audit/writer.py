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
READ_BYTES: Final = 1 << 20
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


def serve(writer: Writer, sock: socket.socket) -> int:
    """Answer batches until the socket closes (0) or a write fails (1, after reporting it)."""
    pending = bytearray()
    while True:
        data = sock.recv(READ_BYTES)
        if not data:
            return 0
        pending += data
        while True:  # take everything that has arrived: one sync for all of it
            try:
                more = sock.recv(READ_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not more:
                break
            pending += more
        view = memoryview(pending)
        used, last = 0, None
        try:
            while len(view) - used >= BATCH.size:
                segment, offset, length = BATCH.unpack_from(view, used)
                start = used + BATCH.size
                if len(view) - start < length:
                    break  # the rest of this batch is still on its way
                writer.write(segment, offset, view[start : start + length])
                used = start + length
                last = (segment, offset + length)
            if last is not None:
                writer.commit()
        except OSError as exc:  # nothing unsynced is durable now: the gateway fails it all
            view.release()
            sock.sendall(DONE.pack(0, 0, exc.errno or errno.EIO))
            print(f"auditgate spool writer: {exc}", file=sys.stderr)
            return 1
        view.release()
        del pending[:used]
        if last is not None:
            sock.sendall(DONE.pack(last[0], last[1], 0))


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
