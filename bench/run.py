"""Run a benchmark suite: ``python bench/run.py --suite quick|full [--duration S] [--repeat K]``.

For each repeat, every scenario in turn (A B C … A B C …, so slow drift hits all alike) is
started pinned to CPU 0, driven by :mod:`bench.loadgen` pinned to CPU 1 through every workload
(non-stream and stream, each concurrency), checked for audit delivery, and stopped.  Rows go to
``bench/results.jsonl`` (appended); medians, ratios and the target checks of issue 6 go to
``bench/RESULTS.md`` (rewritten), together with the machine, the versions and the date.
See ``bench/RESULTS.md`` for what each suite holds and how long it takes.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import report, servers
from bench.servers import (
    CLIENT_CPUS,
    PYTHON,
    ROOT,
    Context,
    Running,
    Scenario,
    StartError,
)

BENCH = ROOT / "bench"
MARKER = "<!-- everything below is written by bench/run.py -->"
SINKS = ("stderr", "jsonl", "jsonl_gz", "sqlite", "postgres", "nats")
LEGACY = "/v1/completions"
RESPONSES = "/v1/responses"
"""The Responses API (translated to the engine's chat completions), set against chat."""


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    scenarios: list[Scenario]
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    repeat: int
    sink_seconds: float
    """Seconds per sink (and per raw writer) in the sink micro-bench; 0 skips it."""


def build_suite(name: str, peers: Sequence[str]) -> Suite:
    # Quick: off, jsonl (the overhead target) and stderr (the sink Dynamo's audit uses).
    quick = ["off", "stderr", "jsonl"]
    mock = servers.auditgate_scenarios(["mock"], quick if name == "quick" else ["off", *SINKS])
    openai = servers.auditgate_scenarios(["openai"], ["off", "jsonl"])
    # Legacy completions, to compare their CPU per request with chat's (same engine, same sink).
    legacy = servers.auditgate_scenarios(["mock", "openai"], ["off", "jsonl"], LEGACY)
    # The Responses API (translated to the engine's chat completions), to set against chat.
    responses = servers.auditgate_scenarios(["mock", "openai"], ["jsonl"], RESPONSES)
    peer_scenarios: list[Scenario] = []
    if peers:
        from bench import peers as peer_module

        peer_scenarios = peer_module.scenarios(peers)
    scenarios = mock + openai + legacy + responses + peer_scenarios
    if name == "quick":
        return Suite(name, scenarios, (1, 16, 64), 2.0, 0.5, 2, 1.0)
    return Suite(name, scenarios, (1, 16, 64), 5.0, 1.0, 3, 3.0)


def loadgen(
    running: Running, stream: bool, concurrency: int, suite: Suite, path: str = servers.CHAT
) -> dict[str, Any]:
    """One :mod:`bench.loadgen` run on the client CPU, at ``path``; its JSON result."""
    argv = [
        PYTHON, str(BENCH / "loadgen.py"), "--url", running.url, "--model", running.model,
        "--path", path,
        "--concurrency", str(concurrency), "--duration", str(suite.duration_s),
        "--warmup", str(suite.warmup_s), "--timeout", "30",
    ]  # fmt: skip
    if stream:
        argv.append("--stream")
    for pid in running.pids:
        argv += ["--pid", str(pid)]
    for name, value in running.headers:
        argv += ["--header", f"{name}: {value}"]
    budget = suite.warmup_s + suite.duration_s + 60
    done = subprocess.run(
        servers.pinned(CLIENT_CPUS, argv), capture_output=True, timeout=budget, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def delivery(running: Running, settle_s: float = 10.0) -> dict[str, float] | None:
    """``auditgate_audit_*`` totals once every sink queue is empty (or after ``settle_s``)."""
    if running.metrics_url is None:
        return None
    deadline = time.monotonic() + settle_s
    while True:
        with urllib.request.urlopen(running.metrics_url, timeout=5) as response:
            text = response.read().decode()
        totals = {"published": 0.0, "written": 0.0, "dropped": 0.0, "queued": 0.0}
        names = {
            "auditgate_audit_records_total": "published",
            "auditgate_audit_written_total": "written",
            "auditgate_audit_dropped_total": "dropped",
            "auditgate_audit_queue_depth": "queued",
        }
        for line in text.splitlines():
            metric = line.split("{", 1)[0].split(" ", 1)[0]
            if metric in names:
                totals[names[metric]] += float(line.rsplit(" ", 1)[1])
        settled = totals["written"] + totals["dropped"] >= totals["published"]
        if (totals["queued"] == 0 and settled) or time.monotonic() > deadline:
            return totals
        time.sleep(0.25)


def run_scenario(
    scenario: Scenario, suite: Suite, ctx: Context, base: dict[str, Any], emit: Any
) -> None:
    """Start one scenario, run every workload against it, record delivery, stop it."""
    print(f"  {scenario.name}", flush=True)
    try:
        running = scenario.start(ctx)
    except StartError as exc:
        print(f"    did not start: {str(exc).splitlines()[0]}", flush=True)
        emit(
            {
                **base,
                "kind": "server",
                "scenario": scenario.name,
                "error": str(exc),
                "delivery": None,
            }
        )
        return
    error = None
    try:
        for stream in (False, True):
            for conc in suite.concurrency:
                result = loadgen(running, stream, conc, suite, scenario.path)
                mode = "stream" if stream else "json  "
                print(
                    f"    {mode} c={conc:<3} {result['rps']:>9.1f} req/s "
                    f"p50 {result['latency_p50_ms']} ms p99 {result['latency_p99_ms']} ms "
                    f"cpu {result['server_cpu_ms_per_req']} ms/req errors {result['errors']}",
                    flush=True,
                )
                emit(
                    {
                        **base,
                        "kind": "load",
                        "scenario": scenario.name,
                        "system": scenario.system,
                        "engine": scenario.engine,
                        "audit": scenario.audit,
                        **result,
                    }
                )
        totals = delivery(running) if scenario.audit != "off" else None
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        # One broken scenario must not lose the rest of the run: record why and go on.
        error, totals = f"failed under load: {exc}", None
        print(f"    {error.splitlines()[0]}", flush=True)
    finally:
        running.stop()
    emit({**base, "kind": "server", "scenario": scenario.name, "error": error, "delivery": totals})


def run_sinks(suite: Suite, base: dict[str, Any], emit: Any) -> None:
    """The sink micro-bench (:mod:`bench.sinks`) pinned to the server CPU."""
    argv = [PYTHON, str(BENCH / "sinks.py"), "--seconds", str(suite.sink_seconds)]
    print("sink micro-bench", flush=True)
    done = subprocess.run(
        servers.pinned(servers.SERVER_CPUS, argv),
        capture_output=True,
        timeout=60 + 30 * suite.sink_seconds,
        check=False,
    )
    for line in done.stdout.decode().splitlines():
        row = json.loads(line)
        print(f"  {row['sink']}: {row['sink_rps']} vs raw {row['raw_rps']} {row.get('note') or ''}")
        emit({**base, "kind": "sink", **row})
    if done.returncode != 0:  # a crash of the bench itself: record it, keep the rows it printed
        error = done.stderr.decode().strip().splitlines()[-1:] or ["(no output)"]
        print(f"  sink micro-bench failed: {error[0]}", flush=True)
        emit({**base, "kind": "sink", "sink": "(bench)", "record_bytes": None, "batch": None,
              "sink_rps": None, "raw_rps": None, "note": f"crashed: {error[0]}"})  # fmt: skip


def versions(peers: Sequence[str]) -> dict[str, str]:
    git = ["git", "-C", str(ROOT)]
    sha = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=True
    ).stdout.strip()
    found = {"python": platform.python_version(), "auditgate": sha + ("+dirty" if dirty else "")}
    for dist in (
        "uvicorn",
        "uvloop",
        "httptools",
        "starlette",
        "msgspec",
        "aiohttp",
        "asyncpg",
        "nats-py",
    ):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "absent"
    if peers:
        from bench import peers as peer_module

        found |= peer_module.versions(peers)
    return found


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import os

    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release()}


def write_markdown(
    path: Path, suite: Suite, rows: list[dict[str, Any]], info: dict[str, Any]
) -> None:
    summary = report.summarize(rows)
    # Everything above the marker is the hand-written header (how to run, what is measured).
    header = path.read_text().split(MARKER, 1)[0] if path.exists() else ""
    out = [header.rstrip(), "", MARKER, ""]
    out += [
        f"## Latest run: suite `{suite.name}`, {info['date']}",
        "",
        f"Machine: {info['machine']['nproc']} CPUs, {info['machine']['cpu']}, Linux "
        f"{info['machine']['kernel']}. Server on CPU 0, load generator and fake upstream on CPU 1.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
        "",
        f"Each cell: median of {suite.repeat} interleaved repeats, {suite.warmup_s:g} s warm-up + "
        f"{suite.duration_s:g} s measured; `store: true`, `max_tokens` 16; "
        f"run `{info['run_id']}` in `bench/results.jsonl`.",
        "",
        "### Targets (issue 6)",
        "",
        *report.targets(summary, rows),
        "",
        "### Throughput, latency, server CPU and memory",
        "",
        *report.load_table(summary),
        "",
        "### Servers: start errors and audit delivery (summed over repeats)",
        "",
        *report.server_table(rows),
        "",
    ]
    sinks = report.sink_table(rows)
    if sinks:
        out += ["### Sink micro-bench (~4 KiB records)", "", *sinks, ""]
    path.write_text("\n".join(out))


def report_only(results: Path, markdown: Path, run_id: str) -> int:
    """Rewrite the Markdown from the rows of run ``run_id`` in ``results``."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("run_id") == run_id]
    head = next((r for r in rows if r["kind"] == "run"), None)
    if head is None:
        raise SystemExit(f"run {run_id!r} not found in {results}")
    settings = head["suite_settings"]
    suite = Suite(
        head["suite"], [], tuple(settings["concurrency"]), settings["duration_s"],
        settings["warmup_s"], settings["repeat"], 0,
    )  # fmt: skip
    write_markdown(markdown, suite, rows, head["info"])
    print(f"wrote {markdown} for run {run_id}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--suite", choices=("quick", "full"), default="quick")
    p.add_argument("--duration", type=float, help="measured seconds per workload")
    p.add_argument("--warmup", type=float, help="warm-up seconds per workload")
    p.add_argument("--repeat", type=int, help="interleaved repeats")
    p.add_argument("--only", action="append", default=[], help="keep scenarios whose name has this")
    p.add_argument("--peers", default=None, help="comma list: dynamo-0.7.1,dynamo-1.6.1,litellm")
    p.add_argument("--no-sinks", action="store_true", help="skip the sink micro-bench")
    p.add_argument("--results", type=Path, default=BENCH / "results.jsonl")
    p.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md")
    p.add_argument("--report", metavar="RUN_ID", help="only rewrite the Markdown of a past run")
    a = p.parse_args(argv)
    if a.report:
        return report_only(a.results, a.markdown, a.report)
    default_peers = "dynamo-0.7.1,dynamo-1.6.1,litellm" if a.suite == "full" else ""
    peers = [x for x in (a.peers if a.peers is not None else default_peers).split(",") if x]
    suite = build_suite(a.suite, peers)
    suite = dataclasses.replace(
        suite,
        duration_s=a.duration or suite.duration_s,
        warmup_s=a.warmup if a.warmup is not None else suite.warmup_s,
        repeat=a.repeat or suite.repeat,
        sink_seconds=0 if a.no_sinks else suite.sink_seconds,
        scenarios=[s for s in suite.scenarios if not a.only or any(o in s.name for o in a.only)],
    )
    info: dict[str, Any] = {
        "run_id": uuid.uuid4().hex[:12],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(peers),
    }
    base = {"run_id": info["run_id"], "suite": suite.name, "date": info["date"]}
    rows: list[dict[str, Any]] = []

    with a.results.open("a") as results:

        def emit(row: dict[str, Any]) -> None:
            rows.append(row)
            results.write(json.dumps(row) + "\n")
            results.flush()

        settings = {
            "scenarios": [s.name for s in suite.scenarios],
            "concurrency": suite.concurrency,
            "duration_s": suite.duration_s,
            "warmup_s": suite.warmup_s,
            "repeat": suite.repeat,
        }
        emit({**base, "kind": "run", "info": info, "suite_settings": settings})
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="agbench-") as tmp:
            workdir = Path(tmp)
            with servers.fake_upstream(workdir) as upstream_url:
                ctx = Context(workdir, upstream_url)
                for repeat in range(suite.repeat):
                    print(f"repeat {repeat + 1}/{suite.repeat}", flush=True)
                    for scenario in suite.scenarios:
                        run_scenario(scenario, suite, ctx, {**base, "repeat": repeat}, emit)
        if suite.sink_seconds > 0:
            run_sinks(suite, base, emit)
        elapsed = time.monotonic() - started
    info["elapsed_s"] = int(elapsed)
    write_markdown(a.markdown, suite, rows, info)
    print(f"done in {elapsed:.0f} s; wrote {a.markdown} and appended to {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
