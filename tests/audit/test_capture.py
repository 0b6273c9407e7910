"""The Auditor's processor batches keep one order: seq, chain and checkpoints."""

from __future__ import annotations

import msgspec

from auditgate.audit.bus import AuditBus
from auditgate.audit.capture import Auditor
from auditgate.audit.integrity import HmacSigner
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.processors import IntegrityChain, Processors
from auditgate.audit.sink import MemorySink
from auditgate.audit.verify import Verifier
from auditgate.config import AuditSettings
from tests.store.records import make_record

KEY = "batch-key"


async def test_batched_records_keep_seq_chain_and_checkpoint_order() -> None:
    """Records published in one event-loop iteration are processed as one batch after it:
    ``seq`` follows publish order, each record links to the one before, count checkpoints
    land every ``every`` records, and an explicit checkpoint seals what was still queued."""
    metrics = AuditMetrics()
    sink = MemorySink()
    bus = AuditBus([sink], capacity=1024, metrics=metrics)
    await bus.start()
    chain = IntegrityChain(HmacSigner(KEY), engine="mock", every=5)
    auditor = Auditor(
        AuditSettings(enabled=True),
        bus,
        metrics,
        engine="mock",
        processors=Processors([], chain),
    )
    ids = [f"r{i}" for i in range(12)]
    for request_id in ids:
        assert auditor.publish(make_record(0, request_id=request_id)) is None
    # Nothing is stamped until the loop turns: the batch runs after this iteration.
    assert chain.head == "0" * 64
    final = auditor.checkpoint("shutdown", final=True)
    assert final is None
    assert await bus.flush(timeout=5)
    await bus.close(5)
    lines = [msgspec.json.decode(line) for line in sink.lines]
    assert [r["seq"] for r in lines] == list(range(len(lines)))
    requests = [r["request_id"] for r in lines if r["mode"] != "checkpoint"]
    assert requests == ids
    checkpoints = [r["seq"] for r in lines if r["mode"] == "checkpoint"]
    assert checkpoints == [5, 11, 14]  # after 5 and 10 records, then the final one
    # The stage's own clock, for the cost per record (bench.integrity reads it).
    seconds = metrics.registry.get_sample_value("auditgate_audit_processing_seconds_total")
    assert seconds is not None and seconds > 0
    verifier = Verifier(signer=HmacSigner(KEY))
    for index, line in enumerate(lines):
        verifier.add(f"line {index}", line)
    assert verifier.report().intact
