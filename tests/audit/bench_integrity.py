"""Throughput cost of integrity + redaction: ``python tests/audit/bench_integrity.py``.

Starts ``auditgate serve`` (mock engine, ``jsonl`` sink) pinned to CPU 0, drives it with
``bench/loadgen.py`` pinned to CPU 1 at concurrency 64 (non-stream, then stream), alternating
the baseline and ``DYN_AUDIT_INTEGRITY=1`` + ``DYN_AUDIT_REDACT=email,api_key,card,ip`` (with a
checkpoint key) ``--repeat`` times, and prints the median req/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
VARIANTS = {
    "baseline": {},
    "integrity+redact": {
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_INTEGRITY_KEY": "bench-key",
        "DYN_AUDIT_REDACT": "email,api_key,card,ip",
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(extra: dict[str, str], stream: bool, duration: float, workdir: str) -> float:
    port = free_port()
    env = dict(os.environ)
    env.update(
        DYN_AUDIT_ENABLED="1",
        DYN_AUDIT_SINKS="jsonl",
        DYN_AUDIT_OUTPUT_PATH=f"{workdir}/audit-{port}.jsonl",
        AUDITGATE_LOG_LEVEL="warning",
        **extra,
    )
    server = subprocess.Popen(
        ["taskset", "-c", "0", PYTHON, "-m", "auditgate", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        args = [
            "taskset",
            "-c",
            "1",
            PYTHON,
            str(ROOT / "bench" / "loadgen.py"),
            "--url",
            f"http://127.0.0.1:{port}",
            "--concurrency",
            "64",
            "--duration",
            str(duration),
            "--warmup",
            "1",
        ]
        if stream:
            args.append("--stream")
        out = subprocess.run(args, capture_output=True, check=True, text=True).stdout
        result = json.loads(out)
        return float(result["rps"] if "rps" in result else result["req_per_s"])
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for stream in (False, True):
            got: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for _ in range(a.repeat):
                for name, extra in VARIANTS.items():
                    got[name].append(measure(extra, stream, a.duration, workdir))
            med = {name: statistics.median(v) for name, v in got.items()}
            ratio = med["integrity+redact"] / med["baseline"]
            print(json.dumps({"stream": stream, "runs": got, "median": med, "ratio": ratio}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
