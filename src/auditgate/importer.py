"""The file importer behind ``auditgate import``: read record files, convert, write, remember.

Inputs: auditgate's ``jsonl`` files and ``jsonl_gz`` segments, and NVIDIA Dynamo's (the legacy
0.x records, and 1.4+'s ``dynamo.request.trace.v1`` rows, bare or in Dynamo's file wrapping
``{"timestamp", "event"}``).  A PATH is a file (gzip or not, told by its first bytes) or a
segment prefix: ``PREFIX.NNNNNN.jsonl.gz`` files, taken in number order.  Every line goes
through one :class:`~auditgate.dynamo.DynamoReader`, so a request's two rows are joined also
across segments; rows still waiting at the end are stored alone.

Resume and idempotence: after each committed batch the position up to which everything is
stored (the earliest line of a row still waiting for its partner, or the current line) is saved
in the state file, per input file (keyed by path, size and modification time, so a file that
changed is read again from its start).  A rerun skips what was committed and goes on; the
``sqlite`` and ``postgres`` targets are idempotent on ``request_id``, so reading a line twice
stores it once (a ``jsonl`` target is at-least-once across an interrupted run).

A line that is not a record is counted (``invalid``) and logged (rate-limited), never fatal; a
segment cut off mid-member (a writer that died) is read up to its last complete line, and that is
logged too.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final

import msgspec

from auditgate.audit.record import Envelope
from auditgate.audit.sink import Sink
from auditgate.dynamo import Converted, DynamoReader, InputFormat
from auditgate.errors import UNDECODABLE, ConfigError
from auditgate.logs import RateLimitedLog

log = logging.getLogger("auditgate.import")

_SEGMENT: Final = re.compile(r"\.(\d+)\.jsonl\.gz$")
Position = tuple[int, int]
"""(index of the input file, line number in it, from 1)."""


@dataclasses.dataclass(slots=True)
class ImportCounters:
    """What one run did; the summary prints every field."""

    lines: int = 0
    """Lines read (skipped ones of a resumed run not included)."""
    written: int = 0
    """Records written to the target (a re-read record counts again)."""
    invalid: int = 0
    """Lines that were not records."""
    files: int = 0
    """Input files read to their end."""

    def line(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))


def expand(paths: Sequence[str]) -> list[Path]:
    """The input files: each PATH itself, or the ``PATH.NNNNNN.jsonl.gz`` segments it prefixes
    (in number order); ConfigError naming a PATH that is neither."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
            continue
        segments = [
            (int(m.group(1)), p)
            for p in path.parent.glob(path.name + ".*.jsonl.gz")
            if (m := _SEGMENT.search(p.name)) and p.name[: m.start()] == path.name
        ]
        if not segments:
            raise ConfigError(f"{raw!r}: no such file, nor PREFIX.NNNNNN.jsonl.gz segments")
        files += [p for _, p in sorted(segments)]
    return files


class State:
    """The resume file: per input file, the line up to which everything is stored."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._done: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            try:
                self._done = json.loads(path.read_text())["files"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"--state {str(path)!r}: not an import state file: {exc}"
                ) from None

    def skip(self, file: Path) -> int:
        """Lines of ``file`` already stored by an earlier run: 0 if none or it changed since,
        -1 if all of it."""
        entry = self._done.get(str(file.resolve()))
        return int(entry["line"]) if entry is not None and entry["id"] == _identity(file) else 0

    def save(self, files: Sequence[Path], safe: Position) -> None:
        """Record that everything before ``safe`` is stored (atomically)."""
        if self.path is None:
            return
        index, line = safe
        for i, file in enumerate(files[: index + 1]):
            done = line - 1 if i == index else -1  # -1: the whole file
            self._done[str(file.resolve())] = {"id": _identity(file), "line": done}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"files": self._done}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


class Importer:
    """Reads the files, converts their lines and writes them to ``target`` in batches."""

    def __init__(
        self,
        files: Sequence[Path],
        target: Sink,
        *,
        state: State,
        input_format: InputFormat | None = None,
        batch: int = 512,
        progress: Callable[[int, int, ImportCounters], None] | None = None,
    ) -> None:
        self.files = files
        self.target = target
        self.state = state
        self.batch = batch
        self.progress = progress
        self.counters = ImportCounters()
        self.reader: DynamoReader[Position] = DynamoReader(
            forced=input_format, timeout_s=float("inf"), max_pending=100_000
        )
        self._log = RateLimitedLog()
        self._pending: list[Converted[Position]] = []
        self._total = sum(f.stat().st_size for f in files)
        self._read = 0

    async def run(self) -> ImportCounters:
        for index, file in enumerate(self.files):
            skip = self.state.skip(file)
            if skip < 0:
                self._read += file.stat().st_size
                continue
            for line_no, line in self._lines(file, skip):
                self._feed(line, (index, line_no))
                if len(self._pending) >= self.batch:
                    await self._flush((index, line_no + 1))
            self.counters.files += 1
            await self._flush((index + 1, 1))
        self._pending += self.reader.drain()
        await self._flush((len(self.files), 1))
        return self.counters

    def _lines(self, file: Path, skip: int) -> Iterator[tuple[int, bytes]]:
        with file.open("rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream: Iterator[bytes] = gzip.GzipFile(fileobj=raw) if gz else raw
            line_no, last = 0, 0
            try:
                for line_no, line in enumerate(stream, 1):
                    self._advance(raw.tell() - last)
                    last = raw.tell()
                    if line_no > skip and line.strip():
                        yield line_no, line
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                self._log.warning(
                    "cut:" + str(file),
                    "import: %s ends in a cut-off gzip member after line %d (%s); read up to it",
                    file,
                    line_no,
                    exc,
                )
            self._advance(raw.tell() - last)

    def _feed(self, line: bytes, position: Position) -> None:
        self.counters.lines += 1
        try:
            self._pending += self.reader.feed(msgspec.json.decode(line), position)
        except (*UNDECODABLE, ValueError, KeyError, TypeError) as exc:
            self.counters.invalid += 1
            self._log.warning(
                "invalid",
                "import: %s line %d is not a record: %s",
                self.files[position[0]],
                position[1],
                exc,
            )

    async def _flush(self, upto: Position) -> None:
        """Write what is ready; save the position before which everything is stored."""
        ready, self._pending = _unique(self._pending), []
        if ready:
            await self.target.write([Envelope(c.record) for c in ready])
            self.counters.written += len(ready)
        waiting = self.reader.waiting_tokens()
        self.state.save(self.files, min([upto, *waiting]))

    def _advance(self, count: int) -> None:
        self._read += count
        if self.progress is not None:
            self.progress(self._read, self._total, self.counters)


def _unique(items: list[Converted[Position]]) -> list[Converted[Position]]:
    seen: dict[str, Converted[Position]] = {}
    for item in items:
        seen.setdefault(item.record.request_id, item)
    return list(seen.values())


def _identity(file: Path) -> str:
    stat = file.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


class ProgressBar:
    """A one-line progress bar on a terminal (at most 10 redraws a second); elsewhere a log
    line every ``interval_s``."""

    def __init__(self, out: IO[str], *, tty: bool, interval_s: float = 10.0) -> None:
        self.out = out
        self.tty = tty
        self.interval_s = interval_s if not tty else 0.1
        self._at = 0.0
        self._started = time.monotonic()

    def __call__(
        self, done: int, total: int, counters: ImportCounters, final: bool = False
    ) -> None:
        now = time.monotonic()
        if not final and now - self._at < self.interval_s:
            return
        self._at = now
        share = done / total if total else 1.0
        rate = counters.written / max(now - self._started, 1e-9)
        text = f"{share:6.1%} {counters.written} records ({rate:,.0f}/s) invalid={counters.invalid}"
        if self.tty:
            bar = "#" * int(share * 30)
            self.out.write(f"\r[{bar:<30}] {text}" + ("\n" if final else ""))
            self.out.flush()
        else:
            log.info("import: %s", text)
