"""The hash chain, checkpoints and the verifier, on records built in memory."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from auditgate.audit import checkpoints
from auditgate.audit.integrity import (
    GENESIS,
    Checkpoint,
    HmacSigner,
    canonical,
    checkpoint_message,
    link,
)
from auditgate.audit.processors import IntegrityChain, Processors
from auditgate.audit.record import AuditRecord, encode_record
from auditgate.audit.verify import Verifier
from auditgate.store.schema import COLUMN_NAMES, record_dict_from_row, row_from_record
from tests.store.records import make_record

KEY = "test-checkpoint-key"


def chain_of(
    count: int,
    *,
    writer: str = "w1",
    key: str | None = KEY,
    every: int = 1000,
    final: bool = True,
) -> list[AuditRecord]:
    """``count`` records of one writer through an IntegrityChain, checkpoints included."""
    chain = IntegrityChain(HmacSigner(key) if key else None, engine="mock", every=every)
    out: list[AuditRecord] = []

    def publish(record: AuditRecord) -> None:
        record.writer, record.seq = writer, len(out)
        chain.seal(record)
        out.append(record)

    for i in range(count):
        publish(make_record(i, writer=writer))
        if chain.due:
            checkpoint = chain.checkpoint("count")
            assert checkpoint is not None
            publish(checkpoint)
    if final:
        last = chain.checkpoint("shutdown", final=True)
        assert last is not None
        publish(last)
    return out


def as_dicts(records: list[AuditRecord]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(encode_record(r)) for r in records]


def verify(
    entries: list[dict[str, Any]], *, key: str | None = KEY, ordered: bool = True
) -> list[tuple[str, str | None, int | None]]:
    """Findings as ``(kind, writer, seq)``."""
    verifier = Verifier(signer=HmacSigner(key) if key else None, ordered=ordered)
    for index, entry in enumerate(entries, start=1):
        verifier.add(f"line {index}", entry)
    report = verifier.report()
    return [(f.kind, f.writer, f.seq) for w in report.writers for f in w.findings] + [
        (f.kind, None, None) for f in report.invalid
    ]


def test_chain_formula() -> None:
    """Each hash is SHA-256 over the previous hash's bytes and the canonical record."""
    records = chain_of(3, final=False)
    first, second = records[0], records[1]
    assert first.integrity is not msgspec.UNSET and second.integrity is not msgspec.UNSET
    expected = hashlib.sha256(bytes(32) + canonical(first)).hexdigest()
    assert (GENESIS, expected) == (first.integrity.prev, first.integrity.hash)
    assert (expected, link(expected, canonical(second))) == (
        second.integrity.prev,
        second.integrity.hash,
    )


def test_intact_trail_verifies_clean() -> None:
    """An untouched chain with count checkpoints and a final one has no findings."""
    records = chain_of(7, every=3)
    modes = [r.mode for r in records]
    assert modes == ["full"] * 3 + ["checkpoint"] + ["full"] * 3 + ["checkpoint"] + [
        "full",
        "checkpoint",
    ]
    assert verify(as_dicts(records)) == []


def test_checkpoint_signature() -> None:
    """A checkpoint signs writer, seq, head and finality with the key."""
    last = chain_of(2)[-1]
    assert last.integrity is not msgspec.UNSET
    head = last.integrity.prev
    signature = HmacSigner(KEY).sign(checkpoint_message("w1", 2, head, True))
    assert Checkpoint.from_metadata(last.metadata) == Checkpoint(
        head, "shutdown", True, "hmac-sha256", signature
    )


def test_edited_byte_is_modified() -> None:
    """Changing one character of a record's content names that record as modified."""
    lines = [encode_record(r) for r in chain_of(5)]
    lines[2] = lines[2].replace(b"question 2", b"question 3", 1)
    assert verify([msgspec.json.decode(x) for x in lines]) == [("modified", "w1", 2)]


def test_deleted_record_is_missing() -> None:
    """A removed line is reported as the missing seq."""
    entries = as_dicts(chain_of(5))
    del entries[3]
    assert verify(entries) == [("missing", "w1", 3)]


def test_swapped_records_are_reordered() -> None:
    """Two swapped lines are reported as reordered (the chain itself is still whole)."""
    entries = as_dicts(chain_of(5))
    entries[1], entries[2] = entries[2], entries[1]
    assert verify(entries) == [("reordered", "w1", 1)]


def test_dropped_tail_is_unsealed() -> None:
    """Cutting the last records (and the final checkpoint) leaves records after the last
    checkpoint; cutting exactly at a checkpoint leaves the chain open."""
    entries = as_dicts(chain_of(6, every=3))
    assert verify(entries[:-2]) == [("unsealed", "w1", 4)]
    assert verify(entries[:4]) == [("open", "w1", 3)]


def test_rewritten_record_breaks_link() -> None:
    """A record replaced by one re-hashed on its own no longer links to its predecessor."""
    records = chain_of(4)
    forged = make_record(99, writer="w1")
    forged.writer, forged.seq = "w1", 1
    IntegrityChain(None, engine="mock").seal(forged)
    entries = as_dicts(records)
    entries[1] = as_dicts([forged])[0]
    assert verify(entries) == [("broken_link", "w1", 1), ("broken_link", "w1", 2)]


def test_wrong_key_fails_signatures() -> None:
    """Checkpoints checked with another key are bad signatures; without a key, unverified."""
    entries = as_dicts(chain_of(4, every=2))  # checkpoints at seq 2, 5 and 6 (final)
    assert verify(entries, key="another-key") == [
        ("bad_signature", "w1", 2),
        ("bad_signature", "w1", 5),
        ("bad_signature", "w1", 6),
    ]
    unverified = [("unverified", "w1", 2), ("unverified", "w1", 5), ("unverified", "w1", 6)]
    assert verify(entries, key=None) == unverified


def test_unsigned_checkpoints_fail_with_a_key() -> None:
    """A trail written without a key does not pass as signed."""
    entries = as_dicts(chain_of(2, key=None))
    assert verify(entries) == [("unsigned", "w1", 2)]


def test_multi_writer_interleaved_trail() -> None:
    """Two writers interleaved in one file verify independently and clean."""
    a, b = as_dicts(chain_of(4, writer="a")), as_dicts(chain_of(3, writer="b"))
    mixed = [a[0], b[0], b[1], a[1], a[2], b[2], a[3], b[3], a[4]]
    assert verify(mixed) == []
    del mixed[2]  # b's seq 1
    assert verify(mixed) == [("missing", "b", 1)]


def test_duplicate_is_a_warning_conflict_is_damage() -> None:
    """The same record twice is a warning; a different record under the same seq is damage."""
    entries = as_dicts(chain_of(2))
    verifier = Verifier(signer=HmacSigner(KEY), ordered=False)
    for i, e in enumerate([*entries, entries[1]]):  # the record at seq 1 twice
        verifier.add(f"{i}", e)
    report = verifier.report()
    assert (report.intact, [f.kind for f in report.writers[0].findings]) == (True, ["duplicate"])
    other = dict(entries[1], model="other")
    assert verify([*entries, other], ordered=False) == [("conflict", "w1", 1)]


def test_not_a_record_is_invalid() -> None:
    """Lines without writer/seq are reported as invalid entries."""
    assert verify([*as_dicts(chain_of(1)), {"hello": 1}]) == [("invalid", None, None)]


def intact_after(record: AuditRecord, reprint: Callable[[str], str]) -> bool:
    """Chain ``record`` alone, re-print its stored line with ``reprint``, and verify that."""
    record.writer, record.seq = "w1", 0
    IntegrityChain(None, engine="mock").seal(record)
    line = reprint(encode_record(record).decode())
    verifier = Verifier(live=True)
    verifier.add("row 1", msgspec.json.decode(line))
    return verifier.report().intact


def jsonb(written: str) -> str:
    """How PostgreSQL's JSONB prints back a number msgspec wrote as ``written``."""
    return format(Decimal(written), "f")


@pytest.mark.parametrize("value", [1e16, 1.5e300, 2.5, 1e-7, 0.1, 10**20, 10**16])
def test_chain_survives_jsonb_number_printing(value: float) -> None:
    """A number re-printed from its decimal value (as JSONB does) still verifies."""
    record = make_record(0)
    assert isinstance(record.request, dict)
    record.request["temperature"] = value
    old = f'"temperature":{msgspec.json.encode(value).decode()}'
    new = f'"temperature":{jsonb(old.partition(":")[2])}'
    assert intact_after(record, lambda line: line.replace(old, new))


@pytest.mark.parametrize(
    "value", [1e16, -1.2345678901234568e17, 4.5e45, 1e99, 1e100, 1.7976931348623157e308]
)
@pytest.mark.parametrize("where", ["inner", "last_in_list", "last_in_object"])
def test_chain_survives_jsonb_anywhere(value: float, where: str) -> None:
    """A float JSONB prints as an integer verifies wherever it sits, next to a genuine integer
    of the same size, in a record whose hex ids hold digit-e-digit runs."""
    record = make_record(0, request_id="4e16aaaa-0000-4e99-8e16-00000000004e")
    assert isinstance(record.request, dict)
    shapes = {
        "inner": [value, 10**17, 1],
        "last_in_list": [10**17, 1, value],
        "last_in_object": {"a": 10**17, "z": value},
    }
    record.request["unknown_field"] = shapes[where]
    written = msgspec.json.encode(value).decode()
    # Only the number itself (a JSON value between [ , : and , ] }): a bare str.replace also
    # hit the record's SHA-256 hex when that happened to contain "1e99" (a 1-in-1,000 flake).
    number = re.compile(rf"(?<=[\[,:]){re.escape(written)}(?=[,\]}}])")
    reprinted = []

    def reprint(line: str) -> str:
        new, count = number.subn(jsonb(written), line)
        reprinted.append(count)
        return new

    assert intact_after(record, reprint)
    assert reprinted == [1]


def test_changed_big_number_is_still_modified() -> None:
    """Re-spelling numbers never lets a changed value pass."""
    record = make_record(0)
    assert isinstance(record.request, dict)
    record.request["seed"] = 1e16
    assert not intact_after(record, lambda line: line.replace("1e16", "20000000000000000"))


def test_canonical_survives_a_store_row() -> None:
    """A record stored as a row and read back has the same canonical form (keys re-ordered)."""
    record = chain_of(1, final=False)[0]
    row = dict(zip(COLUMN_NAMES, row_from_record(record), strict=True))
    assert canonical(record) == canonical(record_dict_from_row(row))


def test_no_checkpoint_for_an_idle_writer() -> None:
    """A writer that chained nothing writes no checkpoint, not even a final one."""
    chain = IntegrityChain(HmacSigner(KEY), engine="mock")
    assert (chain.checkpoint("interval"), chain.checkpoint("shutdown", final=True)) == (None, None)


@pytest.mark.parametrize(
    "extra",
    [None, 1e16, 'tab\there \u2028 \x00 quote" é'],
    ids=["plain", "exponent", "escapes"],
)
def test_sealed_envelope_is_the_record(extra: Any) -> None:
    """The JSON the chain hands the sinks (its hashed bytes reused) decodes to exactly what
    encoding the sealed record gives, and verifies."""
    record = make_record(0)
    assert isinstance(record.request, dict)
    if extra is not None:
        record.request["extra"] = extra
    record.writer, record.seq = "w1", 0
    chain = IntegrityChain(None, engine="mock")
    envelope = Processors([], chain).seal(record)
    assert record.integrity is not msgspec.UNSET
    expected = encode_record(record)
    assert msgspec.json.decode(envelope.json) == msgspec.json.decode(expected)
    verifier = Verifier(ordered=True, live=True)
    verifier.add("line 1", msgspec.json.decode(envelope.json))
    assert verifier.report().intact


def test_a_recovery_checkpoint_seals_a_dead_writers_chain() -> None:
    """A writer that died after seq 4 is sealed by its successor: a final checkpoint in its
    own chain (seq 5, after its last record), signed, saying who sealed it on recovery; the
    successor's own chain is untouched."""
    records = chain_of(5, every=3, final=False)
    last = records[-1]
    assert last.integrity is not msgspec.UNSET
    successor = IntegrityChain(HmacSigner(KEY), engine="mock")
    envelope = successor.seal_recovered(last, "w2")
    assert envelope is not None and successor.head == GENESIS
    seal = msgspec.json.decode(envelope.json)
    head = last.integrity.hash
    message = checkpoint_message("w1", last.seq + 1, head, True, "w2")
    expected = Checkpoint(
        head, "recovery", True, "hmac-sha256", HmacSigner(KEY).sign(message), "w2"
    )
    assert (seal["writer"], seal["seq"], seal["mode"]) == ("w1", last.seq + 1, "checkpoint")
    assert Checkpoint.from_metadata(seal["metadata"]) == expected
    verifier = Verifier(signer=HmacSigner(KEY))
    for index, entry in enumerate([*as_dicts(records), seal]):
        verifier.add(f"line {index + 1}", entry)
    [report] = verifier.report().writers
    assert (report.intact, report.final, report.sealed_by, report.findings) == (
        True,
        True,
        "w2",
        [],
    )


def test_only_an_unsealed_chain_gets_a_recovery_checkpoint() -> None:
    """Nothing to seal after a final checkpoint, an unchained record or the sealer's own;
    a chain that ended at a non-final checkpoint is sealed."""
    chain = IntegrityChain(HmacSigner(KEY), engine="mock")
    final, count = chain_of(1)[-1], chain_of(2, every=2, final=False)[-1]
    unchained = make_record(0, writer="w1", integrity=msgspec.UNSET)
    unchained.writer, unchained.seq = "w1", 0
    assert count.mode == "checkpoint"
    sealed = [
        chain.seal_recovered(r, s) for r, s in ((final, "w2"), (unchained, "w2"), (count, "w1"))
    ]
    assert sealed == [None, None, None]
    assert chain.seal_recovered(count, "w2") is not None


def test_a_relabelled_recovery_checkpoint_fails_its_signature() -> None:
    """Whoever can re-hash records but has no key cannot pass a recovery seal off as the
    writer's own final checkpoint, nor the reverse: the signature covers who sealed it."""
    records = chain_of(3, final=False)
    envelope = IntegrityChain(HmacSigner(KEY), engine="mock").seal_recovered(records[-1], "w2")
    assert envelope is not None
    seal = msgspec.json.decode(envelope.json)
    del seal["metadata"]["sealed_by"]
    seal["metadata"]["reason"] = "shutdown"
    own = as_dicts(chain_of(3))  # the same writer's trail, ended by its own final checkpoint
    own[-1]["metadata"].update(reason="recovery", sealed_by="w2")
    for forged in (seal, own[-1]):
        prev = forged["integrity"]["prev"]
        forged["integrity"]["hash"] = link(prev, canonical(forged))
    assert verify([*as_dicts(records), seal]) == [("bad_signature", "w1", 3)]
    assert verify(own) == [("bad_signature", "w1", 3)]


def test_a_replayed_batch_appended_again_is_a_duplicate_not_reordered() -> None:
    """A file sink that got records 2..4 again after a crash (at-least-once delivery) holds
    them twice, the copies after later records: warnings, not damage."""
    entries = as_dicts(chain_of(4))
    trail = [*entries[:4], *entries[2:]]  # 0 1 2 3 | 2 3 4(final)
    assert verify(trail) == [("duplicate", "w1", 2), ("duplicate", "w1", 3)]
    reordered = [*entries[:4], dict(entries[2], model="other"), *entries[4:]]
    assert verify(reordered)[:2] == [("reordered", "w1", 2), ("conflict", "w1", 2)]


async def test_a_recovery_seal_is_retried_until_it_is_durable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool that fails (a full disk) does not leave the dead writer unsealed: the seal is
    published again until a commit works; with no retries left it is reported unsealed."""
    monkeypatch.setattr(checkpoints, "SEAL_RETRY_S", (0.0,))
    last = chain_of(1, final=False)[0]
    outcomes = [OSError(28, "No space left on device")] * 2 + [None]
    calls: list[AuditRecord] = []

    def seal(record: AuditRecord) -> asyncio.Future[None]:
        calls.append(record)
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        error = outcomes[len(calls) - 1]
        commit.set_result(None) if error is None else commit.set_exception(error)
        return commit

    assert await checkpoints.seal_until_durable(seal, last) is True
    assert calls == [last, last, last]
    calls.clear()
    outcomes[:] = [OSError(28, "No space left on device")]
    assert await checkpoints.seal_until_durable(seal, last, retries=0) is False
    assert "the chain of writer w1 (up to seq 0) is left unsealed" in caplog.text
