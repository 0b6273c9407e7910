"""``auditgate export``: stored completions as JSONL datasets.

Formats (one JSON object a line):

- ``finetune`` — OpenAI's chat fine-tuning format: ``{"messages": request messages + the
  assistant message (tool calls kept), "tools": request tools (when any),
  "parallel_tool_calls": (when the request set it)}``.
- ``eval`` — ``{"input": request messages, "reference": assistant message}``.
- ``raw`` — the audit record as stored (every mode, not only ``full``).

Legacy completions (``endpoint: "completions"``) export as prompt/completion pairs: ``finetune``
``{"prompt", "completion"}`` (OpenAI's legacy fine-tuning format), ``eval`` ``{"input",
"reference"}``; one line per prompt of the request (its first choice), the echoed prompt taken
off the completion; token-id prompts have no text and are skipped.  Embeddings records hold no
completion: they count in ``stats`` and in ``raw``, never in ``finetune`` or ``eval``.  A store
holding chat and legacy completions mixes the two formats; ``--endpoint`` picks one.

A stored Responses API conversation (``endpoint: "responses"``) is a chat example: the
conversation up to each turn (its ``previous_response_id`` chain, read from the store) and that
turn's answer (:mod:`auditgate.endpoints.responses.dataset`); from an ``s3://`` lake, which
cannot be looked up by id, a turn's example holds that turn only.

``finetune`` and ``eval`` read stored completions only (``mode='full'`` with a response) and skip
records without an assistant message.  Completions deleted through the API (tombstones the store
keeps for the audit trail) are left out unless ``--include-deleted`` is given — the same rule,
flag and default as ``auditgate stats``, so both describe the same records.
Rows stream from the store in ``(created_at, request_id)`` order a chunk at a time, so memory
stays flat whatever the table's size (``--dedupe`` keeps one 16-byte digest per distinct
prompt) and two exports of the same data are byte-identical.  On a terminal, a progress line is
written to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any, Final

import msgspec

from auditgate.audit.verify import SourceError
from auditgate.datasets import Lookup, responses_line, to_lines
from auditgate.endpoints.responses.stored import RecentResponses, StoredResponses
from auditgate.errors import ConfigError, ServiceUnavailableError
from auditgate.store.queries import Filter
from auditgate.store.schema import record_dict_from_row
from auditgate.store.url import open_store

FORMATS: Final = ("finetune", "eval", "raw")
ENDPOINTS: Final = ("chat.completions", "responses", "completions", "embeddings")
_encoder: Final = msgspec.json.Encoder()
# Prompts compare by content, whatever their keys' order (PostgreSQL's JSONB reorders keys).
_canonical: Final = msgspec.json.Encoder(order="sorted")


def add_store_options(p: argparse.ArgumentParser) -> None:
    """``--store``, ``--since``, ``--until``, ``--include-deleted``: shared by ``export`` and
    ``stats``, so both select records by the same rules."""
    p.add_argument(
        "--store",
        default=os.environ.get("AUDITGATE_STORE_URL"),
        help="sqlite:///PATH, a file path, postgresql://..., or (export) an s3://bucket/prefix "
        "lake (default: $AUDITGATE_STORE_URL, else serve's SQLite store: "
        "$DYN_AUDIT_SQLITE_PATH, else ./auditgate.db)",
    )
    p.add_argument("--since", type=parse_time, help="from this time: ISO 8601 or Unix ms")
    p.add_argument("--until", type=parse_time, help="before this time: ISO 8601 or Unix ms")
    p.add_argument(
        "--include-deleted",
        action="store_true",
        help="also completions deleted through the API (the store keeps them as tombstones); "
        "by default they are left out, as the API leaves them out",
    )


def parse_time(text: str) -> int:
    """Unix milliseconds of ``text``: an integer (ms) or ISO 8601 (naive means UTC)."""
    if text.strip().lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither ISO 8601 nor Unix milliseconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


DEFAULT_STORE: Final = "./auditgate.db"
"""Where ``serve`` stores by default (its ``sqlite`` sink's ``DYN_AUDIT_SQLITE_PATH``)."""


def store_url(args: argparse.Namespace, command: str) -> str:
    """``--store``, else ``AUDITGATE_STORE_URL`` (the flag's default), else the store ``serve``
    writes by default: ``DYN_AUDIT_SQLITE_PATH``, else :data:`DEFAULT_STORE`."""
    if args.store:
        return str(args.store)
    return os.environ.get("DYN_AUDIT_SQLITE_PATH", "").strip() or DEFAULT_STORE


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write stored completions as a JSONL dataset")
    add_store_options(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="line format")
    p.add_argument("--model", help="only this model")
    p.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only records with this metadata pair (repeatable; all must match)",
    )
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--endpoint", choices=ENDPOINTS, help="only records of this endpoint")
    p.add_argument("--status", choices=("completed", "cancelled", "error"), help="only this status")
    p.add_argument("--dedupe", action="store_true", help="keep the first of identical prompts")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        where = Filter(
            tenant=args.tenant,
            model=args.model,
            metadata=parse_pairs(args.metadata),
            since_ms=args.since,
            until_ms=args.until,
            status=args.status,
            endpoint=args.endpoint,
            stored_only=args.format != "raw",
            live_only=not args.include_deleted,
        )
        url = store_url(args, "export")
        with _output(args.output) as out:
            written, skipped = asyncio.run(export(url, where, args.format, out, args.dedupe))
    except (ConfigError, ServiceUnavailableError, SourceError, OSError) as exc:
        print(f"auditgate export: {exc}", file=sys.stderr)
        return 2
    print(f"auditgate export: {written} line(s) written, {skipped} skipped", file=sys.stderr)
    return 0


def parse_pairs(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` items as a dict; a ConfigError for an item without ``=``."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--metadata {item!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


async def export(url: str, where: Filter, fmt: str, out: IO[str], dedupe: bool) -> tuple[int, int]:
    """Write every matching record as a ``fmt`` line to ``out``; ``(written, skipped)``."""
    progress = _Progress(sys.stderr)
    seen: set[bytes] = set()
    written = skipped = 0
    try:
        async with _records(url, where) as (records, lookup):
            async for record in records:
                if record.get("endpoint") == "responses" and fmt != "raw":
                    line = await responses_line(record, fmt, lookup)
                    lines = [] if line is None else [line]
                else:
                    lines = to_lines(record, fmt)
                if dedupe:
                    lines = [line for line in lines if first_prompt(line, fmt, seen)]
                if not lines:
                    skipped += 1
                for line in lines:
                    out.write(_encoder.encode(line).decode() + "\n")
                    written += 1
                progress.update(written, skipped)
    finally:
        progress.done(written, skipped)
    return written, skipped


def first_prompt(line: dict[str, Any], fmt: str, seen: set[bytes]) -> bool:
    """Whether ``line``'s prompt is not in ``seen`` (which then holds it): ``--dedupe``."""
    digest = hashlib.blake2b(_canonical.encode(prompt_of(line, fmt)), digest_size=16).digest()
    if digest in seen:
        return False
    seen.add(digest)
    return True


@contextlib.asynccontextmanager
async def _records(
    url: str, where: Filter
) -> AsyncIterator[tuple[AsyncIterator[dict[str, Any]], Lookup]]:
    """The records ``where`` selects at ``url`` (a store, or an ``s3://`` lake), in
    ``(created_at, request_id)`` order, and the stored responses of the same store."""
    if url.startswith("s3://"):
        from auditgate.store.lake import LakeReader

        async with LakeReader(url) as reader:
            yield reader.records(where), None
        return
    store = open_store(url, must_exist=True)
    await store.open()
    try:
        lookup = StoredResponses(store, RecentResponses(ttl_s=0))
        yield (record_dict_from_row(row) async for row in store.scan(where)), lookup
    finally:
        await store.close()


def prompt_of(line: dict[str, Any], fmt: str) -> Any:
    """What makes two lines "the same prompt" for ``--dedupe``."""
    if "prompt" in line and fmt == "finetune":
        return line["prompt"]  # a legacy completion pair
    if fmt == "finetune":
        return [line["messages"][:-1], line.get("tools")]
    if fmt == "eval":
        return line["input"]
    request = line.get("request") if isinstance(line.get("request"), dict) else {}
    assert isinstance(request, dict)
    if line.get("endpoint") == "responses":
        prompt = [request.get("instructions"), request.get("input")]
        return [*prompt, request.get("previous_response_id"), request.get("tools")]
    return [request.get("messages"), request.get("tools"), line.get("model")]


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        yield out


class _Progress:
    """A progress line on stderr, redrawn at most 10 times a second, only on a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = self.last = time.monotonic()

    def update(self, written: int, skipped: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.1:
            self.last = now
            self._draw(written, skipped, now)

    def done(self, written: int, skipped: int) -> None:
        if self.enabled:
            self._draw(written, skipped, time.monotonic())
            self.stream.write("\n")

    def _draw(self, written: int, skipped: int, now: float) -> None:
        rate = (written + skipped) / max(now - self.started, 1e-9)
        self.stream.write(f"\rexport: {written} written, {skipped} skipped ({rate:,.0f} rows/s)")
        self.stream.flush()
