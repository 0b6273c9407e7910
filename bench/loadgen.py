"""HTTP load generator for OpenAI chat completions (closed or open loop); prints one JSON result.

``python bench/loadgen.py --url http://127.0.0.1:8000 --concurrency 16 --duration 5 [--stream]
[--pid SERVER_PID ...]``

``concurrency`` workers each hold one keep-alive HTTP/1.1 connection and send the same
``POST /v1/chat/completions`` (``store: true``, ``max_tokens`` 16, optionally ``stream: true``)
back to back; with ``--path /v1/responses`` the Responses API's request of the same prompt and
limit (``input``, ``max_output_tokens``), whose streams end with ``response.completed`` (or
``.incomplete``, at the limit).
The first ``warmup`` seconds are not measured; then for ``duration`` seconds every response
that *completes* inside the window counts: req/s is their number over the window, the latency
percentiles are theirs (request written → last body byte), and for streams the time to first
token is request written → first body bytes (the first SSE data frame).  Errors (non-200, a
stream without ``[DONE]`` or a terminal Responses event, a reset or refused connection, a request
over ``timeout``) are counted by kind; a failed connection is reopened.

With ``--rate R`` the load is open-loop instead: requests are due at a fixed R per second
(evenly spaced) whatever the server does, and the ``concurrency`` connections take them in turn
(a request waits for a free connection when all are busy).  Latency then counts from when the
request was *due*, so a server that falls behind shows it in its percentiles rather than hiding
it by slowing the generator (no coordinated omission).  Below saturation, open loop measures
what a request costs the server (``server_cpu_ms_per_req``) at a production-like arrival rate.

With ``--pid``, the server's CPU time (``utime + stime`` over each pid's whole process tree) is
read at the window's start and end: ``server_cpu_ms_per_req`` is that difference over the
requests completed in the window; ``server_peak_rss_mb`` is the sum of ``VmHWM`` over the trees at
the end; ``server_root_cpu_ms_per_req`` and ``server_root_peak_rss_mb`` the same for the given
pids alone, without their children (an audit process, a spool writer).  ``client_cpu_util`` is
this process's own CPU use over the window as a fraction of one core: near 1.0 means the
generator, not the server, was the limit.

Why raw asyncio sockets and the httptools parser instead of an HTTP client library: a request
costs a ``write`` of prebuilt bytes and a C parse of the answer, so one core drives several times
what any Python server under test can serve (measure with ``bench/upstream.py``).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import dataclasses
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from bench import procfs

DEFAULT_PROMPT = "Write one sentence about load testing."


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    """What to send and how hard."""

    host: str
    port: int
    path: str = "/v1/chat/completions"
    model: str = "mock"
    stream: bool = False
    concurrency: int = 1
    warmup_s: float = 1.0
    duration_s: float = 5.0
    timeout_s: float = 30.0
    max_tokens: int = 16
    prompt: str = DEFAULT_PROMPT
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers (e.g. ``Authorization``)."""
    rate: float | None = None
    """Open loop: requests due per second (None: closed loop, each connection back to back)."""

    def body(self) -> bytes:
        request: dict[str, Any] = {"model": self.model}
        if self.path.endswith("/responses"):
            # The Responses API (stored by default): the same prompt and limit in its terms.
            request |= {"input": self.prompt, "max_output_tokens": self.max_tokens}
        elif self.path.endswith("/chat/completions"):
            request["messages"] = [{"role": "user", "content": self.prompt}]
            request["max_tokens"] = self.max_tokens
        else:  # legacy /v1/completions
            request["prompt"] = self.prompt
            request["max_tokens"] = self.max_tokens
        request["store"] = True
        if self.stream:
            request["stream"] = True
        return json.dumps(request, separators=(",", ":")).encode()

    def request_bytes(self) -> bytes:
        body = self.body()
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Accept: text/event-stream" if self.stream else "Accept: application/json",
        ]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RequestFailed(Exception):
    """A request that did not produce a usable response; ``kind`` is the error counter's key."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclasses.dataclass(slots=True)
class Response:
    """What one request measured."""

    status: int
    first_body: float
    """``perf_counter`` when the first body bytes arrived (0.0 if the body was empty)."""
    end: float
    frames: int
    """Occurrences of ``data:`` in the body (SSE frames, roughly: a split frame is missed)."""
    body_bytes: int
    done: bool
    """The body's tail held ``[DONE]`` (a Responses stream: its terminal event came)."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.first_body = 0.0
        self.frames = 0
        self.body_bytes = 0
        self.tail = b""
        self.completed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("bad_response")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection_lost")

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        if not self.first_body:
            self.first_body = time.perf_counter()
        self.frames += body.count(b"data:")
        self.body_bytes += len(body)
        if b"event: response.completed" in body or b"event: response.incomplete" in body:
            self.completed = True  # a Responses stream ends with one of these, not [DONE]
        self.tail = (self.tail + body)[-32:]

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        waiter.set_result(
            Response(
                self.parser.get_status_code(),
                self.first_body,
                time.perf_counter(),
                self.frames,
                self.body_bytes,
                b"[DONE]" in self.tail or self.completed,
            )
        )
        if not self.parser.should_keep_alive():
            self.close()

    def _fail(self, kind: str) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(RequestFailed(kind))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, data: bytes, timeout_s: float) -> Response:
        assert self.transport is not None
        self._reset()
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, self._fail, "timeout")
        self.transport.write(data)
        try:
            response: Response = await waiter
            return response
        finally:
            timer.cancel()
            self.waiter = None


@dataclasses.dataclass(slots=True)
class Tally:
    """Measurements of the window, shared by all workers."""

    measuring: bool = False
    latencies: list[float] = dataclasses.field(default_factory=list)
    ttfts: list[float] = dataclasses.field(default_factory=list)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    frames: int = 0
    body_bytes: int = 0


_NO_MORE: float = float("-inf")
"""Put on the open loop's queue at the end, one per worker: stop waiting for requests."""


async def _arrivals(rate: float, due: asyncio.Queue[float], stop: asyncio.Event) -> None:
    """Open loop: put each request's due time (``perf_counter``) on ``due``, ``rate`` a second."""
    interval = 1.0 / rate
    next_at = time.perf_counter()
    while not stop.is_set():
        now = time.perf_counter()
        while next_at <= now:
            due.put_nowait(next_at)
            next_at += interval
        await asyncio.sleep(next_at - now)


async def _worker(
    w: Workload,
    data: bytes,
    tally: Tally,
    stop: asyncio.Event,
    due: asyncio.Queue[float] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    conn: Connection | None = None
    while not stop.is_set():
        if conn is None or conn.closed:
            try:
                _, conn = await loop.create_connection(lambda: Connection(loop), w.host, w.port)
            except OSError:
                if tally.measuring:
                    tally.errors["connect"] += 1
                await asyncio.sleep(0.05)  # a refused connect must not spin the loop
                continue
        if due is None:
            start = time.perf_counter()
        else:
            start = await due.get()  # latency counts from when the request was due
            if start == _NO_MORE:
                break
        try:
            response = await conn.request(data, w.timeout_s)
        except RequestFailed as failed:
            conn.close()
            conn = None
            if tally.measuring:
                tally.errors[failed.kind] += 1
            continue
        if not tally.measuring:
            continue
        if response.status != 200:
            tally.errors[f"status_{response.status}"] += 1
        elif w.stream and not response.done:
            tally.errors["stream_without_done"] += 1
        else:
            tally.latencies.append(response.end - start)
            if w.stream and response.first_body:
                tally.ttfts.append(response.first_body - start)
            tally.frames += response.frames
            tally.body_bytes += response.body_bytes
    if conn is not None:
        conn.close()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


async def run(w: Workload, pids: Sequence[int] = ()) -> dict[str, Any]:
    """Run the workload; return the result as a JSON-ready dict (see the module docstring)."""
    data = w.request_bytes()
    tally = Tally()
    stop = asyncio.Event()
    due: asyncio.Queue[float] | None = None
    tasks = []
    if w.rate is not None:
        due = asyncio.Queue()
        tasks.append(asyncio.create_task(_arrivals(w.rate, due, stop)))
    workers = [
        asyncio.create_task(_worker(w, data, tally, stop, due)) for _ in range(w.concurrency)
    ]
    try:
        await asyncio.sleep(w.warmup_s)
        cpu0 = procfs.tree_cpu_seconds(pids) if pids else 0.0
        root0 = procfs.cpu_seconds(pids)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        tally.measuring = True
        await asyncio.sleep(w.duration_s)
        tally.measuring = False
        elapsed = time.perf_counter() - t0
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu1 = procfs.tree_cpu_seconds(pids) if pids else 0.0
        root1 = procfs.cpu_seconds(pids)
    finally:
        stop.set()
        if due is not None:
            for _ in workers:
                due.put_nowait(_NO_MORE)  # wakes a worker waiting for its next request
        # In-flight requests finish (or time out) on their own; give them a bounded moment.
        _, pending = await asyncio.wait(workers, timeout=w.timeout_s + 1)
        for task in [*pending, *tasks]:
            task.cancel()
        await asyncio.gather(*pending, *tasks, return_exceptions=True)
    # A worker that crashed is a bug in this generator: never report its numbers as a result.
    for task in workers:
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError("a load generator worker crashed") from task.exception()
    done = len(tally.latencies)
    client_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    result: dict[str, Any] = {
        "stream": w.stream,
        "concurrency": w.concurrency,
        "rate": w.rate,
        "model": w.model,
        "warmup_s": w.warmup_s,
        "duration_s": round(elapsed, 3),
        "requests": done,
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "rps": round(done / elapsed, 1),
        "latency_p50_ms": _ms(percentile(tally.latencies, 50)),
        "latency_p99_ms": _ms(percentile(tally.latencies, 99)),
        "ttft_p50_ms": _ms(percentile(tally.ttfts, 50)),
        "ttft_p99_ms": _ms(percentile(tally.ttfts, 99)),
        "frames_per_response": round(tally.frames / done, 2) if done else None,
        "bytes_per_response": round(tally.body_bytes / done) if done else None,
        "client_cpu_util": round(client_cpu / elapsed, 3),
        "server_cpu_ms_per_req": None,
        "server_cpu_util": None,
        "server_peak_rss_mb": None,
    }
    if pids:
        server_cpu = cpu1 - cpu0
        result["server_cpu_util"] = round(server_cpu / elapsed, 3)
        result["server_cpu_ms_per_req"] = round(server_cpu * 1000 / done, 4) if done else None
        result["server_peak_rss_mb"] = round(procfs.tree_peak_rss_bytes(pids) / 2**20, 1)
        # The given pids alone, without their children (the audit process, a spool writer).
        root = root1 - root0
        result["server_root_cpu_ms_per_req"] = round(root * 1000 / done, 4) if done else None
        result["server_root_peak_rss_mb"] = round(
            sum(procfs.peak_rss_bytes(pid) for pid in pids) / 2**20, 1
        )
    return result


def parse_args(argv: Sequence[str] | None = None) -> tuple[Workload, list[int]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--model", default="mock")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    p.add_argument("--pid", type=int, action="append", default=[], help="server pid (repeatable)")
    p.add_argument("--rate", type=float, default=None, help="open loop: requests due per second")
    a = p.parse_args(argv)
    if a.rate is not None and a.rate <= 0:
        p.error("--rate must be > 0")
    url = urlsplit(a.url)
    if url.scheme != "http" or url.hostname is None:
        p.error("--url must be http://host:port")
    headers = []
    for raw in a.header:
        name, sep, value = raw.partition(":")
        if not sep:
            p.error(f"--header {raw!r}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    workload = Workload(
        host=url.hostname,
        port=url.port or 80,
        path=a.path,
        model=a.model,
        stream=a.stream,
        concurrency=a.concurrency,
        warmup_s=a.warmup,
        duration_s=a.duration,
        timeout_s=a.timeout,
        max_tokens=a.max_tokens,
        headers=tuple(headers),
        rate=a.rate,
    )
    return workload, a.pid


def main(argv: Sequence[str] | None = None) -> None:
    workload, pids = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(workload, pids))
    else:
        result = uvloop.run(run(workload, pids))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
