"""``auditgate import PATH... --to TARGET``: store record files — auditgate's and NVIDIA
Dynamo's — in a database (or a jsonl file), resumably and idempotently.

PATH: a ``jsonl`` file, a ``.jsonl.gz`` file, or a ``jsonl_gz`` segment prefix (``PREFIX`` for
``PREFIX.NNNNNN.jsonl.gz``); auditgate's records and Dynamo's (0.x legacy audit records, 1.4+
``dynamo.request.trace.v1`` rows), detected per line unless ``--input-format`` names one.
TARGET: as for ``auditgate consume`` (``sqlite:///…``, ``postgresql://…``, ``jsonl:///…``).
``--state FILE`` (default ``.auditgate-import.json`` beside the first PATH) remembers what was
stored, so an interrupted import goes on where it stopped; the details are in
:mod:`auditgate.importer`.  Exit status: 0 done, 1 some lines were not records, 2 bad
arguments (a PATH that is nothing, a bad TARGET), 3 a target write failed — nothing is retried
then: what was stored is in the state file, and a rerun goes on from there.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from auditgate.cli.main import plain
from auditgate.consumer import open_target
from auditgate.dynamo import InputFormat, parse_input_format
from auditgate.errors import ConfigError, SinkError
from auditgate.importer import ImportCounters, Importer, ProgressBar, State, expand

log = logging.getLogger("auditgate.import")

EXIT_OK: Final = 0
EXIT_INVALID: Final = 1
EXIT_CONFIG: Final = 2
EXIT_TARGET: Final = 3


async def run_import(args: argparse.Namespace) -> ImportCounters:
    files = expand(args.paths)
    state_path = (
        Path(args.state) if args.state else Path(args.paths[0]).parent / ".auditgate-import.json"
    )
    state = State(None if args.no_state else state_path)
    target = open_target(args.to)
    tty = sys.stderr.isatty() if args.progress is None else args.progress
    bar = ProgressBar(sys.stderr, tty=tty)
    importer = Importer(
        files,
        target,
        state=state,
        input_format=parse_input_format(args.input_format),
        batch=args.batch,
        progress=bar,
    )
    await target.open()
    try:
        counters = await importer.run()
    finally:
        await target.close()
    bar(1, 1, counters, final=True)
    return counters


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import",
        help="store auditgate or NVIDIA Dynamo record files in a database",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="file or segment prefix")
    parser.add_argument(
        "--to", required=True, metavar="TARGET", help="sqlite:///…, postgresql://… or jsonl:///…"
    )
    parser.add_argument(
        "--input-format",
        default="auto",
        choices=("auto", *(f.value for f in InputFormat)),
        help="record format of the lines (default: detected per line)",
    )
    parser.add_argument("--batch", type=int, default=512, help="records per write (default 512)")
    parser.add_argument(
        "--state", help="resume file (default .auditgate-import.json beside the first PATH)"
    )
    parser.add_argument("--no-state", action="store_true", help="do not resume nor remember")
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        action="store_const",
        const=True,
        default=None,
        help="draw a progress bar (default: on a terminal)",
    )
    bar.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="log progress lines instead",
    )


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    if args.batch < 1:
        log.error("import: --batch %d: must be >= 1", args.batch)
        return EXIT_CONFIG
    try:
        counters = asyncio.run(run_import(args))
    except ConfigError as exc:
        log.error("import: %s", exc)
        return EXIT_CONFIG
    except SinkError as exc:
        log.error("import: target %s: %s", args.to, exc)
        return EXIT_TARGET
    log.info("import: done; %s", counters.line())
    return EXIT_INVALID if counters.invalid else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="auditgate import",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
