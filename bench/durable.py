"""Durable vs best_effort: throughput and p99 at concurrency 64, stream and non-stream.

run ``.venv/bin/python -m bench.durable``
(``--sinks sqlite jsonl`` to compare against each sink; ``--profile DIR`` to record a py-spy
profile of every run's server).  Each round starts a gateway (mock engine, no delays,
spool on the real disk) pinned to CPU 0, its child processes too, and drives it with
``bench/loadgen.py`` pinned to CPU 1; modes are interleaved and repeated so drift on a shared
machine hits both alike.  Prints one JSON line per run (durable runs add ``commits``: group
commits, i.e. fdatasyncs, in the run) and a summary: medians per arm, and durable's cost
as the median of each round's paired ratio to best_effort.

``--rate R``: open loop instead (R requests due per second, see :mod:`bench.loadgen`): below
saturation the cost shows as CPU per request and latency rather than throughput.

``--simultaneous``: each round runs every arm *at the same time* instead: all gateways on CPU 0,
each process tree in its own ``cpu`` cgroup (equal shares, so each arm gets the same CPU time
when all are busy), all loads on CPU 1.  A shared VM's speed can change by half from one second to
the next; back-to-back runs see different machines, simultaneous ones the same, so the
throughput ratio (the CPU each mode needs per request) is repeatable to about a point, where
back-to-back rounds scatter by ±10.  Latency in this method is that of a fraction of a core: use
the default method for absolute req/s and p99.  Needs a writable cgroup ``cpu`` controller (v1
``/sys/fs/cgroup/cpu`` or v2), i.e. root on most machines.

``--set KEY=VALUE``: a server setting for every arm (``AUDITGATE_MOCK_TTFT_MS=20
AUDITGATE_MOCK_ITL_MS=1`` for token-by-token streams at a model's pace).

``--multiprocess-metrics``: also run both modes with Prometheus' multiprocess mode on (as every
``serve --workers N`` process runs: each metric update goes to an mmap'd file), arms
``best_effort+mpm`` and ``durable+mpm``; their cost is against plain ``best_effort``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.gateway import Gateway, start_gateway

from bench import procfs

ROOT = Path(__file__).resolve().parents[1]
PY_SPY = Path(sys.executable).with_name("py-spy")


def sink_env(sink: str, mode: str, work: Path) -> dict[str, str]:
    """Environment selecting ``sink`` with its files under ``work``."""
    env = {"DYN_AUDIT_SINKS": sink}
    if sink == "sqlite":
        env["DYN_AUDIT_SQLITE_PATH"] = str(work / f"{mode}.db")
    elif sink == "jsonl":
        env["DYN_AUDIT_OUTPUT_PATH"] = str(work / f"{mode}.jsonl")
    else:
        raise SystemExit(f"unsupported sink {sink!r} (sqlite or jsonl)")
    return env


def thread_cpu(pid: int) -> dict[str, tuple[float, float, int]]:
    """``(user s, system s, context switches)`` of each thread of a process and of its child
    processes (the spool's syncer), by ``tid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, float, int]] = {}
    tasks = [t for member in procfs.process_tree([pid]) for t in _tasks(member)]
    for task in tasks:
        try:
            raw = (task / "stat").read_text()
            status = (task / "status").read_text()
        except FileNotFoundError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        switches = sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line
        )
        out[task.name] = (int(fields[11]) / tick, int(fields[12]) / tick, switches)
    return out


def _tasks(pid: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []


def cpu_by_thread(
    pid: int,
    before: dict[str, tuple[float, float, int]],
    after: dict[str, tuple[float, float, int]],
    requests: int,
) -> dict[str, list[float]]:
    """Per thread (``main`` or its tid): user ms, system ms and context switches per request
    between two :func:`thread_cpu` snapshots."""
    out: dict[str, list[float]] = {}
    n = max(requests, 1)
    for tid, (user, system, switches) in after.items():
        user0, system0, switches0 = before.get(tid, (0.0, 0.0, 0))
        row = [(user - user0) * 1000 / n, (system - system0) * 1000 / n, (switches - switches0) / n]
        if any(row):
            out["main" if tid == str(pid) else tid] = [round(v, 4) for v in row]
    return out


MPM = "+mpm"
"""Suffix of an arm whose gateway keeps its metrics in multiprocess mode."""


def durability_of(arm: str) -> str:
    """``best_effort`` or ``durable``: what an arm's name says."""
    return "best_effort" if arm.startswith("best_effort") else "durable"


def start(
    sink: str,
    arm: str,
    work: Path,
    source: str | None,
    group: CpuGroup | None = None,
    settings: dict[str, str] | None = None,
) -> Gateway:
    """A gateway for ``arm`` with its files under ``work`` and ``settings`` (``--set``) added,
    pinned (with every child process) to CPU 0, and moved into ``group`` when given."""
    mode = durability_of(arm)
    if arm.endswith(MPM):  # a fresh directory, as serve makes for --workers N
        metrics_dir = work / "metrics"
        metrics_dir.mkdir()
        metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    else:
        metrics_env = {}
    env = {
        **metrics_env,
        **({"PYTHONPATH": source} if source else {}),
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_DURABILITY": mode,
        "DYN_AUDIT_SPOOL_DIR": str(work / f"spool-{mode}"),
        "AUDITGATE_LOG_LEVEL": "warning",
        **sink_env(sink, mode, work),
        **(settings or {}),
    }
    gateway = start_gateway(env, log_dir=work)
    try:
        for member in procfs.process_tree([gateway.process.pid]):  # the spool's writer too
            if group is not None:
                group.add(member)
            subprocess.run(
                ["taskset", "-a", "-p", "-c", "0", str(member)], check=True, capture_output=True
            )
    except BaseException:
        gateway.stop()
        raise
    return gateway


def load(gateway: Gateway, stream: bool, a: argparse.Namespace) -> subprocess.Popen[str]:
    """``bench.loadgen`` against ``gateway``, pinned to CPU 1."""
    argv = [
        "taskset", "-c", "1", sys.executable, "-m", "bench.loadgen",
        "--url", gateway.url, "--concurrency", str(a.concurrency),
        "--duration", str(a.duration), "--warmup", str(a.warmup),
        "--pid", str(gateway.process.pid),
    ] + (["--stream"] if stream else []) + (["--rate", str(a.rate)] if a.rate else [])  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def result_of(
    gateway: Gateway, loadgen: subprocess.Popen[str], before: dict[str, Any], a: argparse.Namespace
) -> dict[str, Any]:
    """Wait for ``loadgen``; its JSON result plus per-thread CPU and the spool's commits."""
    stdout, _ = loadgen.communicate()
    after = thread_cpu(gateway.process.pid)
    if loadgen.returncode:
        raise SystemExit(f"loadgen failed ({loadgen.returncode})")
    result: dict[str, Any] = json.loads(stdout)
    result["cpu_ms_per_req_by_thread"] = cpu_by_thread(
        gateway.process.pid, before, after, int(result["rps"] * a.duration)
    )
    match = re.search(r"^\w*audit_spool_commits_total (\S+)$", gateway.metrics(), re.M)
    if match is not None:
        result["commits"] = int(float(match.group(1)))
    return result


def run_once(
    sink: str, mode: str, stream: bool, a: argparse.Namespace, work: Path, source: str | None
) -> dict[str, Any]:
    """One arm alone: start, load, measure, stop."""
    gateway = start(sink, mode, work, source, settings=a.settings)
    spy = None
    try:
        loadgen = load(gateway, stream, a)
        if a.profile is not None:
            kind = "stream" if stream else "json"
            out_path = a.profile / f"{sink}-{kind}-{mode}-{len(a.runs)}.txt"
            spy = subprocess.Popen(
                [str(PY_SPY), "record", "--format", "raw", "-r", "250",
                 "--pid", str(gateway.process.pid), "--duration", str(int(a.duration)),
                 "--threads", "-o", str(out_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        time.sleep(a.warmup)
        result = result_of(gateway, loadgen, thread_cpu(gateway.process.pid), a)
    finally:
        if spy is not None:
            spy.wait(60)
        gateway.stop()
    result.update(sink=sink, stream=stream)
    return result


def run_together(
    sink: str,
    arms: list[tuple[str, str | None]],
    stream: bool,
    a: argparse.Namespace,
    work: Path,
) -> list[dict[str, Any]]:
    """Every arm at once, each gateway in its own cpu cgroup (``--simultaneous``)."""
    gateways: list[Gateway] = []
    groups: list[CpuGroup] = []
    try:
        for index, (arm, source) in enumerate(arms):
            arm_work = work / f"arm-{index}"
            arm_work.mkdir()
            groups.append(CpuGroup(f"agbench-{os.getpid()}-{index}"))
            gateways.append(start(sink, arm, arm_work, source, groups[-1], a.settings))
        loads = [load(gateway, stream, a) for gateway in gateways]
        time.sleep(a.warmup)
        before = [thread_cpu(gateway.process.pid) for gateway in gateways]
        results = [
            result_of(gateway, loadgen, cpu, a)
            for gateway, loadgen, cpu in zip(gateways, loads, before, strict=True)
        ]
    finally:
        for gateway in gateways:
            gateway.stop()
        for group in groups:
            group.remove()
    for result in results:
        result.update(sink=sink, stream=stream)
    return results


class CpuGroup:
    """A ``cpu`` cgroup with the default weight (every group alike gets an equal CPU share)."""

    def __init__(self, name: str) -> None:
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        if v1.is_dir():
            self.path = v1 / name
        elif "cpu" in (v2 / "cgroup.controllers").read_text().split():
            (v2 / "cgroup.subtree_control").write_text("+cpu")
            self.path = v2 / name
        else:
            raise SystemExit("--simultaneous needs the cgroup cpu controller")
        try:
            self.path.mkdir()
        except PermissionError:
            raise SystemExit(f"--simultaneous: cannot create {self.path} (run as root)") from None

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads; what it starts later follows it)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """Delete the group (its processes have exited)."""
        for _ in range(50):  # an exited process leaves its group a moment later
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"warning: could not remove {self.path}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: requests due per second per arm (compare CPU per request and latency "
        "below saturation; --concurrency is then the connection pool)",
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sinks", nargs="+", default=["sqlite"], help="sqlite and/or jsonl")
    p.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles go here")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="[MODE:]NAME=SRC",
        help="also run MODE (durable unless best_effort: is given) with PYTHONPATH=SRC (a copy "
        "of src/ to compare; repeatable)",
    )
    p.add_argument(
        "--simultaneous",
        action="store_true",
        help="run the arms of a round at the same time, in equal cpu cgroups (see above)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server setting for every arm, e.g. AUDITGATE_MOCK_ITL_MS=1 (repeatable)",
    )
    p.add_argument(
        "--multiprocess-metrics",
        action="store_true",
        help="also run both modes with Prometheus multiprocess metrics (as --workers N does)",
    )
    a = p.parse_args()
    a.settings = dict(kv.split("=", 1) for kv in a.set)
    runs: list[dict[str, Any]] = []
    a.runs = runs
    variants = [tuple(v.split("=", 1)) for v in a.variant]
    arms: list[tuple[str, str | None]] = [("best_effort", None), ("durable", None)]
    arms += [(name if ":" in name else f"durable:{name}", source) for name, source in variants]
    if a.multiprocess_metrics:
        arms += [("best_effort" + MPM, None), ("durable" + MPM, None)]
    if a.profile is not None:
        a.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # /tmp is on the disk here (ext4), not tmpfs
        for round_ in range(a.repeat):
            for sink in a.sinks:
                for stream in (False, True):
                    if a.simultaneous:
                        work = Path(tmp) / f"{len(runs)}"
                        work.mkdir()
                        results = run_together(sink, arms, stream, a, work)
                        for (mode, _), result in zip(arms, results, strict=True):
                            result.update(mode=mode, round=round_)
                            print(json.dumps(result), flush=True)
                            runs.append(result)
                        continue
                    # Alternate the order, so drift within a round favours neither mode.
                    for mode, source in arms if round_ % 2 == 0 else arms[::-1]:
                        work = Path(tmp) / f"{len(runs)}"
                        work.mkdir()
                        result = run_once(sink, mode, stream, a, work, source)
                        result.update(mode=mode, round=round_)
                        print(json.dumps(result), flush=True)
                        runs.append(result)
    summarize(runs, a.sinks, [mode for mode, _ in arms])
    if a.simultaneous:
        print(
            f"(--simultaneous: the {len(arms)} arms shared CPU 0 in equal cgroups; req/s and "
            "p99 are those of a share of a core, the cost ratios are the result)"
        )


def summarize(runs: list[dict[str, Any]], sinks: list[str], modes: list[str]) -> None:
    """Medians per arm, and durable's cost as the median over rounds of each round's own
    ratio to best_effort (a round's runs are back to back, so machine drift between rounds
    cancels out of the ratio)."""
    print(
        "\nsink    mode              stream   rps (median)  p99 ms  cpu ms/req  errors  "
        "rps cost  p99 +ms  cpu cost  (paired, median over rounds)"
    )
    for sink in sinks:
        for stream in (False, True):
            base = {r["round"]: r for r in runs if (r["sink"], r["mode"], r["stream"]) == (
                sink, "best_effort", stream)}  # fmt: skip
            for mode in modes:
                mine = [
                    r for r in runs if (r["sink"], r["mode"], r["stream"]) == (sink, mode, stream)
                ]
                rps = statistics.median(r["rps"] for r in mine)
                p99 = statistics.median(r["latency_p99_ms"] for r in mine)
                cpu = statistics.median(r["server_cpu_ms_per_req"] for r in mine)
                errors = sum(int(r.get("errors") or 0) for r in mine)
                cost = ""
                if mode != "best_effort":
                    pairs = [(r, base[r["round"]]) for r in mine if r["round"] in base]
                    rps_cost = statistics.median(1 - r["rps"] / b["rps"] for r, b in pairs)
                    p99_more = statistics.median(
                        r["latency_p99_ms"] - b["latency_p99_ms"] for r, b in pairs
                    )
                    cpu_more = statistics.median(
                        r["server_cpu_ms_per_req"] / b["server_cpu_ms_per_req"] - 1
                        for r, b in pairs
                    )
                    cost = f"{rps_cost:>8.1%}  {p99_more:>+7.2f}  {cpu_more:>+8.1%}"
                print(
                    f"{sink:<7} {mode:<17} {stream!s:<7} {rps:>12.1f}  {p99:>6.2f}  {cpu:>10.4f}  "
                    f"{errors:>6}  {cost}"
                )


if __name__ == "__main__":
    main()
