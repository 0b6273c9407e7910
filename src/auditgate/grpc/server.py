"""The gRPC server of one gateway process: a ``grpc.aio`` server on the gateway's event loop.

Started and stopped by :class:`~auditgate.server.app.Gateway` when ``AUDITGATE_GRPC_PORT``
(``--grpc-port``) is set; it listens on the gateway's host (``AUDITGATE_HOST``).

With ``--workers N`` every worker process runs its own gRPC server on the same port with
``SO_REUSEPORT``, so the kernel spreads connections over the workers as it does for HTTP (each
worker is its own audit writer).  With one worker ``SO_REUSEPORT`` is off, so a port already in
use is a startup error instead of a silently shared port.
"""

from __future__ import annotations

import logging

import grpc
from tritonclient.grpc import service_pb2_grpc

from auditgate.errors import ConfigError
from auditgate.grpc.service import InferenceServicer

log = logging.getLogger("auditgate.grpc")


class GrpcFrontend:
    """The KServe v2 gRPC frontend of one gateway."""

    def __init__(
        self,
        servicer: InferenceServicer,
        *,
        host: str,
        port: int,
        reuse_port: bool,
        max_message_bytes: int,
    ) -> None:
        """``max_message_bytes``: the largest request accepted (``AUDITGATE_MAX_BODY_BYTES``)."""
        self.servicer = servicer
        self.max_message_bytes = max_message_bytes
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listen and serve; returns the bound port.  Raises :class:`ConfigError` if it cannot."""
        limit = self.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                ("grpc.max_receive_message_length", limit),
            ]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            bound = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:  # grpcio raises RuntimeError when it cannot bind
            raise ConfigError(f"gRPC: cannot listen on {host}:{self.port}: {exc}") from None
        if bound == 0:
            raise ConfigError(f"gRPC: cannot listen on {host}:{self.port}")
        await server.start()
        self._server = server
        self.port = bound
        log.info("gRPC (KServe v2 GRPCInferenceService) on %s:%d", host, bound)
        return bound

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, give running ones ``grace_s`` seconds, then cancel them."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
