"""``auditgate serve``: run the gateway under uvicorn (uvloop + httptools).

Flags win over the environment: they are written into ``AUDITGATE_*`` variables before uvicorn
starts, so ``--workers N`` processes all build the same settings with the app factory; each
worker is its own audit ``writer`` with its own ``seq``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from auditgate.audit.metrics import MULTIPROCESS_ENV
from auditgate.cli.main import plain
from auditgate.config import GatewaySettings, Settings
from auditgate.errors import ConfigError

_FLAG_ENV = {
    "host": "AUDITGATE_HOST",
    "port": "AUDITGATE_PORT",
    "workers": "AUDITGATE_WORKERS",
    "engine": "AUDITGATE_ENGINE",
    "upstream": "AUDITGATE_UPSTREAM_URL",
    "upstream_api_key": "AUDITGATE_UPSTREAM_API_KEY",
    "api_keys_file": "AUDITGATE_API_KEYS_FILE",
    "store": "AUDITGATE_STORE_URL",
    "grpc_port": "AUDITGATE_GRPC_PORT",
    "max_body_bytes": "AUDITGATE_MAX_BODY_BYTES",
    "log_level": "AUDITGATE_LOG_LEVEL",
}


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway", description=plain(__doc__))
    p.add_argument("--host", help="listen address (AUDITGATE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (AUDITGATE_PORT, default 8000)")
    p.add_argument(
        "--workers", type=int, help="processes on one port (AUDITGATE_WORKERS, default 1)"
    )
    p.add_argument("--engine", choices=("mock", "openai"), help="engine (AUDITGATE_ENGINE)")
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        help="model id the mock engine serves; repeatable (AUDITGATE_MODELS)",
    )
    p.add_argument("--upstream", help="OpenAI-compatible base URL (AUDITGATE_UPSTREAM_URL)")
    p.add_argument(
        "--upstream-api-key",
        help="key sent upstream (AUDITGATE_UPSTREAM_API_KEY; prefer it: flags show in ps)",
    )
    p.add_argument("--api-keys-file", help="API keys file (AUDITGATE_API_KEYS_FILE)")
    p.add_argument("--store", help="stored-completions store URL (AUDITGATE_STORE_URL)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (AUDITGATE_GRPC_PORT)")
    p.add_argument(
        "--max-body-bytes", type=int, help="request body limit (AUDITGATE_MAX_BODY_BYTES)"
    )
    p.add_argument("--log-level", help="log level (AUDITGATE_LOG_LEVEL, default info)")
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish after SIGTERM (default 30)",
    )
    p.set_defaults(func=run)


def apply_flags(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Write the given flags into the environment the app factory reads."""
    for attr, name in _FLAG_ENV.items():
        value = getattr(args, attr, None)
        if value is not None:
            environ[name] = str(value)
    if getattr(args, "models", None):
        environ["AUDITGATE_MODELS"] = ",".join(args.models)


def run(args: argparse.Namespace) -> int:
    apply_flags(args, os.environ)  # type: ignore[arg-type]
    try:
        settings = Settings.from_env()
        settings.gateway.validate()
    except ConfigError as exc:
        print(f"auditgate: configuration error: {exc}", file=sys.stderr)
        return 2
    missing = missing_grpc_extra() if settings.gateway.grpc_port is not None else None
    if missing is not None:
        print(
            f"auditgate: configuration error: --grpc-port (AUDITGATE_GRPC_PORT) needs the grpc "
            f"extra, and {missing!r} is not installed: pip install 'auditgate[grpc]'",
            file=sys.stderr,
        )
        return 2
    from auditgate.serving import configure_logging  # the server's imports: serve only

    gw = settings.gateway
    configure_logging(gw.log_level)
    # uvicorn re-raises the signal that stopped it once shutdown is done; with the default
    # SIGTERM disposition that kills the process (exit -15) after a clean drain.  A no-op
    # handler makes a graceful SIGTERM end with exit code 0, as supervisors expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    shared_metrics = None
    if gw.workers > 1 and not os.environ.get(MULTIPROCESS_ENV):
        # Every worker's counters in files here, so a scrape of any worker reports them all
        # (a fresh directory: files of an earlier run would be added to this one's).
        shared_metrics = tempfile.mkdtemp(prefix="auditgate-metrics-")
        os.environ[MULTIPROCESS_ENV] = shared_metrics
    try:
        return _serve(args, gw)
    finally:
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)


def missing_grpc_extra() -> str | None:
    """The module of the ``grpc`` extra that cannot be imported, or None when it is there
    (checked before serving: the frontend imports them only once the app starts)."""
    try:
        import grpc  # noqa: F401
        import tritonclient.grpc  # noqa: F401
    except ModuleNotFoundError as exc:
        return exc.name or "grpc"
    return None


STARTUP_FAILURE = 3
"""Exit code when the app could not start (uvicorn's): a sink's database is missing, say."""


def _serve(args: argparse.Namespace, gw: GatewaySettings) -> int:
    """Serve until SIGTERM/SIGINT (0), or :data:`STARTUP_FAILURE` if the app could not start."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from auditgate.server.protocol import GatewayConfig

    config = GatewayConfig(
        "auditgate.serving:app_from_env",
        factory=True,
        host=gw.host,
        port=gw.port,
        workers=gw.workers if gw.workers > 1 else None,
        loop="uvloop",
        http="auditgate.server.protocol:BoundedHttpToolsProtocol",
        # No WebSocket endpoints: an upgrade request is plain HTTP, never handed to another
        # protocol (whichever WebSocket library happens to be installed).
        ws="none",
        max_head_bytes=gw.max_header_bytes,
        head_timeout_s=gw.header_timeout_s,
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=gw.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        server_header=False,
        date_header=False,
    )
    if gw.workers == 1:
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, re-raised after the drain
            server.run()
        return 0 if server.started else STARTUP_FAILURE
    # uvicorn.run stops every worker when one fails to start, but then returns as if all
    # went well: a supervisor would see exit 0.  Run its supervisor here to read the codes.
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return STARTUP_FAILURE if failed else 0
