"""``auditgate ui``: the web console alone, reading a store (a read-mostly analyst's box).

Exit codes: 0 after a clean stop, 2 for bad arguments or settings, 3 when the store, the keys
file or the port cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from auditgate.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("ui", help="serve the web console for a store", description=__doc__)
    p.add_argument(
        "--store",
        default=os.environ.get("AUDITGATE_STORE_URL"),
        help="sqlite:///PATH or postgresql://... (default: $AUDITGATE_STORE_URL)",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="listen port (default %(default)s)")
    p.add_argument(
        "--api-keys-file",
        default=os.environ.get("AUDITGATE_API_KEYS_FILE"),
        help="the gateway's API keys file: sign-in and tenants (default: "
        "$AUDITGATE_API_KEYS_FILE; without one the console is open, everyone admin)",
    )
    p.add_argument("--metrics-url", help="a gateway's /metrics URL, for the pipeline page")
    p.add_argument(
        "--key-env",
        default="DYN_AUDIT_INTEGRITY_KEY",
        help="environment variable holding the checkpoint key for verify (default %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.store:
        print("auditgate ui: needs --store URL (or AUDITGATE_STORE_URL)", file=sys.stderr)
        return 2
    import uvicorn

    from auditgate.console.standalone import StandaloneConsole
    from auditgate.serving import configure_logging

    # The console's own lines (a keys file reloaded or broken, OPEN MODE) as serve logs them.
    configure_logging("info")

    secret = os.environ.get("AUDITGATE_UI_SECRET", "")
    try:
        app = StandaloneConsole(
            args.store,
            keys_file=args.api_keys_file,
            metrics_url=args.metrics_url,
            integrity_key=os.environ.get(args.key_env, "").strip() or None,
            secret=secret.encode() if secret else None,
        )
    except ConfigError as exc:
        print(f"auditgate ui: {exc}", file=sys.stderr)
        return 3
    config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="on", log_level="info")
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3
