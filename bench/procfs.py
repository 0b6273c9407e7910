"""CPU time and peak memory of a server's process tree, read from ``/proc``.

A server under test may be several processes (uvicorn workers, Dynamo's frontend plus its
mocker, a LiteLLM proxy's workers), so every reading covers the given root pids *and all their
descendants*, found by walking the ``ppid`` links of ``/proc/*/stat``.  CPU time is
``utime + stime`` of each live process (all threads); a process that exits between two readings
takes its time with it, which only matters for servers that fork per request (none here).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this harness uses."""

    pid: int
    ppid: int
    cpu_s: float
    """``utime + stime`` in seconds."""


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or ``None`` if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]; ppid=4, utime=14, stime=15.
    return ProcStat(pid, int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK)


def all_stats() -> dict[int, ProcStat]:
    """Every live process's stat, by pid."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def process_tree(roots: Iterable[int], stats: dict[int, ProcStat] | None = None) -> list[int]:
    """``roots`` (those still alive) and all their descendants, each once."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    seen: list[int] = []
    todo = [pid for pid in roots if pid in stats]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children.get(pid, ()))
    return seen


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """Sum of ``utime + stime`` over the process trees of ``roots``, in seconds."""
    stats = all_stats()
    return sum(stats[pid].cpu_s for pid in process_tree(roots, stats))


def cpu_seconds(pids: Iterable[int]) -> float:
    """Sum of ``utime + stime`` over ``pids`` themselves (not their descendants), in seconds."""
    total = 0.0
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            total += stat.cpu_s
    return total


def peak_rss_bytes(pid: int) -> int:
    """``VmHWM`` (peak resident set) of one process in bytes; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process in bytes (``/proc/<pid>/smaps_rollup``): its
    resident pages, each shared page divided among the processes mapping it — so the sum over
    a tree counts the interpreter and libraries a parent and child share once; 0 if gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def tree_peak_rss_bytes(roots: Iterable[int]) -> int:
    """Sum of ``VmHWM`` over the process trees of ``roots``, in bytes."""
    return sum(peak_rss_bytes(pid) for pid in process_tree(roots))
