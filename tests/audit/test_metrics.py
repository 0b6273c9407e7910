"""Live gauges: read at scrape time in one process, written periodically when shared."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditgate.audit import metrics as metrics_module
from auditgate.audit.metrics import MULTIPROCESS_ENV, AuditMetrics


def test_one_process_reads_a_watched_gauge_at_scrape_time() -> None:
    """Without a shared metrics directory the gauge calls its function on every collection."""
    m = AuditMetrics()
    depth = [3]
    m.watch(m.queue_depth.labels("db"), lambda: depth[0])
    depth[0] = 5
    assert m.registry.get_sample_value("auditgate_audit_queue_depth", {"sink": "db"}) == 5


async def test_shared_metrics_write_watched_gauges_until_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR another process cannot call the function, so the value
    is written at watch time, every REFRESH_S while running, and once more at stop."""
    monkeypatch.setenv(MULTIPROCESS_ENV, "/nonexistent-not-used-by-plain-values")
    monkeypatch.setattr(metrics_module, "REFRESH_S", 0.01)
    m = AuditMetrics()
    depth = [3]
    m.watch(m.queue_depth.labels("db"), lambda: depth[0])

    def value() -> float | None:
        return m.registry.get_sample_value("auditgate_audit_queue_depth", {"sink": "db"})

    assert value() == 3
    m.start_refresh()
    depth[0] = 7
    await asyncio.sleep(0.1)
    assert value() == 7
    depth[0] = 9
    await m.stop_refresh()
    assert value() == 9
    depth[0] = 11
    await asyncio.sleep(0.05)
    assert value() == 9  # stopped: no more writes


_CRASHING_WORKER = """
import os
from auditgate.audit.metrics import AuditMetrics
m = AuditMetrics()
m.records.labels("full").inc(3)
m.watch(m.queue_depth.labels("db"), lambda: 5)
os._exit(0)  # dies without stopping: no mark_process_dead
"""

_SCRAPING_WORKER = """
from auditgate.audit.metrics import AuditMetrics, exposition
m = AuditMetrics()
m.records.labels("full").inc(1)
m.watch(m.queue_depth.labels("db"), lambda: 2)
print(exposition(m.registry).decode())
"""


def test_shared_metrics_sum_counters_and_forget_a_dead_workers_gauges(tmp_path: Path) -> None:
    """Across processes: counters add up, including a crashed worker's; live gauges count
    only processes that are still alive (a crashed worker's queue depth is not stuck)."""
    env = {**os.environ, MULTIPROCESS_ENV: str(tmp_path)}
    for program in (_CRASHING_WORKER, _SCRAPING_WORKER):
        done = subprocess.run(
            [sys.executable, "-c", program],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    text = done.stdout
    assert 'auditgate_audit_records_total{mode="full"} 4.0' in text
    assert 'auditgate_audit_queue_depth{sink="db"} 2.0' in text
