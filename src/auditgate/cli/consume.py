"""``auditgate consume``: move audit records from a JetStream stream into a database or a file.

``auditgate consume --nats-url URL --subject S --stream NAME --durable NAME --to TARGET``, TARGET
one of ``sqlite:///relative.db`` / ``sqlite:////absolute.db``, ``postgresql://...`` and
``jsonl:///relative.jsonl`` / ``jsonl:////absolute.jsonl``.  Records are written through the same
sink classes the gateway uses, so the target holds exactly what a gateway sink would have stored;
the ``jsonl`` target writes each message's payload bytes as they are (the gateway's ``jsonl``
line).

Delivery:

- A durable JetStream *pull* consumer named ``--durable``: batches of up to ``--batch`` messages
  are fetched, decoded, written to the target in one write, and acknowledged only after that write
  returned (committed).  Several processes with the same durable name share the work: each message
  goes to one of them.
- A message that is not a valid record is logged, counted (``invalid``) and terminated (``AckTerm``:
  never redelivered); it never stops the stream.
- A failed target write is retried in place with capped exponential backoff, the batch kept
  "in progress" on the server meanwhile, so nothing is acknowledged that is not stored.
- A process killed between commit and acknowledgement gets its batch redelivered (to itself or
  another instance) after ``--ack-wait``; the ``sqlite`` and ``postgres`` targets are idempotent on
  ``request_id``, so the replay adds no rows.  A ``jsonl`` target is only at-least-once across such
  a crash (a file cannot tell which lines it already has), and its "commit" is the write to the
  operating system, not an fsync: a machine crash can lose the last acknowledged batches.
- Resume: a durable consumer remembers what was acknowledged, so a restarted process continues
  where the durable left off.  ``--from-start`` (deliver all, the default) or ``--new-only``
  (deliver only records published after creation) apply only when the durable is *created*; for an
  existing durable they are ignored (logged).  Use a new durable name to start over.
- The stream is created when missing, exactly as the ``nats`` sink creates it, so consumers and
  gateways may start in any order.  A NATS server that is down at start or later is waited for
  (reconnecting forever); a bad URL, a bad target, or a stream or durable that does not fit the
  subject is a startup error (exit status 2).
- SIGTERM / SIGINT: finish (commit and acknowledge) the current batch, then exit 0 with a summary
  line; a second signal abandons the batch at once (it is redelivered).  Progress (records/s,
  totals) is logged every ``--progress-interval`` seconds while records flow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from auditgate.audit.bus import RateLimitedLog
from auditgate.audit.record import AuditRecord, Envelope, decode_record
from auditgate.audit.sink import Sink
from auditgate.config import AuditSettings, Env
from auditgate.errors import ConfigError
from auditgate.sinks.nats import (
    ensure_stream,
    redact_url,
    validate_stream_name,
    validate_subject,
    validate_url,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

log = logging.getLogger("auditgate.consume")

MAX_BACKOFF_S: Final = 5.0
EXIT_OK: Final = 0
EXIT_ABANDONED: Final = 1
EXIT_CONFIG: Final = 2


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


def open_target(url: str) -> Sink:
    """The sink a TARGET URL names (not opened yet); ConfigError for anything else."""
    for scheme in ("sqlite", "jsonl"):
        prefix = scheme + ":///"
        if url.startswith(prefix) and len(url) > len(prefix):
            path = url[len(prefix) :]
            if scheme == "sqlite":
                from auditgate.sinks.sqlite import SqliteSink

                return SqliteSink(path)
            from auditgate.sinks.jsonl import JsonlSink

            return JsonlSink(path)
    if url.startswith(("postgresql://", "postgres://")):
        from auditgate.sinks.postgres import PostgresSink

        return PostgresSink(url)
    raise ConfigError(
        f"--to {redact_url(url)!r}: expected sqlite:///PATH, postgresql://... or jsonl:///PATH "
        "(three slashes and a relative path, or four for an absolute one)"
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
                self.options.nats_url,
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
        import nats.errors

        envelopes: list[Envelope] = []
        seen: set[str] = set()
        valid: list[Msg] = []
        for msg in msgs:
            if msg.metadata.num_delivered > 1:
                self.counters.redelivered += 1
            raw = msg.data.strip()
            try:
                record = decode_record(raw)
            except msgspec.DecodeError as exc:
                self.counters.invalid += 1
                self._log.warning(
                    "invalid",
                    "consume: message %s is not an audit record, terminated: %s",
                    msg.metadata.sequence.stream,
                    exc,
                )
                await _settle(msg.term)
                continue
            valid.append(msg)
            if record.request_id in seen:
                continue
            seen.add(record.request_id)
            # A payload with raw newlines (not ours) would break a jsonl target: re-encode it.
            envelopes.append(
                ReceivedEnvelope(record, raw) if b"\n" not in raw else Envelope(record)
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


def options_from_args(args: argparse.Namespace) -> ConsumeOptions:
    """Validate the flags; ConfigError names the bad one."""
    validate_url(args.nats_url)
    validate_subject(args.subject)
    validate_stream_name(args.stream)
    if not args.durable or any(c in ".*>/\\" or c.isspace() for c in args.durable):
        raise ConfigError(f"--durable {args.durable!r}: no '.', '*', '>', slashes or spaces")
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: must be >= 1")
    for flag, value in (("--ack-wait", args.ack_wait), ("--fetch-wait", args.fetch_wait)):
        if value <= 0:
            raise ConfigError(f"{flag} {value}: must be > 0")
    return ConsumeOptions(
        nats_url=args.nats_url,
        subject=args.subject,
        stream=args.stream,
        durable=args.durable,
        target=args.to,
        batch=args.batch,
        deliver_all=not args.new_only,
        ack_wait_s=args.ack_wait,
        fetch_wait_s=args.fetch_wait,
        progress_interval_s=args.progress_interval,
    )


async def consume(options: ConsumeOptions) -> Counters:
    """Run one consumer until SIGTERM/SIGINT; ConfigError for a bad target, stream or durable."""
    target = open_target(options.target)
    stop = asyncio.Event()
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set() and main is not None:
            log.warning(
                "consume: second %s: abandoning the current batch", signal.Signals(signum).name
            )
            main.cancel()
            return
        log.info("consume: %s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await target.open()
        try:
            return await Consumer(options, target, stop).run()
        finally:
            await target.close()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def register(subparsers: Any) -> None:
    """Add the ``consume`` subcommand to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "consume",
        help="move audit records from NATS JetStream into a database or file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env, defaults = Env(), AuditSettings()
    parser.add_argument(
        "--nats-url",
        default=env.text("DYN_AUDIT_NATS_URL", defaults.nats_url),
        help="NATS server (DYN_AUDIT_NATS_URL, default %(default)s)",
    )
    parser.add_argument(
        "--subject",
        default=env.text("DYN_AUDIT_NATS_SUBJECT", defaults.nats_subject),
        help="subject records are published on (DYN_AUDIT_NATS_SUBJECT, default %(default)s)",
    )
    parser.add_argument(
        "--stream",
        default=env.text("DYN_AUDIT_NATS_STREAM", defaults.nats_stream),
        help="JetStream stream, created if missing (DYN_AUDIT_NATS_STREAM, default %(default)s)",
    )
    parser.add_argument(
        "--durable", required=True, help="durable consumer name; instances sharing it share work"
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="TARGET",
        help="sqlite:///PATH, postgresql://... or jsonl:///PATH (four slashes: absolute path)",
    )
    parser.add_argument(
        "--batch", type=int, default=256, help="messages per fetch/write/ack (default 256)"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from-start",
        action="store_true",
        help="a new durable delivers the whole stream (default)",
    )
    start.add_argument(
        "--new-only",
        action="store_true",
        help="a new durable delivers only records published after it was created",
    )
    parser.add_argument(
        "--ack-wait",
        type=float,
        default=30.0,
        help="a new durable redelivers unacknowledged messages after this many seconds (30)",
    )
    parser.add_argument(
        "--fetch-wait",
        type=float,
        default=1.0,
        help="longest wait of one fetch, in seconds (default 1)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="seconds between progress lines while records flow (default 10)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level (default info)",
    )


def run(args: argparse.Namespace) -> int:
    """The ``consume`` command: exit 0 after a clean stop, 1 when a second signal abandoned the
    current batch, 2 for a configuration error."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    try:
        options = options_from_args(args)
        asyncio.run(consume(options))
    except ConfigError as exc:
        log.error("consume: %s", exc)
        return EXIT_CONFIG
    except asyncio.CancelledError:
        # A second signal abandoned the batch (it will be redelivered); the summary is logged.
        return EXIT_ABANDONED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="auditgate consume",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
