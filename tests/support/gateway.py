"""Start real ``auditgate serve`` processes for tests, on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """One running gateway process; ``stderr`` is captured to ``log_path``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return str(response.read().decode())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"gateway did not exit within {timeout}s:\n{self.log()}") from None


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without audit or gateway settings, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "AUDITGATE_"))}
    clean.update(env)
    return clean


def serve_until_exit(
    env: Mapping[str, str], args: Sequence[str] = (), *, cwd: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``auditgate serve`` on a free loopback port (``env`` added to a clean environment)
    until it exits by itself — as one that must refuse to start does; output captured."""
    argv = ["serve", "--host", "127.0.0.1", "--port", str(free_port()), *args]
    return subprocess.run(
        [sys.executable, "-m", "auditgate", *argv],
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_gateway(
    env: Mapping[str, str],
    args: list[str] | None = None,
    *,
    log_dir: Path,
    port: int | None = None,
    ready_timeout: float = 30.0,
) -> Gateway:
    """Start ``auditgate serve`` with ``env`` added to a clean environment; wait for /health."""
    port = port or free_port()
    log_path = log_dir / f"gateway-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "auditgate", "serve", "--host", "127.0.0.1", "--port", str(port)]
            + (args or []),
            env=clean_env(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=log_dir,
        )
    gateway = Gateway(process, port, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited with {process.returncode}:\n{gateway.log()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(gateway.url + "/health", timeout=1) as response,
        ):
            if response.status == 200:
                return gateway
        time.sleep(0.05)
    gateway.stop(signal.SIGKILL)
    raise AssertionError(f"gateway not ready in {ready_timeout}s:\n{gateway.log()}")


@contextlib.contextmanager
def running_gateway(
    env: Mapping[str, str], args: list[str] | None = None, *, log_dir: Path
) -> Iterator[Gateway]:
    """A gateway for the duration of a ``with`` block, stopped with SIGTERM after it."""
    gateway = start_gateway(env, args, log_dir=log_dir)
    try:
        yield gateway
    finally:
        if gateway.process.poll() is None:
            gateway.stop()
