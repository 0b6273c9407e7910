"""Reading the captured Dynamo fixtures (``tests/fixtures/dynamo/<version>``, made by
``bench/dynamo_capture.py``)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent / "fixtures" / "dynamo"
VERSIONS = ("0.7.1", "1.6.1")


def answers(version: str) -> list[dict[str, Any]]:
    """What the client sent and got, per request, in order."""
    return _jsonl((ROOT / version / "answers.jsonl").read_text())


def messages(version: str) -> list[Any]:
    """Every NATS message Dynamo published, decoded, in stream order."""
    return [json.loads(m["data"]) for m in _jsonl((ROOT / version / "nats.jsonl").read_text())]


def file_lines(version: str) -> dict[str, list[Any]]:
    """Every line of every file Dynamo wrote, decoded, per file name (segments in order)."""
    files = ROOT / version / "files"
    out: dict[str, list[Any]] = {}
    for path in sorted(files.iterdir()) if files.exists() else []:
        data = path.read_bytes()
        text = gzip.decompress(data).decode() if path.suffix == ".gz" else data.decode()
        out[path.name] = _jsonl(text)
    return out


def content(answer: dict[str, Any]) -> list[str | None]:
    """The text of each choice the client got."""
    return [choice["message"].get("content") for choice in answer["response"]["choices"]]


def _jsonl(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
