"""The spool's syncer: a small process that makes written spool segments durable.

``python -m auditgate.audit.syncer DIRECTORY FD`` — started by :class:`~auditgate.audit.spool.Spool`
with one end of a socket pair as ``FD``.  The gateway writes frames into segment files itself
(a plain ``write`` to the page cache, on the event loop); this process only runs
``fdatasync``, so no flush and no thread of the gateway waits for the disk.

Why a process and not a thread: a thread must take the gateway's GIL after every blocking call,
and on a busy serving core every such hand-off is a pair of context switches and a wait behind
the event loop (measured with ``bench.durable``).  This process shares no GIL and runs almost no
Python: one request in, one ``fdatasync``, one reply out.

Protocol (both directions fixed-size, little-endian, see :data:`REQUEST` and :data:`REPLY`):

- request ``(first_segment, last_segment, offset)``: make segments ``first..last`` durable
  (each ``fdatasync``'d; a segment seen for the first time also has the directory entry that
  names it ``fsync``'d) — everything written to them before the request was sent;
- reply ``(last_segment, offset, errno)``: done, ``errno`` 0, or the first error's number.

The gateway keeps at most one request in flight.  The process exits when the socket closes
(the gateway stopped or died); it ignores SIGINT and SIGTERM, which a terminal or a service
manager sends to the whole process group, so that a gateway draining its spool at shutdown
still has its syncer.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import sys
from typing import Final

SUFFIX: Final = ".seg"
REQUEST: Final = struct.Struct("<QQQ")
"""``(first_segment, last_segment, offset)``."""
REPLY: Final = struct.Struct("<QQq")
"""``(last_segment, offset, errno)``; errno 0 means durable."""


def segment_path(directory: str, segment: int) -> str:
    """The file of ``segment`` in the spool ``directory`` (the spool names them so too)."""
    return os.path.join(directory, f"{segment:016d}{SUFFIX}")


def receive_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes from ``sock``, or ``None`` at end of stream."""
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            return None
        data += more
    return data


class Syncer:
    """Open segment files by index, and the directory that names them."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.files: dict[int, int] = {}
        self.directory_fd = os.open(directory, os.O_RDONLY)

    def sync(self, first: int, last: int) -> int:
        """``fdatasync`` segments ``first..last``; returns 0 or the first error's errno."""
        try:
            for segment in range(first, last + 1):
                fd = self.files.get(segment)
                if fd is None:
                    fd = os.open(segment_path(self.directory, segment), os.O_RDONLY)
                    self.files[segment] = fd
                    os.fsync(self.directory_fd)  # the new segment's name
                os.fdatasync(fd)
        except OSError as exc:
            return exc.errno or errno.EIO
        for segment in [s for s in self.files if s < last]:  # sealed: never written again
            os.close(self.files.pop(segment))
        return 0


def serve(directory: str, sock: socket.socket) -> None:
    """Answer sync requests until the socket closes."""
    syncer = Syncer(directory)
    while True:
        request = receive_exactly(sock, REQUEST.size)
        if request is None:
            return
        first, last, offset = REQUEST.unpack(request)
        sock.sendall(REPLY.pack(last, offset, syncer.sync(first, last)))


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    directory, fd = argv[1], int(argv[2])
    with socket.socket(fileno=fd) as sock:
        try:
            serve(directory, sock)
        except (ConnectionError, OSError) as exc:
            # The gateway is gone or the spool directory is; nothing is left to answer.
            print(f"auditgate spool syncer: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
