"""The composition root: what it builds from settings, and a flush that proves absence."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from auditgate.audit.bus import AuditBus
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.runtime import AuditRuntime
from auditgate.audit.sink import BatchPolicy, MemorySink
from auditgate.audit.spool.durable import DurableBus
from auditgate.config import AuditSettings


class LingeringSink(MemorySink):
    """A memory sink whose worker waits up to 30 s for a fuller batch, like a file sink."""

    batching = BatchPolicy(max_records=100, linger_s=30.0)


def capture(runtime: AuditRuntime, request_id: str, content: str) -> None:
    """One stored exchange through the runtime's auditor, finished."""
    opened = runtime.auditor.open(
        request_id=request_id,
        body={"model": "m", "messages": [{"role": "user", "content": content}]},
        model="m",
        streaming=False,
        store=True,
    )
    assert opened is not None
    opened.response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})
    opened.finish()


@pytest.mark.parametrize("durability", ["best_effort", "durable"])
async def test_flush_delivers_records_still_waiting_for_the_processors(
    durability: str, tmp_path: Path
) -> None:
    """A record queued for redaction and a worker lingering for 30 s: flush returns with the
    record redacted in the sink, well before the linger would have ended."""
    sink = LingeringSink()
    settings = AuditSettings(
        enabled=True, redact=("email",), durability=durability, spool_dir=str(tmp_path)
    )
    runtime = AuditRuntime(settings, AuditMetrics(), engine="mock", sinks=[sink])
    await runtime.start()
    try:
        capture(runtime, "r1", "write to bob@example.com")
        assert sink.records == []  # redaction runs at the end of this loop iteration
        started = time.monotonic()
        assert await runtime.flush(timeout=10.0)
        assert time.monotonic() - started < 10.0
        [record] = sink.records
        assert record.request == {
            "model": "m",
            "messages": [{"role": "user", "content": "write to [REDACTED:email]"}],
        }
    finally:
        assert await runtime.stop(5.0) == {"memory": 0}


@pytest.mark.parametrize(
    ("durability", "bus_type"), [("best_effort", AuditBus), ("durable", DurableBus)]
)
def test_the_bus_follows_the_durability_setting(
    durability: str, bus_type: type, tmp_path: Path
) -> None:
    """DYN_AUDIT_DURABILITY picks the bus; its ``durable`` capability says what publish returns."""
    settings = AuditSettings(enabled=True, durability=durability, spool_dir=str(tmp_path))
    runtime = AuditRuntime(settings, AuditMetrics(), engine="mock", sinks=[MemorySink()])
    assert isinstance(runtime.bus, bus_type)
    assert runtime.bus.durable is (durability == "durable")


async def test_audit_off_builds_no_bus_and_every_call_returns_at_once() -> None:
    """With audit off there is no bus: no capture is opened, flush and stop have nothing to do."""
    runtime = AuditRuntime(AuditSettings(), AuditMetrics(), engine="mock", sinks=[MemorySink()])
    await runtime.start()
    opened = runtime.auditor.open(request_id="r", body={}, model="m", streaming=False, store=True)
    assert (runtime.bus, opened, runtime.enabled) == (None, None, False)
    assert await runtime.flush()
    assert await runtime.stop(1.0) == {}


async def test_audit_settings_given_with_audit_off_are_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sinks and durable mode set without DYN_AUDIT_ENABLED record nothing: the start says so
    at WARNING, naming them, instead of an INFO line a newcomer overlooks."""
    settings = AuditSettings.from_env(
        {"DYN_AUDIT_SINKS": "jsonl", "DYN_AUDIT_DURABILITY": "durable"}
    )
    runtime = AuditRuntime(settings, AuditMetrics(), engine="mock")
    with caplog.at_level("WARNING", logger="auditgate"):
        await runtime.start()
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage() == (
        "audit is OFF (DYN_AUDIT_ENABLED is not set), so these audit settings do nothing: "
        "sinks, durability; set DYN_AUDIT_ENABLED=1 to record chat completions"
    )


async def test_audit_off_with_default_settings_warns_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Audit off and nothing else configured is a plain choice, not a mistake."""
    runtime = AuditRuntime(AuditSettings.from_env({}), AuditMetrics(), engine="mock")
    with caplog.at_level("WARNING", logger="auditgate"):
        await runtime.start()
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
