"""A private ``nats-server`` (JetStream on) for tests that stop and restart it, and a runner for
``auditgate consume`` processes.

The server listens on a free loopback port with its store in a temporary directory; ``stop`` and
``start`` keep the port and the store, so clients reconnect to the same URL and the stream survives
a restart — an outage, not a new server.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tests.support.gateway import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class NatsServer:
    """One ``nats-server -js`` process that can be stopped and started again on the same port."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store_dir = directory / "jetstream"
        self.log_path = directory / f"nats-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, ready_timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        assert self.process is None, "already running"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [
                    NATS_SERVER,
                    "--addr", "127.0.0.1",
                    "--port", str(self.port),
                    "--jetstream",
                    "--store_dir", str(self.store_dir),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise AssertionError(f"nats-server exited with {code}:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn,
            ):
                # The INFO line comes once the server is ready to serve clients.
                if conn.recv(4).startswith(b"INFO"):
                    return
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"nats-server not ready in {ready_timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server (its store stays for the next ``start``)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def private_nats(directory: Path) -> Iterator[NatsServer]:
    """A running private server for the duration of a ``with`` block."""
    server = NatsServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ConsumeProcess:
    """One running ``auditgate consume`` process; its log (stderr and stdout) goes to a file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until a log line matches ``pattern``; AssertionError if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"consume did not exit within {timeout}s:\n{self.log()}") from None

    def summary(self) -> dict[str, int]:
        """The counters of the exit summary line (``written=... invalid=...``)."""
        match = re.search(r"consume: stopped; (.*)", self.log())
        assert match, f"no summary line:\n{self.log()}"
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def consume_command(args: Sequence[str]) -> list[str]:
    """The command line of ``auditgate consume ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "auditgate.cli.consume", *args]


def clean_env() -> dict[str, str]:
    """This process's environment without any ``DYN_*`` / ``AUDITGATE_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "AUDITGATE_"))}


def start_consume(
    args: Sequence[str],
    *,
    log_dir: Path,
    name: str = "consume",
    ready_timeout: float | None = 20.0,
    env: Mapping[str, str] | None = None,
) -> ConsumeProcess:
    """Start ``python -m auditgate.cli.consume ARGS`` and wait until it is consuming.

    ``ready_timeout=None`` returns at once (for a process whose NATS is not up yet).  ``env``:
    settings (``DYN_*``) added to an environment cleared of them.
    """
    log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            consume_command(args),
            env=clean_env() | dict(env or {}),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=log_dir,
        )
    consumer = ConsumeProcess(process, log_path)
    if ready_timeout is None:
        return consumer
    try:
        consumer.wait_for_log(r"consume: consuming", ready_timeout)
    except AssertionError:
        consumer.stop(signal.SIGKILL)
        raise
    return consumer
