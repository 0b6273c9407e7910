"""``auditgate retention`` and ``auditgate hold``: deleting old records; legal holds stop it.

``auditgate retention --older-than DAYS [--tenant T] [--store URL]`` deletes the records of the
UTC days before the one DAYS days ago (:mod:`auditgate.store.retention`); exit code 3 when a legal
hold refuses it.  ``auditgate hold set NAME --reason TEXT [--tenant T]``, ``hold clear NAME``,
``hold list``.  Both print JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from typing import Any

from auditgate.cli.export import store_url
from auditgate.errors import ConfigError, ServiceUnavailableError
from auditgate.store import retention

HELD = 3
"""Exit code of a retention a legal hold refused."""


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default=os.environ.get("AUDITGATE_STORE_URL"),
        help="sqlite:///PATH, a file path or postgresql://... (default: $AUDITGATE_STORE_URL)",
    )


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 0")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("retention", help="delete records older than a number of days")
    _store_option(p)
    p.add_argument(
        "--older-than",
        type=_days,
        required=True,
        metavar="DAYS",
        help="delete the records of the UTC days before the one DAYS days ago",
    )
    p.add_argument("--tenant", help="only this tenant's records")
    p.set_defaults(func=run_retention)

    h = sub.add_parser("hold", help="legal holds: while one is set, retention refuses to run")
    actions = h.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_ = actions.add_parser("set", help="set (or replace) a hold")
    set_.add_argument("name")
    set_.add_argument("--reason", required=True, help="why (a case number, a request)")
    set_.add_argument("--tenant", help="hold this tenant's records only (default: all)")
    clear = actions.add_parser("clear", help="clear a hold")
    clear.add_argument("name")
    listing = actions.add_parser("list", help="list the holds")
    for parser in (set_, clear, listing):
        _store_option(parser)
    h.set_defaults(func=run_hold)


def _fail(command: str, exc: BaseException) -> int:
    print(f"auditgate {command}: {exc}", file=sys.stderr)
    return 2


def run_retention(args: argparse.Namespace) -> int:
    cutoff = retention.cutoff_of(int(time.time() * 1000), args.older_than)
    try:
        outcome = asyncio.run(retention.retain(store_url(args, "retention"), cutoff, args.tenant))
    except retention.LegalHoldError as exc:
        print(f"auditgate retention: {exc}", file=sys.stderr)
        return HELD
    except (ConfigError, ServiceUnavailableError, OSError) as exc:
        return _fail("retention", exc)
    print(json.dumps(dataclasses.asdict(outcome)))
    return 0


def run_hold(args: argparse.Namespace) -> int:
    try:
        url = store_url(args, "hold")
        if args.action == "set":
            asyncio.run(retention.set_hold(url, args.name, args.tenant, args.reason))
        elif args.action == "clear" and not asyncio.run(retention.clear_hold(url, args.name)):
            return _fail("hold", ConfigError(f"no hold named {args.name!r}"))
        holds = asyncio.run(retention.list_holds(url))
    except (ConfigError, ServiceUnavailableError, OSError) as exc:
        return _fail("hold", exc)
    print(json.dumps([dataclasses.asdict(h) for h in holds]))
    return 0
