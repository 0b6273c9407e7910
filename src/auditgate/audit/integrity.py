"""Tamper evidence: the canonical form of a record, the per-writer hash chain, and signatures.

Chain (DESIGN §3).  Each record of a writer carries ``integrity: {"prev", "hash"}`` with

    hash = SHA-256( bytes.fromhex(prev) || canonical(record) )      (lower-case hex)

where ``prev`` is the ``hash`` of the same writer's record with ``seq - 1``, and :data:`GENESIS`
(64 zeros) for ``seq == 0``.  A writer id is unique per process start, so every chain starts at
the genesis value.

Canonical form: the record as a JSON object *without* its ``integrity`` field, encoded by msgspec
with object keys sorted at every level (``UNSET`` fields left out, as on the wire), every number
spelled as msgspec spells it.  The writer hashes those bytes as they are (and stores them, see
:func:`sealed_json`), so chaining costs one encode and one SHA-256 per record.  Readers rebuild
the same bytes from a decoded line or stored row: key order is sorted away, and a float that
PostgreSQL's JSONB re-printed from its decimal value as an integer (msgspec writes ``1e16``,
JSONB gives back ``10000000000000000``) is spelled as a float again when the plain form does not
match (:func:`respellings`).  Any field a newer writer added is part of the canonical form too,
so readers that do not know a field still verify it.

Checkpoints (``mode: "checkpoint"`` records carrying a :class:`Checkpoint` as metadata) sign
:func:`checkpoint_message` — writer, seq, the chain head before it and whether it is the final
one — with HMAC-SHA256 under ``DYN_AUDIT_INTEGRITY_KEY``.  A checkpoint is itself chained, so
whoever can rewrite records but does not hold the key cannot forge the tail.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

import msgspec

from auditgate.audit.record import AuditRecord

GENESIS: Final = "0" * 64
"""``prev`` of every writer's first record (``seq == 0``)."""
HMAC_ALG: Final = "hmac-sha256"
UNSIGNED: Final = "none"

_canonical_encoder: Final = msgspec.json.Encoder(order="sorted")


def canonical(record: AuditRecord | dict[str, Any]) -> bytes:
    """The bytes a record's chain hash covers (see the module docstring).

    ``record`` is an :class:`AuditRecord` (writer side) or the record as a JSON object (reader
    side: a decoded line or a stored row); its ``integrity`` field, if any, is left out.  Both
    give the same bytes for the same record.
    """
    return canonical_form(record)[0]


def canonical_form(record: AuditRecord | dict[str, Any]) -> tuple[bytes, bool]:
    """:func:`canonical`, and whether those bytes are also the record's JSON encoding (UTF-8;
    false only for a text with a lone surrogate, hashed in an ASCII form): then the writer
    stores them, with ``integrity`` added, instead of encoding the record a second time."""
    if isinstance(record, dict):
        if "integrity" in record:
            record = {k: v for k, v in record.items() if k != "integrity"}
    elif record.integrity is not msgspec.UNSET:
        record = msgspec.structs.replace(record, integrity=msgspec.UNSET)
    try:
        return _canonical_encoder.encode(record), True
    except UnicodeEncodeError:
        return _ascii_canonical(msgspec.to_builtins(record)), False


def sealed_json(data: bytes, prev: str, digest: str) -> bytes:
    """The stored JSON of a record whose canonical bytes are ``data`` (its JSON encoding, see
    :func:`canonical_form`): the same object with ``integrity`` added as its last key.  Key
    order means nothing to JSON readers, and :func:`canonical` sorts it away again."""
    tail = b'","hash":"%s"}}' % digest.encode()
    return b"".join((data[:-1], b',"integrity":{"prev":"', prev.encode(), tail))


def _ascii_canonical(data: Any) -> bytes:
    """Canonical form of a record holding a lone surrogate (UTF-8 cannot carry it): ASCII JSON
    with ``\\uXXXX`` escapes and keys sorted."""
    return json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()


_MAX_RESPELLED = 8
"""Integers a re-spelling tries one by one; beyond this many only all-or-none is tried."""


def respellings(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Other readings of a stored record whose plain canonical form did not match its hash.

    PostgreSQL's JSONB prints a float from 1e16 on as an integer; each integer that large
    which a float holds exactly may have been one.  Returns copies with such integers turned
    back into floats (every subset, or all of them when there are more than
    :data:`_MAX_RESPELLED`), then the form earlier writers hashed (those floats as integers).
    The hash decides: the numbers are the same either way, so no reading can make a changed
    record pass.
    """
    out: list[dict[str, Any]] = []
    ints = _count(record, _big_int)
    if ints:
        masks = range(1, 1 << ints) if ints <= _MAX_RESPELLED else [(1 << ints) - 1]
        for mask in masks:
            out.append(_rebuilt(record, _int_respeller(mask)))
    if _count(record, _big_float):
        out.append(_rebuilt(record, lambda v: int(Decimal(repr(v))) if _big_float(v) else v))
    return out


def _big_int(value: Any) -> bool:
    """An integer JSONB may have printed for a float: from 1e16 on, and the decimal value of
    the shortest spelling of the float nearest to it (JSONB keeps that decimal, not the
    float's binary value)."""
    if type(value) is not int or not 10**16 <= abs(value) < 2**1024:
        return False
    return Decimal(repr(float(value))) == value


def _big_float(value: Any) -> bool:
    return type(value) is float and abs(value) >= 1e16 and value.is_integer()


def _count(value: Any, test: Callable[[Any], bool]) -> int:
    if isinstance(value, dict):
        return sum(_count(v, test) for v in value.values())
    if isinstance(value, list):
        return sum(_count(v, test) for v in value)
    return 1 if test(value) else 0


def _rebuilt(value: Any, change: Callable[[Any], Any]) -> Any:
    """A copy of a JSON value with ``change`` applied to every leaf, in document order."""
    if isinstance(value, dict):
        return {k: _rebuilt(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuilt(v, change) for v in value]
    return change(value)


def _int_respeller(mask: int) -> Callable[[Any], Any]:
    """Turns the i-th big integer (document order) into a float when bit i of ``mask`` is set."""
    index = itertools.count()

    def change(value: Any) -> Any:
        if _big_int(value) and mask >> next(index) & 1:
            return float(value)
        return value

    return change


def link(prev: str, data: bytes) -> str:
    """The chain hash of a record whose canonical form is ``data``, following ``prev``."""
    # One call over the concatenation: cheaper than update() for records of a few KiB.
    return hashlib.sha256(bytes.fromhex(prev) + data).hexdigest()


def checkpoint_message(writer: str, seq: int, head: str, final: bool) -> bytes:
    """What a checkpoint's signature covers."""
    return f"auditgate-checkpoint-v1\n{writer}\n{seq}\n{head}\n{int(final)}".encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that a writer's chain, up to the checkpoint record, has head ``head``.

    A checkpoint is its own record (``mode: "checkpoint"``) in the writer's sequence; its fields
    travel as that record's ``metadata`` (string values, :meth:`metadata`), so every sink and
    store keeps them without a schema change.
    """

    head: str
    """``integrity.hash`` of the writer's record just before this one (``seq - 1``)."""
    reason: str
    """Why it was written: ``count``, ``interval`` or ``shutdown``."""
    final: bool
    """True for the checkpoint written at shutdown: nothing of this writer follows it."""
    alg: str
    """``hmac-sha256``, or ``none`` when no key was configured."""
    signature: str | None
    """Hex signature of :func:`checkpoint_message`; ``None`` when unsigned."""

    def metadata(self) -> dict[str, str]:
        """The checkpoint as record metadata."""
        return {
            "head": self.head,
            "reason": self.reason,
            "final": "true" if self.final else "false",
            "alg": self.alg,
            "signature": self.signature or "",
        }

    @classmethod
    def from_metadata(cls, metadata: Any) -> Checkpoint | None:
        """The checkpoint a record's metadata holds; ``None`` when it holds none."""
        if not isinstance(metadata, dict):
            return None
        head, reason, alg = metadata.get("head"), metadata.get("reason"), metadata.get("alg")
        if not (isinstance(head, str) and isinstance(reason, str) and isinstance(alg, str)):
            return None
        signature = metadata.get("signature")
        return cls(
            head=head,
            reason=reason,
            final=metadata.get("final") == "true",
            alg=alg,
            signature=signature if isinstance(signature, str) and signature else None,
        )


class HmacSigner:
    """HMAC-SHA256 signatures under one shared key; ``repr`` never shows the key."""

    alg: Final = HMAC_ALG

    __slots__ = ("_key",)

    def __init__(self, key: str | bytes) -> None:
        if not key:
            raise ValueError("an HMAC key must not be empty")
        self._key = key.encode() if isinstance(key, str) else key

    def sign(self, message: bytes) -> str:
        """The hex signature of ``message``."""
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, message: bytes, signature: str) -> bool:
        """Whether ``signature`` is this key's signature of ``message`` (constant time)."""
        return hmac.compare_digest(self.sign(message), signature)

    def __repr__(self) -> str:
        return "HmacSigner(key=<redacted>)"


# --- verification ----------------------------------------------------------------------------

DAMAGE: Final = frozenset(
    {
        "invalid",
        "unchained",
        "modified",
        "broken_link",
        "missing",
        "reordered",
        "conflict",
        "bad_checkpoint",
        "bad_signature",
        "unsigned",
        "unsealed",
        "open",
    }
)
"""Finding kinds that make a trail fail verification.

- ``invalid``: a line or row that is not a record (no writer/seq, not JSON);
- ``unchained``: a record without ``integrity``;
- ``modified``: the record's content no longer hashes to its ``integrity.hash``;
- ``broken_link``: ``integrity.prev`` is not the hash of the writer's record ``seq - 1``
  (a record was replaced by another one, or the chain was re-built from there on);
- ``missing``: sequence numbers absent from the trail (``seq`` .. ``last``);
- ``reordered``: in the source's order, the record comes after a later one of its writer;
- ``conflict``: two different records with the same writer and seq;
- ``bad_checkpoint``: a checkpoint whose ``head`` is not its chain predecessor;
- ``bad_signature`` / ``unsigned``: a checkpoint the given key did not sign;
- ``unsealed``: records after the writer's last checkpoint (a cut-off tail, or a writer that
  crashed or is still running);
- ``open``: the writer's last checkpoint is not its final (shutdown) one.
"""
WARNINGS: Final = frozenset({"duplicate", "unverified"})
"""Kinds reported without failing: an identical record stored twice; signatures not checked
because no key was given."""


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One thing verification found."""

    kind: str
    """One of :data:`DAMAGE` or :data:`WARNINGS`."""
    writer: str | None
    """The writer concerned (``None`` for an ``invalid`` entry)."""
    seq: int | None
    """The record's seq (for ``missing``: the first missing one)."""
    location: str | None
    """Where in the source: ``file:line``, ``rowid N``, ``stream seq N``..."""
    detail: str
    """Human-readable explanation."""
    request_id: str | None = None
    """The record's request id, when there is a record."""
    damage: bool = True
    """Whether this finding fails verification."""


@dataclasses.dataclass(slots=True)
class WriterReport:
    """Verification of one writer's chain."""

    writer: str
    records: int = 0
    """Entries of this writer (checkpoints included)."""
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_checkpoint_seq: int | None = None
    final: bool = False
    """Whether the writer's last checkpoint is its final one."""
    findings: list[Finding] = dataclasses.field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not any(f.damage for f in self.findings)


@dataclasses.dataclass(slots=True)
class Report:
    """Verification of a whole trail: one report per writer, plus entries that are no records."""

    writers: list[WriterReport]
    invalid: list[Finding]

    @property
    def intact(self) -> bool:
        return not self.invalid and all(w.intact for w in self.writers)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``auditgate verify --json``)."""
        return {
            "intact": self.intact,
            "writers": [
                {
                    "writer": w.writer,
                    "intact": w.intact,
                    "records": w.records,
                    "checkpoints": w.checkpoints,
                    "first_seq": w.first_seq,
                    "last_seq": w.last_seq,
                    "last_checkpoint_seq": w.last_checkpoint_seq,
                    "final": w.final,
                    "findings": [_finding_dict(f) for f in w.findings],
                }
                for w in self.writers
            ],
            "invalid": [_finding_dict(f) for f in self.invalid],
        }


def _finding_dict(finding: Finding) -> dict[str, Any]:
    return dataclasses.asdict(finding)


@dataclasses.dataclass(frozen=True, slots=True)
class _Link:
    """What verification keeps of one entry (not the whole record)."""

    seq: int
    location: str
    request_id: str | None
    prev: str | None
    hash: str | None
    intact: bool
    """Whether the content hashes to ``hash`` given ``prev``."""
    checkpoint: Checkpoint | None


class Verifier:
    """Verifies a trail fed entry by entry, in the source's order.

    Memory grows with the number of records (a few hundred bytes each), not their size.
    ``ordered``: the source keeps publish order (files, SQLite insertion order), so a record
    that comes after a later one of its writer is ``reordered``.  ``signer``: checkpoints are
    checked against it; without one they are reported ``unverified``.  ``live``: the writers
    may still be running, so ``unsealed`` and ``open`` are warnings instead of damage.
    """

    def __init__(
        self, *, signer: HmacSigner | None = None, ordered: bool = True, live: bool = False
    ) -> None:
        self.signer = signer
        self.ordered = ordered
        self.live = live
        self._links: dict[str, dict[int, _Link]] = {}
        self._findings: dict[str, list[Finding]] = {}
        self._highest: dict[str, int] = {}
        self._invalid: list[Finding] = []

    def add(self, location: str, data: Any) -> None:
        """One entry: ``data`` is the record as a JSON object (a decoded line or stored row),
        or a string saying why the entry could not be decoded."""
        if not isinstance(data, dict):
            # A reader passes a string to say why an entry could not be decoded.
            detail = data if isinstance(data, str) else "not a JSON object"
            self._invalid.append(_invalid(location, detail))
            return
        writer, seq = data.get("writer"), data.get("seq")
        if not isinstance(writer, str) or type(seq) is not int:
            self._invalid.append(_invalid(location, "no writer/seq: not an audit record"))
            return
        request_id = data.get("request_id")
        rid = request_id if isinstance(request_id, str) else None
        findings = self._findings.setdefault(writer, [])
        links = self._links.setdefault(writer, {})
        if self.ordered and seq < self._highest.get(writer, -1):
            findings.append(
                Finding(
                    "reordered",
                    writer,
                    seq,
                    location,
                    f"comes after seq {self._highest[writer]} of the same writer",
                    rid,
                )
            )
        self._highest[writer] = max(seq, self._highest.get(writer, -1))
        entry = _link_of(seq, location, rid, data)
        seen = links.get(seq)
        if seen is None:
            links[seq] = entry
        elif seen.intact and entry.intact and (seen.hash, seen.request_id) == (entry.hash, rid):
            findings.append(
                Finding(
                    "duplicate",
                    writer,
                    seq,
                    location,
                    f"same record as {seen.location}",
                    rid,
                    damage=False,
                )
            )
        else:
            findings.append(
                Finding("conflict", writer, seq, location, f"differs from {seen.location}", rid)
            )

    def report(self) -> Report:
        """The verdict over everything added so far."""
        writers = [self._writer_report(w) for w in sorted(self._links)]
        return Report(writers, list(self._invalid))

    def _writer_report(self, writer: str) -> WriterReport:
        links = self._links[writer]
        seqs = sorted(links)
        out = WriterReport(writer, records=len(seqs), first_seq=seqs[0], last_seq=seqs[-1])
        findings = out.findings
        findings.extend(self._findings.get(writer, ()))
        expected = 0
        previous: _Link | None = None
        for seq in seqs:
            link = links[seq]
            if seq > expected:
                last = seq - 1
                span = f"seq {expected}" if last == expected else f"seq {expected}..{last}"
                findings.append(
                    Finding(
                        "missing",
                        writer,
                        expected,
                        None,
                        f"{span} missing ({last - expected + 1} record(s)) before {link.location}",
                    )
                )
            findings.extend(self._check(writer, link, previous if seq == expected else None))
            previous, expected = link, seq + 1
            if link.checkpoint is not None:
                out.checkpoints += 1
                out.last_checkpoint_seq = seq
                out.final = link.checkpoint.final
        findings.extend(self._tail(out, links))
        return out

    def _check(self, writer: str, link: _Link, previous: _Link | None) -> list[Finding]:
        found: list[Finding] = []

        def add(kind: str, detail: str, *, damage: bool = True) -> None:
            found.append(
                Finding(kind, writer, link.seq, link.location, detail, link.request_id, damage)
            )

        if link.hash is None or link.prev is None:
            add("unchained", "no integrity field")
            return found
        if not link.intact:
            add("modified", "content does not match integrity.hash")
        # A gap (``previous`` None past seq 0) leaves the link unchecked: ``missing`` says it.
        want = GENESIS if link.seq == 0 else previous.hash if previous is not None else None
        if want is not None and link.prev != want:
            add("broken_link", f"integrity.prev is not the hash of seq {link.seq - 1}")
        checkpoint = link.checkpoint
        if checkpoint is None:
            return found
        if checkpoint.head != link.prev:
            add("bad_checkpoint", "the checkpoint's head is not the chain head before it")
        alg, signature = checkpoint.alg, checkpoint.signature
        message = checkpoint_message(writer, link.seq, checkpoint.head, checkpoint.final)
        if self.signer is None:
            if alg != UNSIGNED:
                add("unverified", f"{alg} signature not checked (no key given)", damage=False)
        elif alg == UNSIGNED or signature is None:
            add("unsigned", "checkpoint carries no signature")
        elif alg != self.signer.alg:
            add("bad_signature", f"signed with {alg}, not {self.signer.alg}")
        elif not self.signer.verify(message, signature):
            add("bad_signature", "signature does not match the given key")
        return found

    def _tail(self, out: WriterReport, links: dict[int, _Link]) -> list[Finding]:
        damage = not self.live
        assert out.last_seq is not None
        last = links[out.last_seq]
        sealed = out.last_checkpoint_seq
        if sealed is None or sealed < out.last_seq:
            first = 0 if sealed is None else sealed + 1
            unsealed = sorted(s for s in links if s >= first)
            head = links[unsealed[0]]
            where = "no checkpoint" if sealed is None else f"the last checkpoint (seq {sealed})"
            return [
                Finding(
                    "unsealed",
                    out.writer,
                    head.seq,
                    head.location,
                    f"{len(unsealed)} record(s) after {where}, up to seq {out.last_seq}; "
                    "the tail may have been cut off",
                    head.request_id,
                    damage,
                )
            ]
        if not out.final:
            return [
                Finding(
                    "open",
                    out.writer,
                    sealed,
                    last.location,
                    "the last checkpoint is not the writer's final one",
                    last.request_id,
                    damage,
                )
            ]
        return []


def _invalid(location: str, detail: str) -> Finding:
    return Finding("invalid", None, None, location, detail)


def _link_of(seq: int, location: str, request_id: str | None, data: dict[str, Any]) -> _Link:
    integrity = data.get("integrity")
    prev = integrity.get("prev") if isinstance(integrity, dict) else None
    hash_ = integrity.get("hash") if isinstance(integrity, dict) else None
    intact = False
    if isinstance(prev, str) and isinstance(hash_, str):
        try:
            intact = link(prev, canonical(data)) == hash_ or any(
                link(prev, canonical(other)) == hash_ for other in respellings(data)
            )
        except ValueError:  # prev is not hex: the field itself was damaged
            intact = False
    else:
        prev = hash_ = None
    checkpoint = (
        Checkpoint.from_metadata(data.get("metadata")) if data.get("mode") == "checkpoint" else None
    )
    return _Link(seq, location, request_id, prev, hash_, intact, checkpoint)
