"""The audit record, schema_version 1 (DESIGN §3).

Field order is the wire order: the first eight fields are exactly those of NVIDIA Dynamo's audit
record.  ``request``, ``response`` and ``usage`` are the client's JSON (plain dicts), kept as
received or sent; everything else is typed.  Fields that are ``UNSET`` are left out of the JSON.

Additive rule: new fields may be added; existing ones never change meaning.  Readers
(:func:`decode_record`) ignore unknown fields.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

SCHEMA_VERSION: Final = 1

Mode = Literal["full", "usage_only", "checkpoint"]
"""``checkpoint``: a signed integrity checkpoint, not a request; its ``metadata`` holds the
checkpoint (see :class:`auditgate.audit.integrity.Checkpoint`)."""
Status = Literal["completed", "cancelled", "error"]


class ErrorInfo(msgspec.Struct, frozen=True):
    """Why a request ended in ``status: "error"``."""

    type: str
    """OpenAI error type (``api_error``, ``invalid_request_error``, ...)."""
    message: str
    """Human-readable cause."""
    status_code: int
    """HTTP status the client received (or would have, for a stream already under way)."""


class Integrity(msgspec.Struct, frozen=True):
    """Hash-chain link: ``hash`` = SHA-256 over the canonical record, chained to ``prev``."""

    prev: str
    hash: str


class AuditRecord(msgspec.Struct, kw_only=True):
    """One captured chat completion.  See DESIGN §3 for the meaning of each field."""

    schema_version: int = SCHEMA_VERSION
    request_id: str
    requested_streaming: bool
    mode: Mode
    model: str
    usage: dict[str, Any] | None
    """Token usage reported by the engine; ``None`` only when it reported none."""
    request: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    """The request body as received (full mode only)."""
    response: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    """The ``chat.completion`` the client saw (full mode, when anything was produced)."""
    endpoint: str = "chat.completions"
    transport: str = "http"
    engine: str
    status: Status
    complete: bool
    error: ErrorInfo | msgspec.UnsetType = msgspec.UNSET
    created_at: int
    """Unix milliseconds when the request arrived."""
    completed_at: int
    """Unix milliseconds when the response ended."""
    ttft_ms: float | None
    """Milliseconds to the first content chunk (to the microsecond); ``None`` when nothing
    was produced."""
    duration_ms: float
    """Milliseconds from the request's arrival to the end of its response (to the microsecond)."""
    tenant: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    client_request_id: str | msgspec.UnsetType = msgspec.UNSET
    """The client's own ``X-Request-Id``, kept for correlation only."""
    engine_response_id: str | msgspec.UnsetType = msgspec.UNSET
    """The id the engine gave its response, before the gateway replaced it."""
    http_request_headers: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    writer: str
    """Process identity ``host:pid:random``."""
    seq: int
    """Per-writer sequence, gap-free at publish time."""
    integrity: Integrity | msgspec.UnsetType = msgspec.UNSET


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(AuditRecord)


def encode_record(record: AuditRecord) -> bytes:
    """The record as one line of JSON (no trailing newline): the bytes every sink stores.

    msgspec leaves ``UNSET`` fields out and escapes control characters, so the line never holds a
    raw newline whatever the client sent.
    """
    return _encoder.encode(record)


def decode_record(data: bytes | str) -> AuditRecord:
    """Parse one record line; unknown fields are ignored (additive rule)."""
    return _decoder.decode(data)


class Envelope:
    """A published record plus its JSON, encoded once and shared by every sink."""

    __slots__ = ("_json", "record")

    def __init__(self, record: AuditRecord, json: bytes | None = None) -> None:
        """``json``: the record's JSON line when the caller already has it (the integrity
        chain encodes every record to hash it); it must decode to ``record``."""
        self.record = record
        self._json = json

    @property
    def json(self) -> bytes:
        """The record's JSON line (no newline), encoded on first use."""
        data = self._json
        if data is None:
            data = self._json = encode_record(self.record)
        return data

    @property
    def request_id(self) -> str:
        return self.record.request_id

    def __repr__(self) -> str:
        return f"Envelope(request_id={self.record.request_id!r}, seq={self.record.seq})"
