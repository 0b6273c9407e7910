"""Two endpoints of ONE gateway, alternated: the CPU per request of one against the other.

``python -m bench.paired --engine openai --path /v1/responses [--against /v1/chat/completions]
[--stream] [--concurrency 16] [--rounds 8] [--duration 2]``

One gateway process (pinned to the server CPU, ``jsonl`` audit unless ``--audit``) serves both
endpoints; :mod:`bench.loadgen` (on the client CPU) loads one, then the other, ``rounds`` times.
A machine whose speed drifts (a shared VM) moves both alike within a round, so the per-round
ratio of ``server_cpu_ms_per_req`` is steadier than two scenarios measured minutes apart, as
``bench.run`` does.  Prints each round and the medians as one JSON line at the end.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import servers
from bench.servers import CLIENT_CPUS, PYTHON, ROOT, Context, Running


def load(running: Running, path: str, stream: bool, concurrency: int, duration: float) -> Any:
    """One :mod:`bench.loadgen` run against ``path``; its JSON result."""
    argv = [
        PYTHON, str(ROOT / "bench" / "loadgen.py"), "--url", running.url, "--path", path,
        "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "0.5",
        "--pid", str(running.pids[0]),
    ] + (["--stream"] if stream else [])  # fmt: skip
    done = subprocess.run(
        servers.pinned(CLIENT_CPUS, argv), capture_output=True, timeout=duration + 60, check=True
    )
    return json.loads(done.stdout)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--engine", choices=("mock", "openai"), default="mock")
    p.add_argument("--audit", default="jsonl", help="off or a sink name")
    p.add_argument("--path", default="/v1/responses")
    p.add_argument("--against", default=servers.CHAT)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--duration", type=float, default=2.0)
    a = p.parse_args(argv)
    ratios: list[float] = []
    cpu: dict[str, list[float]] = {a.path: [], a.against: []}
    with (
        tempfile.TemporaryDirectory(prefix="agbench-paired-") as tmp,
        servers.fake_upstream(Path(tmp)) as upstream_url,
    ):
        (scenario,) = servers.auditgate_scenarios([a.engine], [a.audit])
        running = scenario.start(Context(Path(tmp), upstream_url))
        try:
            for round_ in range(a.rounds):
                # Alternate which goes first, so neither always follows the other.
                order = [a.path, a.against] if round_ % 2 == 0 else [a.against, a.path]
                got = {}
                for path in order:
                    result = load(running, path, a.stream, a.concurrency, a.duration)
                    if result["errors"]:
                        raise SystemExit(f"{path}: errors {result['error_kinds']}")
                    got[path] = result["server_cpu_ms_per_req"]
                    cpu[path].append(got[path])
                ratios.append(got[a.path] / got[a.against])
                print(
                    f"round {round_ + 1}: {a.path} {got[a.path] * 1000:.0f} us, "
                    f"{a.against} {got[a.against] * 1000:.0f} us, ratio {ratios[-1]:.3f}",
                    flush=True,
                )
        finally:
            running.stop()
    summary = {
        "engine": a.engine,
        "audit": a.audit,
        "stream": a.stream,
        "concurrency": a.concurrency,
        "path": a.path,
        "against": a.against,
        "cpu_us_per_req": {k: round(statistics.median(v) * 1000, 1) for k, v in cpu.items()},
        "median_ratio": round(statistics.median(ratios), 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
