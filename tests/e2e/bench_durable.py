"""Durable vs best_effort: throughput and p99 at concurrency 64, stream and non-stream.

Not a test (pytest does not collect it): run ``.venv/bin/python -m tests.e2e.bench_durable``.
Each round starts a gateway (mock engine, no delays, sink ``sqlite``, spool on the real disk)
pinned to CPU 0 and drives it with ``bench/loadgen.py`` pinned to CPU 1; modes are interleaved
and repeated so drift on a shared machine hits both alike.  Prints one JSON line per run and a
median summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.gateway import start_gateway

ROOT = Path(__file__).resolve().parents[2]


def run_once(mode: str, stream: bool, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "sqlite",
        "DYN_AUDIT_SQLITE_PATH": str(work / f"{mode}.db"),
        "DYN_AUDIT_DURABILITY": mode,
        "DYN_AUDIT_SPOOL_DIR": str(work / f"spool-{mode}"),
        "AUDITGATE_LOG_LEVEL": "warning",
    }
    gateway = start_gateway(env, log_dir=work)
    try:
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(gateway.process.pid)], check=True,
                       capture_output=True)  # fmt: skip
        argv = [
            "taskset", "-c", "1", sys.executable, "-m", "bench.loadgen",
            "--url", gateway.url, "--concurrency", str(a.concurrency),
            "--duration", str(a.duration), "--warmup", str(a.warmup),
            "--pid", str(gateway.process.pid),
        ] + (["--stream"] if stream else [])  # fmt: skip
        out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT)
        result: dict[str, Any] = json.loads(out.stdout)
    finally:
        gateway.stop()
    result.update(mode=mode, stream=stream)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:  # /tmp is on the disk here (ext4), not tmpfs
        for _ in range(a.repeat):
            for stream in (False, True):
                for mode in ("best_effort", "durable"):
                    result = run_once(mode, stream, a, Path(tmp))
                    print(json.dumps(result), flush=True)
                    runs.append(result)
    print("\nmode         stream  rps (median)  p99 ms (median)  errors")
    for stream in (False, True):
        for mode in ("best_effort", "durable"):
            mine = [r for r in runs if r["mode"] == mode and r["stream"] == stream]
            rps = statistics.median(r["rps"] for r in mine)
            p99 = statistics.median(r["latency_p99_ms"] for r in mine)
            errors = sum(int(r.get("errors") or 0) for r in mine)
            print(f"{mode:<12} {stream!s:<7} {rps:>12.1f}  {p99:>15.2f}  {errors}")


if __name__ == "__main__":
    main()
