"""The incremental event-stream parser: the grammar, size bounds, and any split of the bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditgate.engines.sse_decoder import SSEDecoder, SSEError, SSEEvent


def feed_all(pieces: list[bytes], decoder: SSEDecoder | None = None) -> list[SSEEvent]:
    decoder = decoder or SSEDecoder()
    return [event for piece in pieces for event in decoder.feed(piece)]


def test_one_event_per_blank_line() -> None:
    """Each blank line dispatches the data lines before it."""
    assert feed_all([b'data: {"a":1}\n\ndata: [DONE]\n\n']) == [
        SSEEvent(b'{"a":1}'),
        SSEEvent(b"[DONE]"),
    ]


def test_crlf_cr_and_lf_line_ends() -> None:
    """CRLF, CR and LF all end lines, mixed in one stream."""
    assert feed_all([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]) == [
        SSEEvent(b"a"),
        SSEEvent(b"b"),
        SSEEvent(b"c"),
    ]


def test_crlf_split_between_reads() -> None:
    """A CR at the end of one read and the LF at the start of the next are one line end."""
    assert feed_all([b"data: a\r", b"\n\r", b"\ndata: b\r\n", b"\r\n"]) == [
        SSEEvent(b"a"),
        SSEEvent(b"b"),
    ]


def test_comments_are_ignored() -> None:
    """Lines starting with a colon (keep-alive pings) produce nothing."""
    assert feed_all([b": ping\n\n:\ndata: x\n: inside\n\n"]) == [SSEEvent(b"x")]


def test_multiple_data_lines_join_with_newline() -> None:
    """Several data lines of one event are joined with LF."""
    assert feed_all([b"data: one\ndata:two\ndata\n\n"]) == [SSEEvent(b"one\ntwo\n")]


def test_only_one_leading_space_is_dropped() -> None:
    """The space after the colon is removed once; further spaces are data."""
    assert feed_all([b"data:  two spaces\n\n"]) == [SSEEvent(b" two spaces")]


def test_event_field_sets_the_type() -> None:
    """``event:`` names the event it belongs to and is reset after dispatch."""
    assert feed_all([b"event: error\ndata: x\n\ndata: y\n\n"]) == [
        SSEEvent(b"x", "error"),
        SSEEvent(b"y"),
    ]


def test_blank_line_without_data_discards_the_type() -> None:
    """An event type followed by a blank line but no data is dropped, not carried over."""
    assert feed_all([b"event: ping\n\ndata: y\n\n"]) == [SSEEvent(b"y")]


def test_id_retry_and_unknown_fields_are_ignored() -> None:
    """Fields other than data and event do not change the event."""
    assert feed_all([b"id: 7\nretry: 10\nfoo: bar\ndata: x\n\n"]) == [SSEEvent(b"x")]


def test_unterminated_event_is_not_dispatched() -> None:
    """Data without its closing blank line stays pending."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"data: y") == []
    assert [SSEEvent(b"x\ny")] == decoder.feed(b"\n\n")


def test_leading_bom_is_dropped_even_when_split() -> None:
    """A UTF-8 byte-order mark at the very start is removed, also across reads."""
    assert feed_all([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [SSEEvent(b"x")]


def test_data_bytes_are_not_decoded() -> None:
    """Invalid UTF-8 in data passes through as bytes, for the JSON decoder to reject."""
    assert feed_all([b"data: \xff\xfe\n\n"]) == [SSEEvent(b"\xff\xfe")]


def test_event_type_must_be_utf8() -> None:
    """An event type that is not UTF-8 is a protocol error."""
    with pytest.raises(SSEError, match="not valid UTF-8"):
        SSEDecoder().feed(b"event: \xff\n")


def test_line_longer_than_the_bound_is_an_error() -> None:
    """A line that never ends cannot grow the buffer without bound."""
    decoder = SSEDecoder(max_event_bytes=16)
    assert decoder.feed(b"data: 0123456789") == []
    with pytest.raises(SSEError, match="line longer than 16 bytes"):
        decoder.feed(b"0123456789")


def test_event_larger_than_the_bound_is_an_error() -> None:
    """Many short data lines cannot build an event past the bound."""
    decoder = SSEDecoder(max_event_bytes=16)
    with pytest.raises(SSEError, match="event larger than 16 bytes"):
        decoder.feed(b"data: 01234\n" * 4)


# An event line may hold any byte but CR and LF.
_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_event_name = st.one_of(
    st.none(), st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=8)
)
_events = st.lists(
    st.tuples(st.lists(_line, min_size=1, max_size=3), _event_name, st.booleans()), max_size=8
)


def _serialize(events: list[tuple[list[bytes], str | None, bool]], ending: bytes) -> bytes:
    """Write events as a server would, with one line ending throughout.

    (Mixing endings in generated streams would be ambiguous: CR then an empty LF-ended line *is*
    CRLF.  Mixed endings have their own example test.)
    """
    out: list[bytes] = []

    def line(text: bytes) -> None:
        out.append(text + ending)

    for data_lines, name, with_comment in events:
        if with_comment:
            line(b": keep-alive")
        if name is not None:
            line(b"event: " + name.encode())
        for data in data_lines:
            line(b"data: " + data)
        line(b"")
    return b"".join(out)


@settings(max_examples=200, deadline=None)
@given(
    events=_events,
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_split_yields_the_same_events(
    events: list[tuple[list[bytes], str | None, bool]], ending: bytes, cuts: list[int]
) -> None:
    """However the stream is cut into reads, the parser returns exactly the events written."""
    stream = _serialize(events, ending)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    expected = [SSEEvent(b"\n".join(lines), name) for lines, name, _ in events]
    assert expected == feed_all(pieces)
