"""``auditgate consume``: move audit records from a JetStream stream into a database or a file.

``auditgate consume --nats-url URL --subject S --stream NAME --durable NAME --to TARGET``, TARGET
one of ``sqlite:///relative.db`` / ``sqlite:////absolute.db``, ``postgresql://...`` and
``jsonl:///absolute/path.jsonl`` (a file URL, read as ``file://`` and ``auditgate verify`` read
it).  Records are written through the same sink classes the gateway uses, so the target holds
exactly what a gateway sink would have stored;
the ``jsonl`` target writes each message's payload bytes as they are (the gateway's ``jsonl``
line).

Delivery:

- A durable JetStream *pull* consumer named ``--durable``: batches of up to ``--batch`` messages
  are fetched, decoded, written to the target in one write, and acknowledged only after that write
  returned (committed).  Several processes with the same durable name share the work: each message
  goes to one of them.
- Formats: auditgate's records and NVIDIA Dynamo's (the legacy audit record of 0.x on
  ``dynamo.audit.v1``, the ``dynamo.request.trace.v1`` rows of 1.4+ on
  ``dynamo.request_trace.v1``), detected per message (``--input-format`` forces one).  Dynamo's
  are converted (:mod:`auditgate.dynamo`); a request's payload and timing rows are joined into one
  record, a row being acknowledged only with the record it became; a row whose partner does not
  come within half the ack wait (at most 30 s) is stored alone, and one still waiting at a stop
  is handed back (``nak``) for the next run to join.
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
  subject is a startup error (exit status 3, as ``serve``'s; a bad flag is 2).
- Retention: ``--retention-days`` (``DYN_AUDIT_RETENTION_DAYS``) makes a database target delete
  old days' records at start and every hour, as a gateway's sink does; on PostgreSQL one process
  at a time (an advisory lock on the store; the others skip their turn).
- SIGTERM / SIGINT: finish (commit and acknowledge) the current batch, then exit 0 with a summary
  line; a second signal abandons the batch at once (it is redelivered).  Progress (records/s,
  totals) is logged every ``--progress-interval`` seconds while records flow.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, Final

from auditgate.cli.main import plain
from auditgate.config import AuditSettings, Env
from auditgate.consumer import ConsumeOptions, Consumer, Counters, open_target
from auditgate.dynamo import FormatError, InputFormat, parse_input_format
from auditgate.errors import ConfigError
from auditgate.sinks.nats import validate_stream_name, validate_subject, validate_url

log = logging.getLogger("auditgate.consume")

EXIT_OK: Final = 0
EXIT_ABANDONED: Final = 1
EXIT_CONFIG: Final = 2
"""A bad flag (as ``serve``'s bad settings)."""
EXIT_STARTUP: Final = 3
"""Could not start: the target, the stream or the durable does not fit (as ``serve``'s 3)."""


def options_from_args(args: argparse.Namespace) -> ConsumeOptions:
    """Validate the flags; ConfigError names the bad one."""
    validate_url(args.nats_url)
    validate_subject(args.subject)
    validate_stream_name(args.stream)
    if not args.durable or any(c in ".*>/\\" or c.isspace() for c in args.durable):
        raise ConfigError(f"--durable {args.durable!r}: no '.', '*', '>', slashes or spaces")
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: must be >= 1")
    retention_days = args.retention_days
    if retention_days is None:
        retention_days = Env().integer("DYN_AUDIT_RETENTION_DAYS", None, minimum=1)
    elif retention_days < 1:
        raise ConfigError(f"--retention-days {retention_days}: must be >= 1")
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
        input_format=parse_input_format(args.input_format),
        retention_days=retention_days,
    )


async def consume(options: ConsumeOptions) -> Counters:
    """Run one consumer until SIGTERM/SIGINT; ConfigError for a bad target, stream or durable."""
    target = open_target(options.target, retention_days=options.retention_days)
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
        description=plain(__doc__),
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
        help="sqlite:///PATH (four slashes: absolute), postgresql://... or jsonl:///ABSOLUTE/PATH",
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
        "--input-format",
        default="auto",
        choices=("auto", *(f.value for f in InputFormat)),
        help="record format of the messages: detected per message (auto, the default), or "
        "only auditgate's, Dynamo 0.x's legacy audit record, or Dynamo 1.4+'s "
        "dynamo.request.trace.v1 rows (others are terminated as invalid)",
    )
    parser.add_argument(
        "--retention-days",
        type=int,
        default=None,
        metavar="DAYS",
        help="a database target deletes records older than DAYS days, at start and every hour, "
        "as the gateway does (DYN_AUDIT_RETENTION_DAYS; default: keep every record)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level (default info)",
    )


def run(args: argparse.Namespace) -> int:
    """The ``consume`` command: exit 0 after a clean stop, 1 when a second signal abandoned the
    current batch, 2 for a bad flag, 3 when it could not start (a target, stream or durable that
    does not fit: ``serve``'s startup failure code)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    try:
        options = options_from_args(args)
        open_target(options.target)  # the URL only; nothing is opened yet
    except (ConfigError, FormatError) as exc:
        log.error("consume: %s", exc)
        return EXIT_CONFIG
    try:
        asyncio.run(consume(options))
    except (ConfigError, FormatError) as exc:
        log.error("consume: %s", exc)
        return EXIT_STARTUP
    except asyncio.CancelledError:
        # A second signal abandoned the batch (it will be redelivered); the summary is logged.
        return EXIT_ABANDONED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="auditgate consume",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
