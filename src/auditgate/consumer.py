"""The JetStream consumer behind ``auditgate consume``: fetch, decode, write, acknowledge.

:class:`Consumer` pulls batches from a durable JetStream pull consumer, decodes each message into
a record — auditgate's own, or Dynamo's, converted by :class:`~auditgate.dynamo.DynamoReader`
(invalid ones are counted and terminated) — writes the batch to the target sink in one write
(retried with capped backoff, the batch kept "in progress" meanwhile) and acknowledges it only
after the write returned.  A Dynamo ``request_payload`` / ``request_end`` row waiting for its
partner is acknowledged with the record they make; at a stop it is handed back (``nak``).  The
delivery contract is in :mod:`auditgate.cli.consume`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from auditgate.audit.record import AuditRecord, Envelope, decode_record
from auditgate.audit.sink import Sink
from auditgate.dynamo import Converted, DynamoReader, InputFormat
from auditgate.errors import UNDECODABLE, ConfigError
from auditgate.logs import RateLimitedLog
from auditgate.sinks.nats import ensure_stream, redact_url, servers

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

log = logging.getLogger("auditgate.consume")

MAX_BACKOFF_S: Final = 5.0
"""Longest wait between retries of a failed target write or fetch."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConsumeOptions:
    """Everything one ``auditgate consume`` process is configured with."""

    nats_url: str
    """NATS server(s), ``nats://host:port`` (comma list allowed)."""
    subject: str
    """Subject the records are published on (the consumer's filter)."""
    stream: str
    """JetStream stream capturing ``subject``; created when missing."""
    durable: str
    """Durable consumer name; processes sharing it share the work."""
    target: str
    """Where records go: ``sqlite:///…``, ``postgresql://…`` or ``jsonl:///…``."""
    batch: int = 256
    """Most messages fetched, written and acknowledged together."""
    deliver_all: bool = True
    """When the durable is created: deliver the whole stream (else only new records)."""
    ack_wait_s: float = 30.0
    """When the durable is created: time before an unacknowledged message is redelivered."""
    fetch_wait_s: float = 1.0
    """Longest one fetch waits for messages (also bounds how long a stop request waits)."""
    progress_interval_s: float = 10.0
    """Seconds between progress lines (only while records flow)."""
    duplicate_window_s: float = 120.0
    """Duplicate window of a stream this process creates (as the ``nats`` sink does)."""
    input_format: InputFormat | None = None
    """Accept only this record format (``--input-format``); None: detect per message."""
    retention_days: int | None = None
    """A ``sqlite`` or ``postgres`` target deletes records older than this many days, at start
    and every hour, as a gateway's sink does (``DYN_AUDIT_RETENTION_DAYS``); ``None``: never."""


@dataclasses.dataclass(slots=True)
class Counters:
    """What one process did; the exit summary prints every field."""

    written: int = 0
    """Records committed to the target (a replayed record counts again)."""
    invalid: int = 0
    """Messages that were not valid records; terminated, never redelivered."""
    redelivered: int = 0
    """Messages delivered more than once (after a crash or a failed attempt elsewhere)."""
    errors: int = 0
    """Failed target writes (each retried) and failed fetches."""
    batches: int = 0
    """Batches committed and acknowledged."""
    dynamo: int = 0
    """Records converted from Dynamo's formats (included in ``written``)."""

    def line(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))


class ReceivedEnvelope(Envelope):
    """A record decoded from a message; its JSON is the message's own bytes, not a re-encoding.

    So a ``jsonl`` target stores the very line the gateway published, fields this version does
    not know included (additive rule).
    """

    __slots__ = ("_raw",)

    def __init__(self, record: AuditRecord, raw: bytes) -> None:
        super().__init__(record)
        self._raw = raw

    @property
    def json(self) -> bytes:
        return self._raw


def jsonl_path(url: str) -> str | None:
    """The file a ``jsonl://`` URL names, read as a file URL: ``jsonl:///data/x.jsonl`` is
    ``/data/x.jsonl`` (as ``file:///data/x.jsonl``; the four-slash spelling still works).
    None when ``url`` is not one; ConfigError for ``jsonl://relative``, which names no path."""
    if not url.startswith("jsonl://"):
        return None
    rest = url[len("jsonl://") :]
    if not rest.startswith("/") or not rest.strip("/"):
        raise ConfigError(
            f"{url!r}: expected jsonl:///ABSOLUTE/PATH (a file URL: three slashes, then the "
            "absolute path)"
        )
    return "/" + rest.lstrip("/")


def open_target(url: str, *, retention_days: int | None = None) -> Sink:
    """The sink a TARGET URL names (not opened yet); ConfigError for anything else.

    ``retention_days``: the database targets run retention as the gateway's sinks do
    (:mod:`auditgate.store.retention`); a ``jsonl`` file has none (logged).
    """
    prefix = "sqlite:///"
    if url.startswith(prefix) and len(url) > len(prefix):
        from auditgate.sinks.sqlite import SqliteSink

        return SqliteSink(url[len(prefix) :], retention_days=retention_days)
    path = jsonl_path(url)
    if path is not None:
        from auditgate.sinks.jsonl import JsonlSink

        if retention_days is not None:
            log.info("consume: a jsonl target keeps every record (retention applies to databases)")
        return JsonlSink(path)
    if url.startswith(("postgresql://", "postgres://")):
        from auditgate.sinks.postgres import PostgresSink

        return PostgresSink(url, retention_days=retention_days)
    raise ConfigError(
        f"--to {redact_url(url)!r}: expected sqlite:///PATH (three slashes and a relative path, "
        "or four for an absolute one), postgresql://... or jsonl:///ABSOLUTE/PATH"
    )


class Consumer:
    """One consuming process: fetch, decode, write, acknowledge, until ``stop`` is set."""

    def __init__(self, options: ConsumeOptions, target: Sink, stop: asyncio.Event) -> None:
        self.options = options
        self.target = target
        self.stop = stop
        self.counters = Counters()
        self._log = RateLimitedLog()
        self._nc: Client | None = None
        self._closing = False
        # Rows wait for their partner well within the ack wait, so the server does not
        # redeliver a held message meanwhile.
        self.reader: DynamoReader[Msg] = DynamoReader(
            forced=options.input_format, timeout_s=min(30.0, options.ack_wait_s / 2)
        )

    async def run(self) -> Counters:
        """Consume until ``stop``; ConfigError when the stream or durable does not fit."""
        o = self.options
        started = time.monotonic()
        try:
            sub = await self._subscribe()
            if sub is None:
                return self.counters
            log.info(
                "consume: consuming stream %s (subject %s) as durable %s into %s, batches of %d",
                o.stream,
                o.subject,
                o.durable,
                _target_label(o.target),
                o.batch,
            )
            await self._loop(sub)
        finally:
            for msg in self.reader.release():
                await _settle(msg.nak)
            self._closing = True
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()
            log.info(
                "consume: stopped; %s in %.1fs", self.counters.line(), time.monotonic() - started
            )
        return self.counters

    async def _subscribe(self) -> JetStreamContext.PullSubscription | None:
        """Connect, ensure stream and durable, bind; retries while NATS is away (None: stopped)."""
        import nats.errors

        o = self.options
        delay = 0.1
        while not self.stop.is_set():
            try:
                if self._nc is None:
                    self._nc = await self._connect()
                js = self._nc.jetstream(timeout=5.0)
                await ensure_stream(
                    js, o.stream, o.subject, duplicate_window_s=o.duplicate_window_s
                )
                await self._ensure_durable(js)
                return await js.pull_subscribe_bind(durable=o.durable, stream=o.stream)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                self._log.warning(
                    "connect",
                    "consume: NATS %s not ready (%s); retrying",
                    redact_url(o.nats_url),
                    _describe(exc),
                )
            await self._pause(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        return None

    async def _connect(self) -> Client:
        import nats

        async def on_error(exc: Exception) -> None:
            self._log.warning("nats", "consume: NATS: %s", _describe(exc))

        async def on_disconnected() -> None:
            if self._closing:
                return
            log.warning("consume: disconnected from NATS; reconnecting")

        async def on_reconnected() -> None:
            log.warning("consume: reconnected to NATS")

        # nats-py retries a first connection forever with max_reconnect_attempts=-1: bound it, so
        # the caller's loop can log and notice a stop request.
        client: Client = await asyncio.wait_for(
            nats.connect(
                servers(self.options.nats_url),
                name=f"auditgate-consume-{self.options.durable}",
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                ping_interval=10,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            ),
            3.0,
        )
        return client

    async def _ensure_durable(self, js: JetStreamContext) -> None:
        import nats.js.api
        import nats.js.errors

        o = self.options
        try:
            info = await js.consumer_info(o.stream, o.durable)
        except nats.js.errors.NotFoundError:
            policy = (
                nats.js.api.DeliverPolicy.ALL if o.deliver_all else nats.js.api.DeliverPolicy.NEW
            )
            config = nats.js.api.ConsumerConfig(
                durable_name=o.durable,
                deliver_policy=policy,
                ack_policy=nats.js.api.AckPolicy.EXPLICIT,
                ack_wait=o.ack_wait_s,
                filter_subject=o.subject,
            )
            try:
                await js.add_consumer(o.stream, config)
            except nats.js.errors.BadRequestError:
                # Another instance created it at the same moment (or with another config):
                # the check below decides.
                info = await js.consumer_info(o.stream, o.durable)
            else:
                log.info("consume: created durable %s (deliver %s)", o.durable, policy.value)
                return
        config = info.config
        if config.filter_subject not in (None, "", o.subject) or config.deliver_subject:
            raise ConfigError(
                f"durable {o.durable!r} on stream {o.stream!r} exists with filter subject "
                f"{config.filter_subject!r}"
                + (" and is a push consumer" if config.deliver_subject else "")
                + f"; it cannot consume {o.subject!r} here: use another --durable"
            )
        if config.ack_policy != nats.js.api.AckPolicy.EXPLICIT:
            raise ConfigError(
                f"durable {o.durable!r} exists with ack policy {config.ack_policy}; "
                "consume needs explicit acks: use another --durable"
            )
        log.info(
            "consume: resuming durable %s (%s pending, %s unacknowledged); "
            "--from-start/--new-only apply only to a new durable",
            o.durable,
            info.num_pending,
            info.num_ack_pending,
        )

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        import nats.errors

        o = self.options
        progress = _Progress(o.progress_interval_s)
        delay = 0.1
        while not self.stop.is_set():
            try:
                msgs = await sub.fetch(o.batch, timeout=o.fetch_wait_s)
            except TimeoutError:
                # Nothing to do (or NATS away: the client reconnects by itself).
                await self._store(self.reader.expire(), [])
                progress.maybe_log(self.counters)
                continue
            except (nats.errors.Error, OSError) as exc:
                self.counters.errors += 1
                self._log.warning("fetch", "consume: fetch failed: %s", _describe(exc))
                await self._pause(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            delay = 0.1
            await self._handle(msgs)
            progress.maybe_log(self.counters)

    async def _handle(self, msgs: Sequence[Msg]) -> None:
        """Decode, commit and acknowledge one fetched batch (terminate invalid messages)."""
        converted: list[Converted[Msg]] = []
        for msg in msgs:
            if msg.metadata.num_delivered > 1:
                self.counters.redelivered += 1
            converted += await self._convert(msg)
        await self._store(converted + self.reader.expire(), self.reader.late_tokens())

    async def _convert(self, msg: Msg) -> list[Converted[Msg]]:
        """The records one message completes (none while it waits for its partner); an invalid
        message is counted and terminated."""
        try:
            if self.reader.forced in (None, InputFormat.AUDITGATE):
                # Our own records, the common case, are decoded once, straight into a record.
                with contextlib.suppress(msgspec.ValidationError):
                    return [Converted(decode_record(msg.data), [msg], "auditgate")]
            value = msgspec.json.decode(msg.data)
            stamp = msg.metadata.timestamp
            received = None if stamp is None else int(stamp.timestamp() * 1000)
            return self.reader.feed(value, msg, received_ms=received)
        except (*UNDECODABLE, ValueError, KeyError, TypeError) as exc:
            self.counters.invalid += 1
            self._log.warning(
                "invalid",
                "consume: message %s is not an audit record, terminated: %s",
                msg.metadata.sequence.stream,
                _describe(exc),
            )
            await _settle(msg.term)
            return []

    async def _store(self, converted: list[Converted[Msg]], late: list[Msg]) -> None:
        """Commit the records, then acknowledge every message they came from (and ``late``
        ones: duplicates of a request already stored)."""
        import nats.errors

        if not converted and not late:
            return
        envelopes: list[Envelope] = []
        seen: set[str] = set()
        valid = list(late)
        dynamo = 0
        for item in converted:
            valid += item.tokens
            record = item.record
            if record.request_id in seen:
                continue
            seen.add(record.request_id)
            dynamo += item.how != "auditgate"
            raw = item.tokens[0].data.strip() if item.how == "auditgate" else b""
            # Our own record keeps the published bytes; one with raw newlines (not ours) or a
            # converted one is encoded here.
            envelopes.append(
                ReceivedEnvelope(record, raw) if raw and b"\n" not in raw else Envelope(record)
            )
        if envelopes and not await self._commit(envelopes, valid):
            return
        for msg in valid:
            await _settle(msg.ack)
        if self._nc is not None:
            try:
                # One round trip makes sure the server has every ack of the batch.
                await self._nc.flush(timeout=5)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                self._log.warning(
                    "ack",
                    "consume: acknowledgements not confirmed (%s); the batch may be "
                    "redelivered, which the target absorbs",
                    _describe(exc),
                )
        self.counters.written += len(envelopes)
        self.counters.dynamo += dynamo
        self.counters.batches += 1

    async def _commit(self, envelopes: list[Envelope], msgs: list[Msg]) -> bool:
        """Write until committed (True), or until a stop request interrupts the retries (False)."""
        delay = 0.1
        while True:
            try:
                await self.target.write(envelopes)
                return True
            except Exception as exc:  # noqa: BLE001 - a target failure is retried, never fatal
                self.counters.errors += 1
                self._log.warning(
                    "write",
                    "consume: writing %d record(s) to %s failed, retrying in %.1fs: %s",
                    len(envelopes),
                    _target_label(self.options.target),
                    delay,
                    _describe(exc),
                )
            if self.stop.is_set():
                # Hand the batch back now rather than after the ack wait.
                for msg in msgs:
                    await _settle(msg.nak)
                return False
            for msg in msgs:
                await _settle(msg.in_progress)
            await self._pause(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once on a stop request."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)


class _Progress:
    """Logs totals and the rate since the last line, at most once per interval."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._at = time.monotonic()
        self._written = 0
        self._invalid = 0

    def maybe_log(self, counters: Counters) -> None:
        now = time.monotonic()
        elapsed = now - self._at
        if elapsed < self.interval_s:
            return
        if (counters.written, counters.invalid) != (self._written, self._invalid):
            log.info(
                "consume: %.0f records/s over %.0fs; %s",
                (counters.written - self._written) / elapsed,
                elapsed,
                counters.line(),
            )
        self._at, self._written, self._invalid = now, counters.written, counters.invalid


async def _settle(action: Any) -> None:
    """Send one acknowledgement-type reply; a failure only means the message comes back."""
    import nats.errors

    try:
        await action()
    except nats.errors.Error as exc:
        log.debug("consume: acknowledgement not sent: %s", _describe(exc))


def _target_label(url: str) -> str:
    return redact_url(url) if "://" in url and "@" in url else url


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
