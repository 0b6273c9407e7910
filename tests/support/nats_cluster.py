"""A private three-node ``nats-server`` cluster (JetStream on every node) for tests that kill
and restart nodes.

Every node listens for clients and routes on free loopback ports and keeps its JetStream store
in a directory of its own; ``kill`` and ``start`` keep both, so a restarted node rejoins the
cluster with its store and catches up, as after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.gateway import free_port
from tests.support.nats import NATS_SERVER


class ClusterNode:
    """One node of a :class:`NatsCluster`."""

    def __init__(self, directory: Path, name: str, port: int, route_port: int) -> None:
        self.directory = directory
        self.name = name
        """The node's ``server_name``, as JetStream names stream and consumer leaders."""
        self.port = port
        self.route_port = route_port
        self.url = f"nats://127.0.0.1:{port}"
        self.config_path = directory / f"{name}.conf"
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def write_config(self, cluster: str, routes: list[int]) -> None:
        store = self.directory / f"{self.name}-js"
        store.mkdir(parents=True, exist_ok=True)
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{store}" }}',
            "cluster {",
            f"  name: {cluster}",
            f"  listen: 127.0.0.1:{self.route_port}",
            "  routes: [" + ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes) + "]",
            "}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, ready_timeout: float = 10.0) -> None:
        """Start the node and wait until it accepts client connections."""
        assert self.process is None, f"{self.name} is already running"
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [NATS_SERVER, "--config", str(self.config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise AssertionError(f"{self.name} exited with {code}:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn,
            ):
                if conn.recv(4).startswith(b"INFO"):
                    return
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"{self.name} not ready in {ready_timeout}s:\n{self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the node with ``sig`` (a crash by default); its store stays."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class NatsCluster:
    """Three clustered nodes; ``url`` lists all of them, as a client in production would."""

    def __init__(self, directory: Path, name: str = "agtest", size: int = 3) -> None:
        self.nodes = [
            ClusterNode(directory, f"n{i}", free_port(), free_port()) for i in range(size)
        ]
        for node in self.nodes:
            routes = [other.route_port for other in self.nodes if other is not node]
            node.write_config(name, routes)
        self.url = ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def logs(self) -> str:
        return "\n".join(f"--- {node.name}\n{node.log()[-4000:]}" for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill(signal.SIGTERM)


async def js_ready(url: str, timeout: float = 30.0) -> None:
    """Wait until the cluster's JetStream answers API requests (its meta leader is elected)."""
    import nats
    import nats.errors

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(url.split(","), connect_timeout=2, max_reconnect_attempts=1)
        except (OSError, nats.errors.Error) as exc:
            last = exc
            await asyncio.sleep(0.2)
            continue
        try:
            await nc.jetstream(timeout=2).account_info()
            return
        except (nats.errors.Error, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.2)
        finally:
            await nc.close()
    raise AssertionError(f"JetStream not ready in {timeout}s: {last!r}")


@contextlib.contextmanager
def nats_cluster(directory: Path) -> Iterator[NatsCluster]:
    """A started three-node cluster for the duration of a ``with`` block."""
    cluster = NatsCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
