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
whoever can rewrite records but does not hold the key cannot forge the tail.  A writer whose
process died (SIGKILL, power loss) never wrote its final checkpoint: the gateway that next
starts on its durable spool finds its last record there and seals its chain for it, with a
final checkpoint in that writer's chain (``reason: "recovery"``, ``sealed_by``: the sealing
writer, also signed).

Checking a stored trail against all this is :mod:`auditgate.audit.verify`.
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


def checkpoint_message(
    writer: str, seq: int, head: str, final: bool, sealed_by: str | None = None
) -> bytes:
    """What a checkpoint's signature covers; for a recovery checkpoint also who sealed the
    chain (so a recovery seal cannot pass for the writer's own final checkpoint, or back)."""
    message = f"auditgate-checkpoint-v1\n{writer}\n{seq}\n{head}\n{int(final)}"
    if sealed_by is not None:
        message += f"\nsealed-on-recovery-by\n{sealed_by}"
    return message.encode()


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
    """Why it was written: ``count``, ``interval``, ``shutdown`` or ``recovery``."""
    final: bool
    """True for the checkpoint written at shutdown: nothing of this writer follows it."""
    alg: str
    """``hmac-sha256``, or ``none`` when no key was configured."""
    signature: str | None
    """Hex signature of :func:`checkpoint_message`; ``None`` when unsigned."""
    sealed_by: str | None = None
    """For a recovery checkpoint (``reason: "recovery"``): the writer that sealed this chain
    on start because the process that wrote it died without its final checkpoint."""

    def metadata(self) -> dict[str, str]:
        """The checkpoint as record metadata."""
        metadata = {
            "head": self.head,
            "reason": self.reason,
            "final": "true" if self.final else "false",
            "alg": self.alg,
            "signature": self.signature or "",
        }
        if self.sealed_by is not None:
            metadata["sealed_by"] = self.sealed_by
        return metadata

    @classmethod
    def from_metadata(cls, metadata: Any) -> Checkpoint | None:
        """The checkpoint a record's metadata holds; ``None`` when it holds none."""
        if not isinstance(metadata, dict):
            return None
        head, reason, alg = metadata.get("head"), metadata.get("reason"), metadata.get("alg")
        if not (isinstance(head, str) and isinstance(reason, str) and isinstance(alg, str)):
            return None
        signature = metadata.get("signature")
        sealed_by = metadata.get("sealed_by")
        return cls(
            head=head,
            reason=reason,
            final=metadata.get("final") == "true",
            alg=alg,
            signature=signature if isinstance(signature, str) and signature else None,
            sealed_by=sealed_by if isinstance(sealed_by, str) else None,
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
        """Whether ``signature`` is this key's signature of ``message`` (constant time).  As
        bytes: a forged signature may hold characters beyond ASCII, which compare_digest
        refuses to compare as str (TypeError: ``auditgate verify`` stopped there)."""
        return hmac.compare_digest(
            self.sign(message).encode(), signature.encode("utf-8", "replace")
        )

    def __repr__(self) -> str:
        return "HmacSigner(key=<redacted>)"
