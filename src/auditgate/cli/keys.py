"""``auditgate keys add``: create an API key bound to a tenant and a role."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from auditgate.auth.keys import add_key
from auditgate.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="manage API keys")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add = keys.add_parser("add", help="create a key; prints it once")
    add.add_argument("--file", required=True, help="keys file (AUDITGATE_API_KEYS_FILE)")
    add.add_argument("--tenant", required=True, help="tenant the key's records belong to")
    add.add_argument("--role", choices=("user", "admin"), default="user")
    add.add_argument("--name", help="a label for the key (default: the tenant)")
    add.set_defaults(func=run_add)


def run_add(args: argparse.Namespace) -> int:
    try:
        key = add_key(args.file, name=args.name or args.tenant, tenant=args.tenant, role=args.role)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"auditgate keys: {exc}", file=sys.stderr)
        return 2
    print(key)
    print(
        f"key for tenant {args.tenant!r} ({args.role}) added to {args.file}; "
        "this is the only time it is shown",
        file=sys.stderr,
    )
    return 0
