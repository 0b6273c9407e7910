"""``auditgate verify SOURCE``: check the integrity chain of an audit trail, per writer.

SOURCE is one of

- a ``jsonl`` file (``path.jsonl`` or ``jsonl:///path``);
- a ``jsonl_gz`` segment set: the sink's prefix (``DYN_AUDIT_OUTPUT_PATH``), one segment, or
  ``jsonl_gz:///prefix`` — every ``<prefix>.NNNNNN.jsonl.gz`` in number order;
- a SQLite store (``sqlite:///path.db`` or a ``.db`` / ``.sqlite`` path);
- a PostgreSQL store (``postgresql://...``);
- a NATS JetStream stream (``nats://host:port`` with ``--stream``, default ``DYNAMO_AUDIT``);
- an ``s3`` sink's lake (``s3://bucket/prefix``; server and credentials as the sink's).

Stores hold rows the stored-completions API deleted (a tombstone), so the chain stays complete.
In a store, every column computed from the record (token counts, response id, SQLite's metadata
side table, ...) is checked against the record too, and one that differs is reported as
``column_mismatch`` naming it; metadata replaced through the API is a ``metadata_updated``
warning (:mod:`auditgate.store.trail`).  Files keep publish order, so for them a record after a
later one of its writer is reported as ``reordered``; databases and streams have no such order
and are checked by ``seq`` only.

Checkpoint signatures are checked with the key in ``$DYN_AUDIT_INTEGRITY_KEY`` (or the variable
``--key-env`` names, or ``--key-file``); never pass a key on the command line.  Without a key,
signatures are reported ``unverified`` and do not fail.

Exit code: 0 when every writer's chain is intact, 1 when anything is damaged (see
:data:`~auditgate.audit.verify.DAMAGE`), 2 when the source cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from auditgate.audit.integrity import HmacSigner
from auditgate.audit.verify import Report, SourceError, Verifier, WriterReport
from auditgate.errors import ConfigError
from auditgate.store.trail import read_postgres, read_sqlite
from auditgate.trails import (
    FORMATS,
    detect,
    read_jsonl,
    read_jsonl_gz,
    read_lake,
    read_nats,
)


def verify(
    source: str,
    *,
    fmt: str | None = None,
    signer: HmacSigner | None = None,
    live: bool = False,
    stream: str = "DYNAMO_AUDIT",
) -> Report:
    """Read the whole trail at ``source`` and verify it; SourceError if it cannot be read."""
    detected, location = detect(source)
    kind = fmt or detected
    verifier = Verifier(signer=signer, ordered=kind in ("jsonl", "jsonl_gz"), live=live)
    if kind == "jsonl":
        read_jsonl(verifier, location)
    elif kind == "jsonl_gz":
        read_jsonl_gz(verifier, location)
    elif kind == "sqlite":
        read_sqlite(verifier, location)
    elif kind == "postgres":
        asyncio.run(read_postgres(verifier, location))
    elif kind == "s3":
        asyncio.run(read_lake(verifier, location))
    else:
        asyncio.run(read_nats(verifier, location, stream))
    return verifier.report()


def text(report: Report) -> str:
    """The report for a terminal: one line per writer, one per finding."""
    lines: list[str] = []
    for w in report.writers:
        span = f"seq {w.first_seq}..{w.last_seq}"
        sealed = (
            "no checkpoint"
            if w.last_checkpoint_seq is None
            else f"last checkpoint seq {w.last_checkpoint_seq}" + _finality(w)
        )
        verdict = "INTACT" if w.intact else "DAMAGED"
        lines.append(f"{verdict}  writer {w.writer}: {w.records} record(s), {span}, {sealed}")
        for f in w.findings:
            where = f" at {f.location}" if f.location else ""
            rid = f" request_id={f.request_id}" if f.request_id else ""
            tag = f.kind if f.damage else f"{f.kind} (warning)"
            if f.column is not None:
                tag += f" [{f.column}]"
            lines.append(f"  {tag}: seq {f.seq}{where}{rid}: {f.detail}")
    for f in report.invalid:
        lines.append(f"DAMAGED  invalid entry at {f.location}: {f.detail}")
    if not report.writers and not report.invalid:
        lines.append("no records")
    lines.append("intact" if report.intact else "NOT intact")
    return "\n".join(lines)


def _finality(writer: WriterReport) -> str:
    if writer.sealed_by is not None:  # its process died; a restarted gateway sealed it
        return f" ({'final, ' if writer.final else ''}sealed on recovery by {writer.sealed_by})"
    return " (final)" if writer.final else ""


def signer_from(args: argparse.Namespace) -> HmacSigner | None:
    """The checkpoint key from ``--key-file`` or the environment variable ``--key-env``."""
    if args.key_file:
        try:
            key = Path(args.key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--key-file {args.key_file}: cannot read: {exc}") from exc
        if not key:
            raise ConfigError(f"--key-file {args.key_file}: empty")
        return HmacSigner(key)
    key = os.environ.get(args.key_env, "").strip()
    return HmacSigner(key) if key else None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check the integrity chain of an audit trail (file, segments, store, stream)",
        description="Exit 0 only when every writer's chain is intact.",
    )
    p.add_argument(
        "source",
        help="jsonl file, jsonl_gz prefix, sqlite:///db, postgresql://, nats://, s3://bucket/prefix",
    )
    p.add_argument("--format", choices=FORMATS, help="source format (default: from SOURCE)")
    p.add_argument("--stream", default="DYNAMO_AUDIT", help="JetStream stream (nats sources)")
    p.add_argument(
        "--key-env",
        default="DYN_AUDIT_INTEGRITY_KEY",
        help="environment variable holding the checkpoint key (default: %(default)s)",
    )
    p.add_argument("--key-file", help="file holding the checkpoint key (instead of --key-env)")
    p.add_argument(
        "--live",
        action="store_true",
        help="writers may still be running: records after the last checkpoint are warnings",
    )
    p.add_argument("--json", action="store_true", help="JSON report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        signer = signer_from(args)
        report = verify(
            args.source, fmt=args.format, signer=signer, live=args.live, stream=args.stream
        )
    except (ConfigError, SourceError) as exc:
        print(f"auditgate verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(text(report))
    return 0 if report.intact else 1
