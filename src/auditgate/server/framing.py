"""Where HTTP/1.1 requests begin and end in a connection's bytes, as httptools' parser (llhttp)
delimits them: what :class:`~auditgate.server.protocol.BoundedHttpToolsProtocol` needs to
measure each request head before the parser sees it.

llhttp takes line ends only as CRLF (a bare LF is an error), so:

- a head ends just past the first blank line, CRLF CRLF, after its first byte (it cannot hold
  one earlier: a header line cannot be empty, and folded lines are refused);
- a chunked body ends just past a blank line too: its last chunk's (``0`` CRLF CRLF), or that
  of the trailer fields after it;
- a ``Content-Length`` body ends after that many bytes, a request without either has none,
  and so does one that asks for an ``Upgrade`` (llhttp hands the connection over after its
  head, whatever it declared);
- the empty lines a client sends before a request line are skipped (RFC 9112 §2.2).

A blank line may begin in one read and end in the next: the functions here take the last
bytes of the read before (``tail``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

BLANK_LINE: Final = b"\r\n\r\n"
EMPTY_LINE_BYTES: Final = b"\r\n"
"""The bytes of the empty lines skipped before a request line."""


def blank_line_end(tail: bytes, data: bytes, start: int, stop: int) -> int:
    """Where in ``data`` the first blank line after ``start`` ends, if that is at most
    ``stop``; else -1.  ``tail``: the last bytes before ``data`` (``start`` is then 0), in
    which the blank line may have begun."""
    if tail:
        found = (tail + data[:3]).find(BLANK_LINE)
        if found >= 0:
            end = found + 4 - len(tail)
            return end if end <= stop else -1
    found = data.find(BLANK_LINE, start, stop)
    return found + 4 if found >= 0 else -1


def last3(tail: bytes, data: bytes, start: int) -> bytes:
    """The last 3 bytes of ``tail`` followed by ``data[start:]``: the ``tail`` of the next
    read (a blank line that ends in it began in them, if not in it)."""
    return (tail + data[max(start, len(data) - 3) :])[-3:]


def piece(data: bytes, start: int, end: int) -> bytes | memoryview:
    """``data[start:end]``, not copied."""
    return data if start == 0 and end == len(data) else memoryview(data)[start:end]


def content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of a request whose body follows its head (uvicorn's header names are
    lower-case; llhttp has let through at most one, of digits only), or None: the body is
    chunked.  Looked for from the end: clients add it last (httpx, and so the openai SDK)."""
    for name, value in reversed(headers):
        if name == b"content-length":
            return int(value)
    return None
