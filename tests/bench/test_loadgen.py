"""Smoke tests of the benchmark harness: the load generator against the bench's fake upstream."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from bench import loadgen, procfs, upstream


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    """The bench's fake upstream on a free loopback port, in this event loop."""
    server = await upstream.start_server(0, ["mock"])
    async with server:
        yield int(server.sockets[0].getsockname()[1])


def workload(port: int, **kwargs: object) -> loadgen.Workload:
    settings: dict[str, object] = {"warmup_s": 0.1, "duration_s": 0.4, "concurrency": 4}
    settings.update(kwargs)
    return loadgen.Workload(host="127.0.0.1", port=port, **settings)  # type: ignore[arg-type]


async def test_non_stream_counts_requests_and_server_cpu(upstream_port: int) -> None:
    """Non-stream load completes without errors and reports this process's CPU per request."""
    result = await loadgen.run(workload(upstream_port), pids=[os.getpid()])
    assert (result["errors"], result["error_kinds"], result["ttft_p50_ms"]) == (0, {}, None)
    assert result["requests"] > 100
    assert result["rps"] == pytest.approx(result["requests"] / result["duration_s"], rel=0.01)
    assert result["latency_p50_ms"] <= result["latency_p99_ms"]
    assert result["server_cpu_ms_per_req"] > 0


async def test_stream_sees_every_frame_and_first_token(upstream_port: int) -> None:
    """A stream is 16 content frames plus [DONE], and has a time to first token."""
    result = await loadgen.run(workload(upstream_port, stream=True, concurrency=2))
    assert (result["errors"], result["frames_per_response"]) == (0, 17.0)
    assert 0 < result["ttft_p50_ms"] <= result["latency_p50_ms"]


async def test_non_200_answers_are_errors_not_results(upstream_port: int) -> None:
    """Responses with another status are counted by status and never enter the latencies."""
    result = await loadgen.run(workload(upstream_port, path="/nowhere", concurrency=1))
    assert result["errors"] > 0
    assert ({"status_404": result["errors"]}, 0) == (result["error_kinds"], result["requests"])


async def test_refused_connections_are_errors(upstream_port: int) -> None:
    """A port nobody listens on yields connect errors, not a crash."""
    server_less = free_port()
    result = await loadgen.run(workload(server_less, concurrency=1, duration_s=0.2))
    assert (result["requests"], list(result["error_kinds"])) == (0, ["connect"])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_percentile_is_nearest_rank() -> None:
    """Nearest rank: p50 of 1..10 is 5, p99 is 10, and nothing for no values."""
    values = [float(v) for v in range(10, 0, -1)]
    assert (
        loadgen.percentile(values, 50),
        loadgen.percentile(values, 99),
        loadgen.percentile([], 50),
    ) == (5.0, 10.0, None)


def test_process_tree_includes_children() -> None:
    """A child process is part of its parent's tree, and peak RSS sums over the tree."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        tree = procfs.process_tree([os.getpid()])
        assert [os.getpid(), child.pid] == [p for p in tree if p in (os.getpid(), child.pid)]
        assert procfs.tree_peak_rss_bytes([os.getpid()]) > procfs.peak_rss_bytes(os.getpid())
    finally:
        child.kill()
        child.wait()


async def test_open_loop_sends_at_the_rate_whatever_the_connections(upstream_port: int) -> None:
    """With a rate, the completed requests follow it (not the connections' speed) and the
    latency counts from when each request was due."""
    result = await loadgen.run(workload(upstream_port, rate=200.0, duration_s=1.0))
    assert (result["errors"], result["rate"]) == (0, 200.0)
    assert result["rps"] == pytest.approx(200.0, rel=0.1)
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"]


async def test_open_loop_latency_includes_the_wait_for_a_connection(upstream_port: int) -> None:
    """One connection and more requests due than it can take back to back: each waits for the
    one before, so latencies grow past a single round trip instead of staying flat."""
    single = await loadgen.run(workload(upstream_port, concurrency=1, duration_s=0.5))
    overloaded = await loadgen.run(
        workload(upstream_port, concurrency=1, rate=single["rps"] * 3, duration_s=0.5)
    )
    assert overloaded["latency_p99_ms"] > 5 * single["latency_p99_ms"]
