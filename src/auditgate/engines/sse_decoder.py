"""An incremental parser for ``text/event-stream`` bodies (the server-sent events wire format).

Bytes arrive in arbitrary pieces (one network read each); :meth:`SSEDecoder.feed` takes one piece
and returns every event it completed, so a caller can hand all events of one read downstream
together.  It follows the WHATWG event-stream grammar: lines end in CRLF, LF or CR (also when the
CR and the LF arrive in different reads); ``:`` starts a comment; an empty line dispatches the
event; several ``data:`` lines join with ``\\n``; one space after the colon is dropped; ``event:``
sets the event type; ``id:`` and ``retry:`` are accepted and ignored (nobody here reconnects);
a leading UTF-8 byte-order mark is dropped.

Event data stays ``bytes``: the consumer decodes it (for JSON with ``msgspec``, which validates
UTF-8 itself), so the parser never decodes or copies a payload it does not have to.  Malformed
input the grammar cannot absorb — an event type that is not UTF-8, a line or an event past
``max_event_bytes`` — raises :class:`SSEError`; nothing else is raised.
"""

from __future__ import annotations

from typing import Final, NamedTuple

_BOM: Final = b"\xef\xbb\xbf"
_DEFAULT_MAX_EVENT_BYTES: Final = 16 << 20


class SSEError(ValueError):
    """The byte stream is not a valid event stream (or exceeds the size bound)."""


class SSEEvent(NamedTuple):
    """One dispatched event (a named tuple: far cheaper to build than a frozen dataclass)."""

    data: bytes
    """The event's data: its ``data:`` lines joined with ``\\n``, undecoded."""
    event: str | None = None
    """The ``event:`` field, or ``None`` when the event had none (the default ``message``)."""


class SSEDecoder:
    """Turns a byte stream, fed in pieces, into :class:`SSEEvent` values.

    One decoder per stream; not thread-safe.  ``feed`` is cheap on the common shape
    (``data: {...}\\n\\n``): one line split per read and one allocation per event.
    """

    __slots__ = ("_buffer", "_data", "_event", "_event_bytes", "_max", "_skip_lf", "_started")

    def __init__(self, *, max_event_bytes: int = _DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buffer = b""  # an incomplete line carried to the next read
        self._data: list[bytes] = []  # data lines of the event being built
        self._event: str | None = None
        self._event_bytes = 0
        self._skip_lf = False  # the last read ended in CR: a leading LF belongs to it
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume one piece of the stream; return the events it completed, in order."""
        if not chunk:
            return []
        if not self._started:
            # The byte-order mark may itself be split across reads.
            head = self._buffer + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._buffer = head
                return []
            self._started = True
            self._buffer = b""
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buffer = self._buffer + chunk if self._buffer else chunk
        # Only whole lines are parsed; the tail after the last line end waits for more bytes.
        end = max(buffer.rfind(b"\n"), buffer.rfind(b"\r"))
        if end < 0:
            if len(buffer) > self._max:
                raise SSEError(f"event stream line longer than {self._max} bytes")
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 1 :]
        if len(self._buffer) > self._max:
            raise SSEError(f"event stream line longer than {self._max} bytes")
        if buffer[end] == 0x0D:  # CR: its LF, if any, may come in the next read
            self._skip_lf = True
        events: list[SSEEvent] = []
        # bytes.splitlines splits on exactly CRLF, LF and CR: the event-stream line ends.
        for line in buffer[: end + 1].splitlines():
            if line.startswith(b"data: "):
                # The common line, inlined: this loop runs once per line of every stream.
                self._event_bytes += len(line) - 5
                if self._event_bytes > self._max:
                    raise SSEError(f"event stream event larger than {self._max} bytes")
                self._data.append(line[6:])
            elif line:
                self._field(line)
            elif self._data:
                data = self._data
                events.append(
                    SSEEvent(data[0] if len(data) == 1 else b"\n".join(data), self._event)
                )
                self._data = []
                self._event = None
                self._event_bytes = 0
            else:
                # An empty line without data discards a pending event type (the spec's rule).
                self._event = None
        return events

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" — a comment, e.g. a keep-alive ping
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._event_bytes += len(value) + 1
            if self._event_bytes > self._max:
                raise SSEError(f"event stream event larger than {self._max} bytes")
            self._data.append(value)
        elif name == b"event":
            try:
                self._event = value.decode()
            except UnicodeDecodeError:
                raise SSEError("event stream event type is not valid UTF-8") from None
        # "id", "retry" and unknown fields are ignored, as the spec says for unknown ones.
