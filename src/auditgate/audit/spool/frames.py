"""The spool's frame format: how one record is stored, and how a run of them is read back.

A frame is ``length:u32 crc:u32 appended_ms:u64`` (little-endian) then ``length`` bytes of the
record's JSON; ``crc`` is CRC-32 over ``appended_ms`` and the JSON, so a torn, zero-filled or
flipped frame never passes as a record.  A segment may end in zeros (the writer extends it with
zeros ahead of its records): a run of zeros to the end of the data is the clean end of the
frames, zeros followed by anything else are damage.  Positions name a byte in the spool: a
segment index and an offset in that segment.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, NamedTuple

HEADER: Final = struct.Struct("<IIQ")
"""Frame header: payload length, CRC-32 of (appended_ms bytes + payload), append time (unix ms)."""
_STAMP: Final = struct.Struct("<Q")
MAX_FRAME: Final = 1 << 30
"""A length above this is corruption, not a record."""


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


def frame_header(payload: bytes, appended_ms: int) -> bytes:
    """The header that goes before ``payload`` in its frame."""
    crc = zlib.crc32(payload, zlib.crc32(_STAMP.pack(appended_ms)))
    return HEADER.pack(len(payload), crc, appended_ms)


def encode_frame(payload: bytes, appended_ms: int) -> bytes:
    """One framed record."""
    return frame_header(payload, appended_ms) + payload


def parse_frames(
    data: bytes, segment: int, base: int, max_records: int
) -> tuple[list[Frame], int, str | None]:
    """Frames at the start of ``data`` (which starts at offset ``base`` of ``segment``).

    Returns ``(frames, consumed, problem)``: ``consumed`` bytes hold whole valid frames; a
    ``problem`` describes the first bad frame (``None`` when the data ends cleanly or
    ``max_records`` was reached, or only zeros follow).  An incomplete frame at the very end is
    reported as torn.
    """
    frames: list[Frame] = []
    pos, size = 0, len(data)
    view = memoryview(data)
    while pos < size and len(frames) < max_records:
        if size - pos < HEADER.size:
            return frames, pos, f"torn header ({size - pos} of {HEADER.size} bytes)"
        length, crc, stamp = HEADER.unpack_from(data, pos)
        if length == 0 and data.count(0, pos) == size - pos:
            return frames, pos, None  # zeros to the end: the unwritten rest of the segment
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
