"""What the audit costs the serving thread, without HTTP: ``python bench/pipeline.py``.

``[--requests 3200] [--rounds 5] [--messages 1] [--tokens 16] [--against SRC]``

The gateway app (mock engine, ``store: true``) called directly as ASGI, 16 requests at a time, in
a fresh process per measurement pinned to the server CPU: audit off, ``jsonl`` in-process, and
``jsonl`` with ``DYN_AUDIT_PROCESS=1`` (the audit process on the client CPU).  Prints the
microseconds of the serving thread's CPU per request (``time.thread_time``; the fastest of five
batches), median over ``--rounds``, for non-stream and stream requests.  ``--messages``: chat
turns in the request body (1: ~150 bytes; 9: ~2 KB).

``--against SRC`` measures another version too (``git archive main src | tar -x -C /tmp/main``
then ``--against /tmp/main/src``), its runs interleaved with this one's, so that a machine whose
speed drifts moves both alike.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from bench import servers
from bench.servers import CLIENT_CPUS, PYTHON, SERVER_CPUS

MODES = ("off", "in-process", "process")


def measure(mode: str, stream: bool, requests: int, messages: int, tokens: int) -> float:
    """One measurement in this process: µs of this thread's CPU per request."""
    import uvloop

    from auditgate.config import Settings
    from auditgate.server.app import create_app

    path = os.path.join(tempfile.mkdtemp(), "audit.jsonl")
    env = {"DYN_AUDIT_ENABLED": "0"}
    if mode != "off":
        env = {
            "DYN_AUDIT_ENABLED": "1",
            "DYN_AUDIT_SINKS": "jsonl",
            "DYN_AUDIT_OUTPUT_PATH": path,
            "DYN_AUDIT_PROCESS": "1" if mode == "process" else "0",
            "DYN_AUDIT_PROCESS_CPUS": CLIENT_CPUS,
        }
    text = "Say something about the weather today, please. " * (1 if messages == 1 else 4)
    turns = [{"role": ("user", "assistant")[i % 2], "content": text} for i in range(messages)]
    body = json.dumps(
        {"model": "mock", "messages": turns, "store": True, "max_tokens": tokens, "stream": stream}
    ).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }

    async def run() -> float:
        app = create_app(Settings.from_env(env))
        await app.gateway.start()
        never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def one() -> None:
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> Any:
                return messages.pop() if messages else await never

            statuses = []

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app(dict(scope), receive, send)
            assert statuses == [200], statuses

        async def batch(count: int) -> None:
            for _ in range(count // 16):
                await asyncio.gather(*(one() for _ in range(16)))

        await batch(2000)
        best = float("inf")
        for _ in range(5):
            started = time.thread_time()
            await batch(requests)
            best = min(best, (time.thread_time() - started) / requests * 1e6)
            await asyncio.sleep(0.05)
        await app.gateway.stop()
        return best

    return uvloop.run(run())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--messages", type=int, default=1)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--against", default=None, help="the src directory of another version")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # MODE:STREAM, in a child
    a = p.parse_args(argv)
    if a.one is not None:
        mode, stream = a.one.split(":")
        print(measure(mode, stream == "1", a.requests, a.messages, a.tokens))
        return
    versions = {"this": None} if a.against is None else {"this": None, "against": a.against}
    found: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    base = [f"--requests={a.requests}", f"--messages={a.messages}", f"--tokens={a.tokens}"]
    for _ in range(a.rounds):
        for stream in ("0", "1"):
            for mode in MODES:
                for version, src in versions.items():
                    env = servers.clean_env({})
                    if src is not None:
                        env["PYTHONPATH"] = src
                    argv = [PYTHON, __file__, f"--one={mode}:{stream}", *base]
                    out = subprocess.run(
                        servers.pinned(SERVER_CPUS, argv),
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    found[(version, mode, stream)].append(float(out.stdout.split()[-1]))
    print(f"serving thread µs/request, median of {a.rounds} (body of {a.messages} messages)")
    print("| requests | version | " + " | ".join(MODES) + " |")
    print("|---|---|" + "--:|" * len(MODES))
    for stream in ("0", "1"):
        for version in versions:
            cells = [statistics.median(found[(version, m, stream)]) for m in MODES]
            kind = "stream" if stream == "1" else "json"
            print(f"| {kind} | {version} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    json.dump({f"{v}/{m}/{s}": found[(v, m, s)] for v, m, s in found}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
