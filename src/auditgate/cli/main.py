"""The ``auditgate`` command: serve, consume, import, keys, export, stats, verify."""

from __future__ import annotations

import argparse
import importlib
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
    "auditgate.cli.verify",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditgate",
        description="OpenAI-compatible LLM gateway with a lossless audit pipeline.",
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
