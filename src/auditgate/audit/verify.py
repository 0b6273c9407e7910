"""Verifying a trail (``auditgate verify``): every writer's chain, its gaps and its checkpoints.

:class:`Verifier` takes records in the order a source holds them (file lines, table rows, stream
messages), groups them by ``writer``, and reports per writer what :data:`DAMAGE` it found (a
modified record, a broken link, a missing or reordered seq, a bad or missing signature, an
unsealed tail, a stored column that disagrees with its record) and :data:`WARNINGS`.  The hash
chain and the canonical form it checks are :mod:`auditgate.audit.integrity`; what a store's
columns hold besides the record is checked by its reader (:mod:`auditgate.store.trail`), which
hands the result in as :class:`ColumnNote` s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from auditgate.audit.integrity import (
    GENESIS,
    UNSIGNED,
    Checkpoint,
    HmacSigner,
    canonical,
    checkpoint_message,
    link,
    respellings,
)

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
        "column_mismatch",
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
  crashed — and no gateway restarted on its durable spool to seal it — or is still running);
- ``open``: the writer's last checkpoint is not its final (shutdown) one;
- ``column_mismatch``: a stored column computed from the record (token counts, response id, a
  scrubbed copy of a value kept exactly in ``originals``, SQLite's metadata side table...) does
  not hold what the record gives; :attr:`Finding.column` names it.
"""
WARNINGS: Final = frozenset({"duplicate", "unverified", "metadata_updated"})
"""Kinds reported without failing: an identical record stored twice (also out of order: a
replayed batch appended again); signatures not checked
because no key was given; metadata replaced through the stored-completions API (the chain
covers the record's own metadata, which the store keeps; the replacement is not chained)."""


class SourceError(Exception):
    """The trail cannot be read at all (missing file, database down, unknown stream)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ColumnNote:
    """What a store's reader found in one row besides the record: becomes a :class:`Finding`
    of that record."""

    kind: str
    """``column_mismatch`` or ``metadata_updated`` (see :data:`DAMAGE`, :data:`WARNINGS`)."""
    column: str | None
    """The column (or side table) concerned; ``None`` when the row as a whole is concerned."""
    detail: str
    """Human-readable explanation."""


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
    column: str | None = None
    """For findings about one stored column (:class:`ColumnNote`): its name."""


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
    sealed_by: str | None = None
    """The writer that sealed this one's chain on recovery (its process died), when its last
    checkpoint is such a recovery checkpoint."""
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
                    "sealed_by": w.sealed_by,
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
    notes: tuple[ColumnNote, ...] = ()
    """What the store's reader found in the row's other columns."""


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

    def add(self, location: str, data: Any, notes: Sequence[ColumnNote] = ()) -> None:
        """One entry: ``data`` is the record as a JSON object (a decoded line or stored row),
        or a string saying why the entry could not be decoded; ``notes``: what a store's
        reader found in the row's other columns."""
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
        entry = _link_of(seq, location, rid, data, tuple(notes))
        seen = links.get(seq)
        if (
            seen is not None
            and seen.intact
            and entry.intact
            and (seen.hash, seen.request_id) == (entry.hash, rid)
        ):
            # A sink that got a batch again (at-least-once delivery: a replay after a crash)
            # appends it again; that copy moves nothing, so it is not "reordered" either.
            # The entry is not kept (its seq is taken): its notes are reported now.
            findings.extend(_note_findings(writer, entry))
            detail = f"same record as {seen.location}"
            findings.append(Finding("duplicate", writer, seq, location, detail, rid, False))
            return
        if self.ordered and seq < self._highest.get(writer, -1):
            detail = f"comes after seq {self._highest[writer]} of the same writer"
            findings.append(Finding("reordered", writer, seq, location, detail, rid))
        self._highest[writer] = max(seq, self._highest.get(writer, -1))
        if seen is None:
            links[seq] = entry
        else:
            findings.extend(_note_findings(writer, entry))
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
                out.sealed_by = link.checkpoint.sealed_by
        findings.extend(self._tail(out, links))
        return out

    def _check(self, writer: str, link: _Link, previous: _Link | None) -> list[Finding]:
        found: list[Finding] = []

        def add(kind: str, detail: str, *, damage: bool = True) -> None:
            found.append(
                Finding(kind, writer, link.seq, link.location, detail, link.request_id, damage)
            )

        found.extend(_note_findings(writer, link))
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
        message = checkpoint_message(
            writer, link.seq, checkpoint.head, checkpoint.final, checkpoint.sealed_by
        )
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


def _note_findings(writer: str, link: _Link) -> list[Finding]:
    return [
        Finding(
            note.kind,
            writer,
            link.seq,
            link.location,
            note.detail,
            link.request_id,
            damage=note.kind not in WARNINGS,
            column=note.column,
        )
        for note in link.notes
    ]


def _link_of(
    seq: int,
    location: str,
    request_id: str | None,
    data: dict[str, Any],
    notes: tuple[ColumnNote, ...],
) -> _Link:
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
    return _Link(seq, location, request_id, prev, hash_, intact, checkpoint, notes)
