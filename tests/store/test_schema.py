"""The row encoding of records, without a database."""

from __future__ import annotations

import json

import msgspec

import auditgate.store as store
from auditgate.audit.record import AuditRecord, encode_record
from auditgate.store.schema import (
    COLUMN_NAMES,
    KINDS,
    record_dict_from_row,
    record_from_row,
    response_id_of,
    row_from_json,
    row_from_record,
    with_own_response_id,
)
from tests.store.records import make_record, minimal_record, nul_record, surrogate_record


def as_mapping(row: tuple[object, ...]) -> dict[str, object]:
    return dict(zip(COLUMN_NAMES, row, strict=True))


def test_public_names() -> None:
    """The package exports exactly the names in its ``__all__``, all of them defined."""
    assert sorted(store.__all__) == sorted(n for n in store.__all__ if hasattr(store, n))
    assert "record_from_row" in store.__all__


def test_every_record_field_has_a_column() -> None:
    """Each field of today's record is a column, so ``extra`` is only for newer fields."""
    missing = [f for f in AuditRecord.__struct_fields__ if f not in KINDS]
    assert missing == []


def test_response_id_is_the_response_id_or_derived() -> None:
    """The response id is the response's ``id``, else ``chatcmpl-<request_id>``."""
    full = make_record(1, response={"id": "chatcmpl-engine"})
    bare = minimal_record(2)
    assert ("chatcmpl-engine", f"chatcmpl-{bare.request_id}") == (
        response_id_of(full),
        response_id_of(bare),
    )


def test_row_round_trips_without_database() -> None:
    """A row decodes back to the record it was built from, for full and minimal records."""
    records = [make_record(1), minimal_record(2)]
    assert records == [record_from_row(as_mapping(row_from_record(r))) for r in records]


def test_plain_record_needs_no_originals() -> None:
    """A record without NULs or surrogates is stored as is: ``originals`` stays NULL."""
    row = as_mapping(row_from_record(make_record(1)))
    assert (
        row["originals"],
        row["extra"],
        row["prompt_tokens"],
        row["completion_tokens"],
        row["total_tokens"],
    ) == (None, None, 13, 30, 43)


def test_nul_values_are_scrubbed_in_columns_and_kept_in_originals() -> None:
    """NUL characters never reach a column; the exact values are in ``originals``."""
    record = nul_record(3)
    row = as_mapping(row_from_record(record))
    with_nul = [k for k, v in row.items() if isinstance(v, str) and "\x00" in v]
    request = json.loads(str(row["request"]))
    originals = json.loads(str(row["originals"]))
    assert (
        with_nul,
        sorted(originals),
    ) == ([], ["client_request_id", "metadata", "model", "request", "tenant"])
    # A NUL becomes U+FFFD; the literal text backslash-u0000 is not a NUL and is kept.
    assert (
        row["model"],
        json.loads(str(row["metadata"])),
        request["messages"],
        request["weird\ufffdkey"],
    ) == (
        "mo\ufffddel",
        {"k\ufffd": "v\ufffd", "plain": "ok"},
        [{"role": "user", "content": "nul \ufffd here \\u0000 literal"}],
        "v\ufffd",
    )
    assert record == record_from_row(row)


def test_surrogates_are_storable() -> None:
    """Lone surrogates, which no UTF-8 codec accepts, are stored scrubbed and kept exactly."""
    record = surrogate_record(4)
    row = as_mapping(row_from_record(record))
    encodable = [k for k, v in row.items() if isinstance(v, str) and not _utf8(v)]
    assert ([], record) == (encodable, record_from_row(row))


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def test_unknown_fields_of_a_newer_record_land_in_extra() -> None:
    """``row_from_json`` keeps fields this version does not know, and gives them back."""
    record = make_record(5)
    newer = msgspec.json.decode(encode_record(record))
    newer["future_field"] = {"x": [1, "\x00"]}
    newer["another"] = 7
    row = as_mapping(row_from_json(msgspec.json.encode(newer)))
    assert (newer, record) == (record_dict_from_row(row), record_from_row(row))
    assert list(newer) == list(record_dict_from_row(row))


def test_own_response_id_replaces_only_that_column() -> None:
    """A clashing row keeps everything but its response id, which derives from its request id."""
    record = make_record(6, response={"id": "chatcmpl-shared"})
    row = row_from_record(record)
    fixed = as_mapping(with_own_response_id(row))
    expected = as_mapping(row) | {"response_id": f"chatcmpl-{record.request_id}"}
    assert expected == fixed
