"""Record processors: redaction and the integrity chain, run before any sink sees a record.

A processor is a plain callable ``(AuditRecord) -> AuditRecord`` (structlog's model).  The
:class:`~auditgate.audit.capture.Auditor` runs the :class:`Processors` once per record and only
then hands it to the bus, so every sink holds the same redacted bytes and the same chain.  Order
is fixed: redaction first (:meth:`Processors.prepare`), then ``writer``/``seq`` stamping, then the
integrity chain (:meth:`Processors.seal`), so the chain covers exactly what was stored.

All of this runs synchronously on the event loop, in batches of the records published in one
loop iteration, in publish order, so the chain state needs no lock; with ``--workers N`` each
process is its own writer with its own chain.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from auditgate.audit import redact_items
from auditgate.audit.integrity import (
    GENESIS,
    UNSIGNED,
    Checkpoint,
    HmacSigner,
    canonical_form,
    checkpoint_message,
    link,
    sealed_json,
)
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope, Integrity
from auditgate.audit.redact import (
    GATEWAY_KEY,
    Redactor,
    builtin,
    load_patterns,
    with_gateway_keys,
)
from auditgate.audit.redact_text import redact_plain, texts_of
from auditgate.config import AuditSettings

Processor = Callable[[AuditRecord, Sequence[str]], AuditRecord]
"""Takes a record and its request's credentials (the API key it authenticated with, to be
redacted wherever it occurs; never stored), changes the record in place or not, and returns it
(the same object); runs before ``writer``/``seq`` are stamped (see :meth:`Processors.prepare`)."""

_PLAIN_ENDPOINTS: Final = frozenset({"completions", "embeddings"})
"""Endpoints whose texts are plain fields, not messages (:mod:`auditgate.audit.redact_text`)."""
# Message fields whose text is the conversation (everything else is structure: roles, ids...).
_TEXT_FIELDS: Final = ("content", "reasoning_content", "refusal")


class RedactProcessor:
    """Redacts message contents (strings and ``text`` parts), tool-call and function-call
    arguments, reasoning and refusals, in the request's ``messages`` and the response's
    ``choices[].message`` (``bodies``; for legacy completions and embeddings their plain text
    fields, see :mod:`auditgate.audit.redact_text`), and the values of captured request headers
    (``headers``); the request's own credentials (the API key it authenticated with) wherever
    they occur in those.  Copy-on-write: what nothing matched is not copied; a changed
    message is a new dict, so the client's own objects are never mutated."""

    def __init__(self, redactor: Redactor, *, bodies: bool = True, headers: bool = True) -> None:
        self.redactor = redactor
        self.bodies = bodies
        self.headers = headers

    def __call__(self, record: AuditRecord, credentials: Sequence[str] = ()) -> AuditRecord:
        request, response = record.request, record.response
        if record.endpoint == "responses":
            return self._responses(record, credentials)
        messages = choices = None
        if self.bodies:
            messages = request.get("messages") if isinstance(request, dict) else None
            choices = response.get("choices") if isinstance(response, dict) else None
        headers = record.http_request_headers if self.headers else None
        if headers is not None and not isinstance(headers, dict):  # UNSET: none captured
            headers = None
        # Most records hold nothing to redact: look for hints once over all their texts, and
        # walk the record again (detector by detector) only with the detectors that may match.
        texts: list[str] = []
        if isinstance(messages, list):
            for message in messages:
                _texts(message, texts)
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    _texts(choice.get("message"), texts)
        if headers is not None:
            texts.extend(headers.values())
        plain = self.bodies and record.endpoint in _PLAIN_ENDPOINTS
        if plain:
            texts_of(request, response, texts)
        redactor = self.redactor.narrow("\n".join(texts), credentials)
        if redactor is None:
            return record
        if plain:
            redact_plain(record, redactor)
        walk = _Walk(redactor)
        if isinstance(request, dict):
            changed = _list_of(messages, walk.message)
            if changed is not None:
                record.request = {**request, "messages": changed}
        if isinstance(response, dict):
            changed = _list_of(choices, walk.choice)
            if changed is not None:
                record.response = {**response, "choices": changed}
        if headers is not None:
            redacted = {name: redactor.text(value) for name, value in headers.items()}
            if redacted != headers:
                record.http_request_headers = redacted
        return record

    def _responses(self, record: AuditRecord, credentials: Sequence[str]) -> AuditRecord:
        """A Responses API record: its bodies are item trees (:mod:`.redact_items`)."""
        request, response = record.request, record.response
        headers = record.http_request_headers if self.headers else None
        if headers is not None and not isinstance(headers, dict):
            headers = None
        texts: list[str] = []
        if self.bodies:
            redact_items.texts(request, texts)
            redact_items.texts(response, texts)
        if headers is not None:
            texts.extend(headers.values())
        redactor = self.redactor.narrow("\n".join(texts), credentials)
        if redactor is None:
            return record
        if self.bodies:
            changed = redact_items.redact(request, redactor.text)
            if changed is not None:
                record.request = changed
            changed = redact_items.redact(response, redactor.text)
            if changed is not None:
                record.response = changed
        if headers is not None:
            redacted = {name: redactor.text(value) for name, value in headers.items()}
            if redacted != headers:
                record.http_request_headers = redacted
        return record


def _texts(message: Any, out: list[str]) -> None:
    """Append the texts of a message that :class:`_Walk` redacts to ``out``."""
    if not isinstance(message, dict):
        return
    content = message.get("content")
    if len(message) == 2 and type(content) is str and "role" in message:
        out.append(content)  # the common {"role", "content"} message, without the loop below
        return
    for field in _TEXT_FIELDS:
        value = message.get(field)
        if isinstance(value, str):
            out.append(value)
        elif field == "content" and isinstance(value, list):
            for part in value:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        out.append(text)
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                _arguments(call.get("function"), out)
    _arguments(message.get("function_call"), out)


def _arguments(function: Any, out: list[str]) -> None:
    if isinstance(function, dict):
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            out.append(arguments)


class _Walk:
    """Copy-on-write redaction of messages and choices with one (narrowed) redactor."""

    __slots__ = ("redactor",)

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def choice(self, choice: Any) -> Any:
        """The choice with its message redacted; None when nothing changed."""
        if not isinstance(choice, dict):
            return None
        message = self.message(choice.get("message"))
        return None if message is None else {**choice, "message": message}

    def message(self, message: Any) -> dict[str, Any] | None:
        if not isinstance(message, dict):
            return None
        text = self.redactor.text
        changed: dict[str, Any] = {}
        for field in _TEXT_FIELDS:
            value = message.get(field)
            if isinstance(value, str):
                new = text(value)
                if new is not value:
                    changed[field] = new
            elif field == "content" and isinstance(value, list):
                parts = _list_of(value, self.part)
                if parts is not None:
                    changed[field] = parts
        calls = _list_of(message.get("tool_calls"), self.call)
        if calls is not None:
            changed["tool_calls"] = calls
        function = self._function(message.get("function_call"))
        if function is not None:
            changed["function_call"] = function
        return {**message, **changed} if changed else None

    def part(self, part: Any) -> Any:
        if not isinstance(part, dict):
            return None
        value = part.get("text")
        if not isinstance(value, str):
            return None
        new = self.redactor.text(value)
        return None if new is value else {**part, "text": new}

    def call(self, call: Any) -> Any:
        if not isinstance(call, dict):
            return None
        function = self._function(call.get("function"))
        return None if function is None else {**call, "function": function}

    def _function(self, function: Any) -> dict[str, Any] | None:
        if not isinstance(function, dict):
            return None
        value = function.get("arguments")
        if not isinstance(value, str):
            return None
        new = self.redactor.text(value)
        return None if new is value else {**function, "arguments": new}


def _list_of(items: Any, change: Callable[[Any], Any]) -> list[Any] | None:
    """``items`` with ``change`` applied (``None`` from it: unchanged); ``None`` if nothing
    changed or ``items`` is not a list."""
    if not isinstance(items, list):
        return None
    out: list[Any] | None = None
    for index, item in enumerate(items):
        new = change(item)
        if new is not None:
            if out is None:
                out = list(items)
            out[index] = new
    return out


class IntegrityChain:
    """Links each record to its writer's previous one and issues signed checkpoints.

    :meth:`seal` sets ``integrity`` (and fills and signs a checkpoint record's metadata).
    :meth:`checkpoint` builds the next checkpoint record, to be published like any record;
    :attr:`due` says one is owed because ``every`` records were chained since the last.
    """

    def __init__(
        self,
        signer: HmacSigner | None,
        *,
        engine: str,
        every: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if every <= 0:
            raise ValueError("every must be > 0")
        self.signer = signer
        self.engine = engine
        self.every = every
        self.clock = clock
        self.head = GENESIS
        """``integrity.hash`` of the last chained record (GENESIS before the first)."""
        self.since = 0
        """Records chained since the last checkpoint."""

    @property
    def due(self) -> bool:
        return self.since >= self.every

    def seal(self, record: AuditRecord) -> bytes | None:
        """Chain ``record`` (set its ``integrity``) and return its JSON line, reusing the
        bytes just hashed (see :func:`~auditgate.audit.integrity.sealed_json`); None when
        those bytes are not a faithful encoding and the record must be encoded as usual."""
        line, self.head = self._chained(record, self.head)
        self.since = 0 if record.mode == "checkpoint" else self.since + 1
        return line

    def _chained(self, record: AuditRecord, prev: str) -> tuple[bytes | None, str]:
        """Link ``record`` to ``prev`` (signing a checkpoint's metadata first): its JSON line
        as :meth:`seal` returns it, and its hash."""
        if record.mode == "checkpoint":
            record.metadata = self._signed(record, prev).metadata()
        data, faithful = canonical_form(record)
        digest = link(prev, data)
        record.integrity = Integrity(prev=prev, hash=digest)
        return (sealed_json(data, prev, digest) if faithful else None), digest

    def seal_recovered(self, last: AuditRecord, sealer: str) -> Envelope | None:
        """The final checkpoint closing *another* writer's chain, whose newest record is
        ``last``: found in the durable spool at start, its process died without sealing it.

        The checkpoint is that writer's record ``last.seq + 1`` (its ``seq`` no record of it
        can hold: the spool keeps a prefix of every writer's records), chained to ``last``,
        ``reason: "recovery"``, ``final``, ``sealed_by: sealer``, signed with this gateway's
        key; this writer's own chain is not touched.  None when there is nothing to seal:
        ``last`` is not chained, or already a final checkpoint, or this writer's own."""
        if last.integrity is msgspec.UNSET or last.writer == sealer:
            return None
        if last.mode == "checkpoint":
            done = Checkpoint.from_metadata(last.metadata)
            if done is not None and done.final:
                return None
        record = self._draft("recovery", final=True, sealed_by=sealer)
        record.writer, record.seq = last.writer, last.seq + 1
        return Envelope(record, self._chained(record, last.integrity.hash)[0])

    def checkpoint(self, reason: str, *, final: bool = False) -> AuditRecord | None:
        """A checkpoint record for ``reason`` (``count``, ``interval``, ``shutdown``), or None
        when it would say nothing new: no record since the last checkpoint (a final one is
        still written after a non-final one), or none at all from this writer."""
        if self.head == GENESIS or (self.since == 0 and not final):
            return None
        return self._draft(reason, final=final)

    def _draft(self, reason: str, *, final: bool, sealed_by: str | None = None) -> AuditRecord:
        """A checkpoint record, not yet stamped (``writer``, ``seq``) nor signed."""
        now = int(self.clock() * 1000)
        return AuditRecord(
            request_id=f"checkpoint-{uuid.uuid4()}",
            requested_streaming=False,
            mode="checkpoint",
            model="",
            usage=None,
            endpoint="audit.checkpoint",
            transport="internal",
            engine=self.engine,
            status="completed",
            complete=True,
            created_at=now,
            completed_at=now,
            ttft_ms=None,
            duration_ms=0.0,
            writer="",
            seq=-1,
            metadata=Checkpoint("", reason, final, UNSIGNED, None, sealed_by).metadata(),
        )

    def _signed(self, record: AuditRecord, head: str) -> Checkpoint:
        draft = Checkpoint.from_metadata(record.metadata)
        reason = draft.reason if draft is not None else "count"
        final = draft.final if draft is not None else False
        sealed_by = draft.sealed_by if draft is not None else None
        if self.signer is None:
            return Checkpoint(head, reason, final, UNSIGNED, None, sealed_by)
        message = checkpoint_message(record.writer, record.seq, head, final, sealed_by)
        signature = self.signer.sign(message)
        return Checkpoint(head, reason, final, self.signer.alg, signature, sealed_by)


class Processors:
    """The processor chain one :class:`~auditgate.audit.capture.Auditor` runs on every record."""

    def __init__(self, processors: Sequence[Processor], chain: IntegrityChain | None) -> None:
        self.processors = tuple(processors)
        """What runs before stamping (redaction), in order."""
        self.chain = chain
        """The integrity chain, run after stamping; None when off."""

    def __bool__(self) -> bool:
        return bool(self.processors) or self.chain is not None

    def prepare(self, record: AuditRecord, credentials: Sequence[str] = ()) -> None:
        """Run the processors that do not depend on ``writer``/``seq`` (redaction), which
        change ``record`` in place; :meth:`seal` follows once it is stamped.  ``credentials``:
        the request's own API key, redacted wherever it occurs (see :data:`Processor`)."""
        for processor in self.processors:
            processor(record, credentials)

    def seal(self, record: AuditRecord) -> Envelope:
        """Chain the stamped, prepared ``record`` (integrity on) and wrap it for the bus; the
        envelope then carries the JSON the chain already encoded (one encode per record)."""
        if self.chain is None:
            return Envelope(record)
        return Envelope(record, self.chain.seal(record))

    @property
    def checkpoint_due(self) -> bool:
        """Whether a ``count`` checkpoint is owed now."""
        return self.chain is not None and self.chain.due

    def checkpoint(self, reason: str, *, final: bool = False) -> AuditRecord | None:
        """The next checkpoint record (see :meth:`IntegrityChain.checkpoint`); None when off."""
        return None if self.chain is None else self.chain.checkpoint(reason, final=final)

    def seal_recovered(self, last: AuditRecord, sealer: str) -> Envelope | None:
        """The recovery checkpoint for another writer's chain ending at ``last`` (see
        :meth:`IntegrityChain.seal_recovered`); None when off or nothing to seal."""
        return None if self.chain is None else self.chain.seal_recovered(last, sealer)

    @classmethod
    def build(cls, settings: AuditSettings, metrics: AuditMetrics, *, engine: str) -> Processors:
        """The chain the settings ask for: redaction (built-in detectors, then the patterns
        file, then the gateway's own keys), then the integrity chain.  Raises ConfigError for
        a bad patterns file.

        Captured headers are redacted with the same detectors as bodies; with no detector
        chosen, still for the gateway's own keys (:data:`GATEWAY_KEY` and the request's key),
        since header capture promises never to store a credential, whatever a header's name.
        """
        processors: list[Processor] = []
        detectors = builtin(settings.redact)
        if settings.redact_patterns_file:
            detectors += load_patterns(settings.redact_patterns_file)
        counters: dict[str, Any] = {}

        def count(kind: str) -> None:
            counter = counters.get(kind)
            if counter is None:
                counter = counters[kind] = metrics.redactions.labels(kind)
            counter.inc()

        if detectors:
            redactor = Redactor(with_gateway_keys(detectors), count)
            processors.append(RedactProcessor(redactor, headers=bool(settings.header_capture)))
        elif settings.header_capture:
            processors.append(RedactProcessor(Redactor((GATEWAY_KEY,), count), bodies=False))
        chain: IntegrityChain | None = None
        if settings.integrity:
            key = settings.integrity_key
            chain = IntegrityChain(
                HmacSigner(key.reveal()) if key is not None else None,
                engine=engine,
                every=settings.checkpoint_every,
            )
        return cls(processors, chain)
