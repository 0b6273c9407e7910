"""Durable mode never turns a failed audit step into an unaudited success."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from auditgate.audit.capture import Auditor
from auditgate.audit.commit import CommitError
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.processors import Processors
from auditgate.audit.record import AuditRecord
from auditgate.audit.runtime import build_bus
from auditgate.audit.sink import MemorySink
from auditgate.config import AuditSettings


def broken(record: AuditRecord, credentials: Sequence[str]) -> AuditRecord:
    raise RuntimeError("detector blew up")


@pytest.mark.parametrize("durability", ["best_effort", "durable"])
async def test_processor_failure_fails_the_commit_only_in_durable_mode(
    durability: str, tmp_path: Path
) -> None:
    """A failing processor drops the record (counted); a durable bus also fails its commit."""
    metrics = AuditMetrics()
    settings = AuditSettings(enabled=True, durability=durability, spool_dir=str(tmp_path / "spool"))
    bus = build_bus(settings, [MemorySink()], metrics)
    await bus.start()
    auditor = Auditor(settings, bus, metrics, engine="mock", processors=Processors([broken], None))
    capture = auditor.open(
        request_id="r1", body={"model": "m"}, model="m", streaming=False, store=True
    )
    assert capture is not None
    commit = capture.finish()
    # Processors run in a batch at the end of this event-loop iteration.
    if durability == "best_effort":
        assert commit is None
        await asyncio.sleep(0)
    else:
        assert commit is not None
        with pytest.raises(CommitError, match="detector blew up"):
            await commit
    dropped = metrics.registry.get_sample_value(
        "auditgate_audit_dropped_total", {"sink": "*", "reason": "processor_error"}
    )
    assert (dropped, bus.pending()) == (1.0, 0)
    assert await bus.close(5.0) == {"memory": 0}
