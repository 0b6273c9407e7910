"""Pass-through: what the gateway adds to a request it only relays, against the upstream direct.

run ``.venv/bin/python -m bench.passthrough`` (``--size-mb 256 --requests 2000 --repeat 3``).
The fake upstream of the tests (``python -m tests.support.upstream``) and ``auditgate serve``
(openai engine) run as their own processes; the client, on raw sockets, measures each workload
straight against the upstream and through the gateway, alternately, ``--repeat`` times:

- ``download``: one ``GET /bytes?n=SIZE`` (``Content-Length`` framing), read as fast as it comes;
- ``upload``: one ``PUT /echo`` of SIZE bytes (``Content-Length``), the echo read back;
- ``small``: ``--requests`` sequential ``GET /echo`` on one keep-alive connection.

Reported per workload, the best round of each path: MB/s (transfers) or the median and p99
latency (small requests), and the gateway's CPU time per GB or per request (``/proc``, its
process tree).  The peak resident memory of the gateway after the run shows that bodies are
not held.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httptools
from tests.support.gateway import free_port, running_gateway
from tests.support.upstream import MAX_CHUNK, pattern

from bench import procfs

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def fake_upstream() -> Iterator[int]:
    """``python -m tests.support.upstream`` on a free port; yields the port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # "fake upstream on …": listening
        yield port
    finally:
        process.terminate()
        process.wait(10)


class Reader:
    """Reads one HTTP/1.1 response at a time off a socket (httptools), counting body bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.body = 0
        self.done = False
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        self.done = True

    def response(self) -> int:
        """Read the next whole response; its body's size."""
        self.body, self.done = 0, False
        while not self.done:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed mid-response")
            self.parser.feed_data(data)
        return self.body


def download(port: int, size: int) -> float:
    """Seconds to receive a ``size``-byte body."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(f"GET /bytes?n={size} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        received = Reader(sock).response()
        elapsed = time.perf_counter() - started
    assert received == size, received
    return elapsed


def upload(port: int, size: int) -> float:
    """Seconds to send a ``size``-byte body and read the echo."""
    block = pattern(0, MAX_CHUNK)  # MAX_CHUNK is a multiple of 256: every block is the same
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        head = f"PUT /echo HTTP/1.1\r\nHost: b\r\nContent-Length: {size}\r\n\r\n"
        sock.sendall(head.encode())
        for offset in range(0, size, MAX_CHUNK):
            sock.sendall(block[: min(MAX_CHUNK, size - offset)])
        Reader(sock).response()
        elapsed = time.perf_counter() - started
    return elapsed


def small(port: int, requests: int) -> list[float]:
    """Latency of each of ``requests`` sequential ``GET /echo`` on one connection, seconds."""
    request = b"GET /echo?q=1 HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\n"
    latencies = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(sock)
        for _ in range(requests):
            started = time.perf_counter()
            sock.sendall(request)
            reader.response()
            latencies.append(time.perf_counter() - started)
    return latencies


def cpu_of(pid: int, work: Callable[[], object]) -> tuple[object, float]:
    """``work()``'s result and the CPU seconds the process tree of ``pid`` spent meanwhile."""
    before = procfs.tree_cpu_seconds([pid])
    result = work()
    return result, procfs.tree_cpu_seconds([pid]) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb << 20
    with fake_upstream() as up, tempfile.TemporaryDirectory() as work:
        env = {
            "AUDITGATE_ENGINE": "openai",
            "AUDITGATE_UPSTREAM_URL": f"http://127.0.0.1:{up}/v1",
            "AUDITGATE_LOG_LEVEL": "warning",
        }
        with running_gateway(env, log_dir=Path(work)) as gateway:
            pid = gateway.process.pid
            rates: dict[tuple[str, str], list[float]] = {}
            cpu: dict[str, list[float]] = {}
            lat: dict[str, list[list[float]]] = {"direct": [], "gateway": []}
            for _ in range(args.repeat):
                for name, port in (("direct", up), ("gateway", gateway.port)):
                    for kind, fn in (("download", download), ("upload", upload)):
                        elapsed, spent = cpu_of(pid, lambda fn=fn, port=port: fn(port, size))
                        assert isinstance(elapsed, float)
                        rates.setdefault((kind, name), []).append(size / elapsed / 1e6)
                        if name == "gateway":
                            cpu.setdefault(kind, []).append(spent / (size / 1e9))
                    result, spent = cpu_of(pid, lambda port=port: small(port, args.requests))
                    assert isinstance(result, list)
                    lat[name].append(sorted(result))
                    if name == "gateway":
                        cpu.setdefault("small", []).append(spent / args.requests)
            peak = procfs.peak_rss_bytes(pid)
    print(f"{args.size_mb} MiB transfers, best of {args.repeat}:")
    for kind in ("download", "upload"):
        direct, through = max(rates[(kind, "direct")]), max(rates[(kind, "gateway")])
        print(
            f"  {kind:8}  direct {direct:7.0f} MB/s   through the gateway {through:7.0f} MB/s"
            f"   gateway CPU {min(cpu[kind]):.2f} s/GB"
        )
    print(f"{args.requests} sequential small GETs, best round's median / p99 latency:")
    for name in ("direct", "gateway"):
        best = min(lat[name], key=statistics.median)
        p99 = best[int(len(best) * 0.99) - 1]
        print(f"  {name:8}  {statistics.median(best) * 1e6:6.0f} us / {p99 * 1e6:6.0f} us")
    print(f"  gateway CPU per request: {min(cpu['small']) * 1e6:.0f} us")
    print(f"gateway peak RSS over the run: {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
