"""The audit in its own process (``DYN_AUDIT_PROCESS=1``) against in-process, in one run.

``python bench/offload.py [--engine mock] [--audit jsonl] [--rounds 5] [--duration 3]
[--concurrency 16 64] [--helper-cpus 1] [--rate R]``

Three gateways run side by side, each pinned to the server CPU (as :mod:`bench.run` does):
audit off, audit ``--audit`` in-process, and the same with ``DYN_AUDIT_PROCESS=1``, whose audit
process runs on ``--helper-cpus`` (``DYN_AUDIT_PROCESS_CPUS``; default the client CPU, the only
other core of a 2-core machine; ``0`` puts it on the serving core).  Only one gateway is loaded at a
time, by :mod:`bench.loadgen` on the client CPU; every round loads each gateway with every
workload (non-stream and stream, each concurrency), the gateways' order rotating from round to
round, so a machine whose speed drifts moves all three alike.

Per cell it prints the medians over the rounds: requests per second and their share of audit
off (closed loop; with ``--rate``, open loop at that rate for all three: then compare the CPU
per request, at equal load); CPU per request of the gateway process alone (the serving core's)
and of its whole tree (with the audit process); latency p50 and p99; peak RSS of both, and at
the end the PSS of each tree (shared pages counted once); the client's CPU use (near 1.0: the
generator was the limit).
The gateways' ``/metrics`` are checked at the end: nothing dropped.  The result
goes to stdout as a Markdown table and a JSON line.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import dataclasses
import json
import statistics
import subprocess
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import procfs, servers
from bench.servers import CLIENT_CPUS, PYTHON, ROOT, Context, Running

HELPER = "auditgate.audit.process.helper"


def helper_pids(running: Running) -> list[int]:
    """The audit processes of a running gateway (its children running :data:`HELPER`)."""
    found = []
    for pid in procfs.process_tree(running.pids):
        if pid in running.pids:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if HELPER.encode() in cmdline:
            found.append(pid)
    return found


def load(
    running: Running, stream: bool, concurrency: int, duration: float, rate: float | None
) -> Any:
    argv = [
        PYTHON, str(ROOT / "bench" / "loadgen.py"), "--url", running.url,
        "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "0.5",
        "--pid", str(running.pids[0]),
    ] + (["--stream"] if stream else [])  # fmt: skip
    if rate is not None:
        argv += ["--rate", str(rate)]
    done = subprocess.run(
        servers.pinned(CLIENT_CPUS, argv), capture_output=True, timeout=duration + 60, check=True
    )
    return json.loads(done.stdout)


def dropped(running: Running) -> float:
    """``auditgate_audit_dropped_total``, summed, from the gateway's ``/metrics``."""
    assert running.metrics_url is not None
    with urllib.request.urlopen(running.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("auditgate_audit_dropped_total{")
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--engine", choices=("mock", "openai"), default="mock")
    p.add_argument("--audit", default="jsonl", help="the sink")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--helper-cpus", default=CLIENT_CPUS)
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop at this many requests/s (same load for every gateway: CPU per request "
        "compares at equal load, whatever the audit process takes from the client CPU)",
    )
    a = p.parse_args(argv)
    off, inproc = servers.auditgate_scenarios([a.engine], ["off", a.audit])
    env = (("DYN_AUDIT_PROCESS", "1"), ("DYN_AUDIT_PROCESS_CPUS", a.helper_cpus))
    process = dataclasses.replace(inproc, env=env)
    names = {"off": off, "in-process": inproc, "process": process}
    cells = [(stream, c) for stream in (False, True) for c in a.concurrency]
    rows: dict[tuple[str, bool, int], list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="agbench-offload-") as tmp,
        servers.fake_upstream(Path(tmp)) as upstream_url,
    ):
        ctx = Context(Path(tmp), upstream_url)
        running: dict[str, Running] = {}
        try:
            for name, scenario in names.items():
                running[name] = scenario.start(ctx)
            assert helper_pids(running["process"]), "no audit process"
            order = list(names)
            for round_ in range(a.rounds):
                turn = order[round_ % 3 :] + order[: round_ % 3]
                for stream, concurrency in cells:
                    for name in turn:
                        result = load(running[name], stream, concurrency, a.duration, a.rate)
                        if result["errors"]:
                            raise SystemExit(f"{name}: errors {result['error_kinds']}")
                        rows.setdefault((name, stream, concurrency), []).append(result)
                print(f"round {round_ + 1} of {a.rounds} done", flush=True)
            drops = {name: dropped(r) for name, r in running.items()}
            memory = {name: memory_of(r) for name, r in running.items()}
        finally:
            for r in running.values():
                r.stop()
    report(a, cells, rows, drops, memory)


def memory_of(running: Running) -> dict[str, float]:
    """MB now: RSS of the gateway, RSS summed over its tree, PSS summed over its tree (shared
    pages — the interpreter, the libraries — counted once)."""
    tree = procfs.process_tree(running.pids)
    rss = {pid: procfs.peak_rss_bytes(pid) / 2**20 for pid in tree}
    return {
        "rss_gateway": round(rss[running.pids[0]], 1),
        "rss_tree": round(sum(rss.values()), 1),
        "pss_tree": round(sum(procfs.pss_bytes(pid) for pid in tree) / 2**20, 1),
    }


def median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in results)


def report(
    a: argparse.Namespace,
    cells: list[tuple[bool, int]],
    rows: dict[tuple[str, bool, int], list[dict[str, Any]]],
    drops: dict[str, float],
    memory: dict[str, dict[str, float]],
) -> None:
    load = "closed loop" if a.rate is None else f"open loop at {a.rate:.0f} req/s"
    print(f"\nengine {a.engine}, sink {a.audit}, audit process on CPU {a.helper_cpus}, {load}, "
          f"{a.rounds} rounds of {a.duration:.0f} s; dropped: {drops}\n")  # fmt: skip
    print("| cell | audit | req/s | share of off | serving CPU µs/req | tree CPU µs/req "
          "| p50 / p99 ms | RSS serving / tree MB | client CPU |")  # fmt: skip
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    summary = []
    for stream, concurrency in cells:
        base = median(rows[("off", stream, concurrency)], "rps")
        for name in ("off", "in-process", "process"):
            results = rows[(name, stream, concurrency)]
            rps = median(results, "rps")
            root = median(results, "server_root_cpu_ms_per_req") * 1000
            tree = median(results, "server_cpu_ms_per_req") * 1000
            rss_root = max(float(r["server_root_peak_rss_mb"]) for r in results)
            rss_tree = max(float(r["server_peak_rss_mb"]) for r in results)
            client = median(results, "client_cpu_util")
            p50 = median(results, "latency_p50_ms")
            p99 = median(results, "latency_p99_ms")
            cell = f"{'stream' if stream else 'json'} c={concurrency}"
            print(f"| {cell} | {name} | {rps:.0f} | {rps / base:.0%} | {root:.0f} | {tree:.0f} "
                  f"| {p50:.2f} / {p99:.1f} | {rss_root:.0f} / {rss_tree:.0f} "
                  f"| {client:.2f} |")  # fmt: skip
            summary.append({"cell": cell, "audit": name, "rps": rps, "share": rps / base,
                            "serving_us": root, "tree_us": tree, "rss_mb": rss_tree})  # fmt: skip
    print("\npeak RSS of the gateway / RSS of its tree / PSS of its tree, MB:")
    for name, mb in memory.items():
        print(f"- {name}: {mb['rss_gateway']:.0f} / {mb['rss_tree']:.0f} / {mb['pss_tree']:.0f}")
    print(json.dumps({"engine": a.engine, "sink": a.audit, "helper_cpus": a.helper_cpus,
                      "dropped": drops, "memory": memory, "cells": summary}))  # fmt: skip


if __name__ == "__main__":
    main()
