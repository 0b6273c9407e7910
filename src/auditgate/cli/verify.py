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
import gzip
import json
import os
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from auditgate.audit.integrity import HmacSigner
from auditgate.audit.verify import Report, SourceError, Verifier, WriterReport
from auditgate.cli.consumer import jsonl_path
from auditgate.errors import UNDECODABLE, ConfigError
from auditgate.store.trail import read_postgres, read_sqlite

FORMATS: Final = ("jsonl", "jsonl_gz", "sqlite", "postgres", "nats", "s3")
_SEGMENT: Final = re.compile(r"\.(\d+)\.jsonl\.gz$")


def detect(source: str) -> tuple[str, str]:
    """``(format, location)`` of a SOURCE argument (see the module docstring)."""
    scheme, sep, rest = source.partition("://")
    if sep:
        if scheme in ("postgresql", "postgres"):
            return "postgres", source
        if scheme in ("nats", "tls"):
            return "nats", source
        if scheme == "sqlite":
            return "sqlite", rest[1:] if rest.startswith("/") else rest
        if scheme == "jsonl":
            path = jsonl_path(source)
            assert path is not None
            return scheme, path
        if scheme == "jsonl_gz":
            return scheme, rest
        if scheme == "s3":
            return "s3", source
        raise ConfigError(f"unknown source scheme {scheme!r}; expected one of {FORMATS}")
    if source.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite", source
    if source.endswith(".gz") or (not Path(source).is_file() and segments(source)):
        return "jsonl_gz", source
    return "jsonl", source


def segments(prefix: str) -> list[Path]:
    """The ``jsonl_gz`` segments of ``prefix`` (or the one segment named), in number order."""
    path = Path(prefix)
    if _SEGMENT.search(path.name) and path.is_file():
        return [path]
    base = path.name.removesuffix(".jsonl")
    found: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            name = candidate.name
            match = _SEGMENT.search(name)
            if match and name[: match.start()] == base:
                found.append((int(match.group(1)), candidate))
    return [p for _, p in sorted(found)]


def _lines(verifier: Verifier, name: str, lines: Iterator[bytes]) -> None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        location = f"{name}:{number}"
        try:
            data = msgspec.json.decode(line)
        except UNDECODABLE as exc:
            verifier.add(location, f"not JSON: {exc}")
            continue
        verifier.add(location, data)


def read_jsonl(verifier: Verifier, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            _lines(verifier, path, iter(handle))
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


def read_jsonl_gz(verifier: Verifier, prefix: str) -> None:
    files = segments(prefix)
    if not files:
        raise SourceError(f"no jsonl_gz segments for {prefix!r}")
    for path in files:
        try:
            with gzip.open(path, "rb") as handle:
                _lines(verifier, str(path), iter(handle))
        except (OSError, EOFError, zlib.error) as exc:
            # A torn last member: what came before it was verified; the damage is reported.
            verifier.add(f"{path}:end", f"unreadable gzip data: {exc}")


async def read_lake(verifier: Verifier, url: str) -> None:
    """Every entry of every object of the lake at ``url``; a copy of a record in a second
    object (a replayed batch) is a ``duplicate`` warning."""
    from auditgate.store.lake import LakeReader

    async with LakeReader(url) as reader:
        async for location, entry in reader.entries():
            verifier.add(location, entry)


async def read_nats(verifier: Verifier, url: str, stream: str) -> None:
    import nats
    import nats.errors
    import nats.js.api
    import nats.js.errors

    from auditgate.sinks.nats import servers

    try:
        nc = await nats.connect(servers(url), connect_timeout=5, max_reconnect_attempts=0)
    except (OSError, nats.errors.Error) as exc:
        raise SourceError(f"cannot connect to NATS at {url}: {exc}") from exc
    try:
        js = nc.jetstream(timeout=10)
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError as exc:
            raise SourceError(f"no JetStream stream {stream!r}") from exc
        last = info.state.last_seq
        if not info.state.messages:
            return
        sub = await js.subscribe(
            ">",
            stream=stream,
            ordered_consumer=True,
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                seq = msg.metadata.sequence.stream
                try:
                    data = msgspec.json.decode(msg.data)
                except UNDECODABLE as exc:
                    data = f"not JSON: {exc}"
                verifier.add(f"stream seq {seq}", data)
                if seq >= last:
                    break
        finally:
            await sub.unsubscribe()
    except (nats.errors.Error, TimeoutError) as exc:
        raise SourceError(f"cannot read stream {stream!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        await nc.close()


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
