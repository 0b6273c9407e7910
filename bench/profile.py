"""Where an auditgate scenario's CPU goes: py-spy samples under bench load, per request.

``python bench/profile.py --engine mock --audit jsonl [--stream] [--concurrency 16]
[--seconds 8] [--top 20] [--gil] [--against off] [--set KEY=VALUE ...] [--path /v1/responses
--against-path /v1/chat/completions]``

Starts the scenario pinned to the server CPU (as :mod:`bench.run` does), drives it with
:mod:`bench.loadgen` on the client CPU, and records ``py-spy record --format raw`` (250 Hz, idle
excluded) of the server for ``seconds`` in the middle of the load.  Prints the top frames by
self time and the auditgate frames by inclusive time, both in **microseconds of CPU per request**
(samples / rate / requests in the window), so two scenarios can be subtracted: with
``--against off`` the same is done for the audit-off scenario and the self-time difference is
printed, which is the audit's cost frame by frame.  Garbage collection has no frame of its own in
py-spy: its time lands in whatever frame allocated.  Needs ``py-spy`` (the ``dev`` extra) and
permission to ptrace (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import collections
import dataclasses
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import servers
from bench.servers import CLIENT_CPUS, PYTHON, ROOT, Context, Scenario

RATE_HZ = 250
_FRAME = re.compile(r"(.*) \((.*):(\d+)\)")


def short(frame: str) -> str:
    """``func (path:line)`` → ``func (package/module.py)``."""
    m = _FRAME.fullmatch(frame)
    if m is None:
        return frame
    func, path, _ = m.groups()
    return f"{func} ({path.split('site-packages/')[-1].split('src/')[-1]})"


def profile(
    scenario: Scenario,
    ctx: Context,
    stream: bool,
    concurrency: int,
    seconds: float,
    gil: bool = False,
) -> tuple[dict[str, float], dict[str, float], float]:
    """(self µs/req by frame, inclusive µs/req by frame, req/s) of one scenario under load."""
    running = scenario.start(ctx)
    out = ctx.workdir / f"stacks-{scenario.audit}.txt"
    try:
        argv = [
            PYTHON, str(ROOT / "bench" / "loadgen.py"), "--url", running.url,
            "--concurrency", str(concurrency), "--warmup", "1", "--duration", str(seconds + 3),
            "--pid", str(running.pids[0]), "--path", scenario.path,
        ] + (["--stream"] if stream else [])  # fmt: skip
        load = subprocess.Popen(
            servers.pinned(CLIENT_CPUS, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(2.5)
        spy = [
            str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", str(running.pids[0]),
            "--format", "raw", "-o", str(out), "-d", str(int(seconds)), "-r", str(RATE_HZ),
            "--nonblocking",
        ] + (["--gil"] if gil else [])  # fmt: skip
        subprocess.run(
            servers.pinned(CLIENT_CPUS, spy), capture_output=True, check=True, timeout=seconds + 60
        )
        stdout, stderr = load.communicate(timeout=seconds + 60)
        if load.returncode != 0:
            raise RuntimeError(f"loadgen failed: {stderr.decode()[-2000:]}")
    finally:
        running.stop()
    rps = float(json.loads(stdout)["rps"])
    per_request = 1e6 / RATE_HZ / (rps * int(seconds))
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        frames = [short(f) for f in stack.split(";")]
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return (
        {f: n * per_request for f, n in own.items()},
        {f: n * per_request for f, n in inclusive.items()},
        rps,
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--engine", choices=("mock", "openai"), default="mock")
    p.add_argument("--audit", default="jsonl", help="off or a sink name")
    p.add_argument("--against", help="a second audit setting to subtract (e.g. off)")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--path", default=servers.CHAT, help="the endpoint loaded, for --audit")
    p.add_argument("--against-path", default=None, help="the endpoint for --against (--path)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--top", type=int, default=20)
    p.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (a thread waiting for it is not counted)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server setting for --audit only (e.g. DYN_AUDIT_INTEGRITY=1; repeatable)",
    )
    p.add_argument(
        "--against-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server setting for --against only (repeatable)",
    )
    a = p.parse_args(argv)
    runs = [(a.audit, a.set, a.path)]
    if a.against:
        runs.append((a.against, a.against_set, a.against_path or a.path))
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="agbench-prof-") as tmp,
        servers.fake_upstream(Path(tmp)) as upstream_url,
    ):
        ctx = Context(Path(tmp), upstream_url)
        for audit, settings, path in runs:
            (scenario,) = servers.auditgate_scenarios([a.engine], [audit], path)
            env = tuple((k, v) for k, _, v in (kv.partition("=") for kv in settings))
            scenario = dataclasses.replace(scenario, env=env)
            results.append(profile(scenario, ctx, a.stream, a.concurrency, a.seconds, a.gil))
    own, inclusive, rps = results[0]
    print(f"{a.engine} audit={a.audit} {'stream' if a.stream else 'json'} c={a.concurrency}: "
          f"{rps:.0f} req/s, {sum(own.values()):.1f} µs/req sampled")  # fmt: skip
    print("\nself µs/req")
    for frame, us in sorted(own.items(), key=lambda x: -x[1])[: a.top]:
        print(f"{us:7.1f}  {frame}")
    print("\ninclusive µs/req, auditgate frames")
    mine = [(f, us) for f, us in inclusive.items() if "auditgate/" in f]
    for frame, us in sorted(mine, key=lambda x: -x[1])[: a.top]:
        print(f"{us:7.1f}  {frame}")
    if a.against:
        base, _, base_rps = results[1]
        print(f"\naudit={a.against}: {base_rps:.0f} req/s, {sum(base.values()):.1f} µs/req sampled")
        print(f"\nself µs/req, audit={a.audit} minus audit={a.against}")
        diff = {f: own.get(f, 0.0) - base.get(f, 0.0) for f in set(own) | set(base)}
        for frame, us in sorted(diff.items(), key=lambda x: -x[1])[: a.top]:
            print(f"{us:7.1f}  {frame}")


if __name__ == "__main__":
    main()
