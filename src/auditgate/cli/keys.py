"""``auditgate keys``: create, list and revoke API keys; upgrade old keys files to salted
hashes."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from auditgate.auth.keys import add_key, list_keys, revoke_keys, upgrade_keys
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
    upgrade = keys.add_parser(
        "upgrade",
        help="rehash old (unsalted SHA-256) entries whose keys are given on stdin, one a line",
    )
    upgrade.add_argument("--file", required=True, help="keys file (AUDITGATE_API_KEYS_FILE)")
    upgrade.set_defaults(func=run_upgrade)
    listing = keys.add_parser("list", help="show every key's name, tenant, role and prefix")
    listing.add_argument("--file", required=True, help="keys file (AUDITGATE_API_KEYS_FILE)")
    listing.set_defaults(func=run_list)
    revoke = keys.add_parser(
        "revoke", help="delete the keys of a name (running gateways refuse them within a second)"
    )
    revoke.add_argument("--file", required=True, help="keys file (AUDITGATE_API_KEYS_FILE)")
    revoke.add_argument("name", help="the name given at `keys add` (default there: the tenant)")
    revoke.set_defaults(func=run_revoke)


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


def run_upgrade(args: argparse.Namespace) -> int:
    """Exit 0 when every key given was upgraded, 1 when some were not, 2 on an error."""
    keys = [line.strip() for line in sys.stdin if line.strip()]
    try:
        done = upgrade_keys(args.file, keys)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"auditgate keys: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(done.upgraded) or "none"
    print(f"auditgate keys: upgraded {len(done.upgraded)} old entries: {names}", file=sys.stderr)
    if done.refused:
        print(
            "auditgate keys: not upgraded, keys `auditgate keys add` did not make (replace "
            f"them: keys add a new one, hand it out, delete the entry): {', '.join(done.refused)}",
            file=sys.stderr,
        )
    if done.unknown:
        print(f"auditgate keys: {done.unknown} key(s) match no old entry", file=sys.stderr)
    if done.remaining:
        print(f"auditgate keys: old entries left: {', '.join(done.remaining)}", file=sys.stderr)
    return 1 if done.refused or done.unknown else 0


def run_list(args: argparse.Namespace) -> int:
    """One line per key: name, tenant, role, prefix, hashing; exit 2 for an unreadable file."""
    try:
        listed = list_keys(args.file)
    except (ConfigError, OSError) as exc:
        print(f"auditgate keys: {exc}", file=sys.stderr)
        return 2
    print("NAME\tTENANT\tROLE\tPREFIX\tHASH")
    for key in listed:
        print(f"{key.name}\t{key.tenant}\t{key.role}\t{key.prefix or '-'}\t{key.hashing}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Exit 0 when keys were deleted, 1 when none has that name, 2 on an error."""
    try:
        revoked = revoke_keys(args.file, args.name)
    except (ConfigError, OSError) as exc:
        print(f"auditgate keys: {exc}", file=sys.stderr)
        return 2
    if not revoked:
        print(f"auditgate keys: no key named {args.name!r} in {args.file}", file=sys.stderr)
        return 1
    print(
        f"auditgate keys: revoked {revoked} key(s) named {args.name!r}; a running gateway "
        "refuses them within about a second (it follows the keys file)",
        file=sys.stderr,
    )
    return 0
