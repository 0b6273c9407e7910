"""Audit trails as ``auditgate verify`` reads them: every place a sink leaves records, read
record by record into a :class:`~auditgate.audit.verify.Verifier`.

- a ``jsonl`` file (``path.jsonl`` or ``jsonl:///path``, a file URL);
- a ``jsonl_gz`` segment set: the sink's prefix, one segment, or ``jsonl_gz:///prefix`` — every
  ``<prefix>.NNNNNN.jsonl.gz`` in number order;
- a SQLite or PostgreSQL store (:mod:`auditgate.store.trail`);
- a NATS JetStream stream;
- an ``s3`` sink's lake.

:func:`detect` tells which a SOURCE argument names.  A source that cannot be read raises
:class:`~auditgate.audit.verify.SourceError`; damage inside a readable source is handed to the
verifier, which reports it.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from auditgate.audit.verify import SourceError, Verifier
from auditgate.consumer import jsonl_path
from auditgate.errors import UNDECODABLE, ConfigError

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
