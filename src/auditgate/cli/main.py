"""The ``auditgate`` command: serve, consume, import, keys, export, stats, retention, hold,
verify, ui."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

# Subcommand modules, imported only to register their parser; each exposes
# ``register(subparsers)`` which sets ``func`` (args -> exit code).
_COMMANDS = (
    "auditgate.cli.serve",
    "auditgate.cli.consume",
    "auditgate.cli.imports",
    "auditgate.cli.keys",
    "auditgate.cli.export",
    "auditgate.cli.stats",
    "auditgate.cli.retention",
    "auditgate.cli.verify",
    "auditgate.cli.ui",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditgate",
        description="OpenAI-compatible LLM gateway with a lossless audit pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"auditgate {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def version() -> str:
    """The installed distribution's version ("unknown" when run from a bare source tree)."""
    try:
        return importlib.metadata.version("auditgate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def plain(doc: str | None) -> str:
    """A module docstring as ``--help`` text: without reStructuredText's double backticks."""
    return (doc or "").replace("``", "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
