"""What record a request gets (DESIGN §2, §3): mode selection and deterministic sampling, on
the auditor alone — no server, no bus traffic."""

from __future__ import annotations

import uuid

import pytest

from auditgate.audit.bus import AuditBus
from auditgate.audit.capture import Auditor
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.sink import MemorySink
from auditgate.config import AuditSettings


def auditor(**settings: object) -> Auditor:
    audit = AuditSettings(**settings)  # type: ignore[arg-type]
    metrics = AuditMetrics()
    bus = AuditBus([MemorySink()], capacity=8, metrics=metrics) if audit.enabled else None
    return Auditor(audit, bus, metrics, engine="mock")


IDS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(4000)]


@pytest.mark.parametrize(
    ("settings", "store", "expected"),
    [
        ({}, True, None),  # audit off: nothing, whatever store says
        ({"enabled": True}, True, "full"),
        ({"enabled": True}, False, "usage_only"),
        ({"enabled": True, "usage_records": False}, False, None),
        ({"enabled": True, "usage_records": False}, True, "full"),
        ({"enabled": True, "force_logging": True}, False, "full"),
        ({"enabled": True, "force_logging": True, "usage_records": False}, False, "full"),
        ({"enabled": True, "sample_rate": 0.0}, True, "full"),  # store: true is never sampled
        ({"enabled": True, "sample_rate": 0.0}, False, None),
        ({"enabled": True, "force_logging": True, "sample_rate": 0.0}, False, None),
    ],
)
def test_mode_selection(settings: dict[str, object], store: bool, expected: str | None) -> None:
    """One row per rule: off, store, usage records, force logging, sampling."""
    assert auditor(**settings).mode_for("0198c0de-0000-7000-8000-000000000001", store) == expected


@pytest.mark.parametrize("mode_settings", [{}, {"force_logging": True}])
def test_sampling_keeps_about_the_rate_and_the_same_ids_every_time(
    mode_settings: dict[str, object],
) -> None:
    """At 0.25 about a quarter of the ids yield a record, the same ids in every process (a hash
    of the id, not a random draw), and the ones kept at 0.25 are kept at 0.5 too."""
    quarter = auditor(enabled=True, sample_rate=0.25, **mode_settings)
    again = auditor(enabled=True, sample_rate=0.25, **mode_settings)
    half = auditor(enabled=True, sample_rate=0.5, **mode_settings)
    kept = [i for i in IDS if quarter.mode_for(i, False) is not None]
    assert 850 <= len(kept) <= 1150  # 1000 expected; binomial sd ~27
    assert kept == [i for i in IDS if again.mode_for(i, False) is not None]
    assert set(kept) <= {i for i in IDS if half.mode_for(i, False) is not None}
    assert all(quarter.mode_for(i, True) == "full" for i in IDS)


def test_rates_zero_and_one_are_exact() -> None:
    """0 keeps no sampled record and 1 keeps every one, with no hash edge cases."""
    none, every = auditor(enabled=True, sample_rate=0.0), auditor(enabled=True, sample_rate=1.0)
    assert [none.mode_for(i, False) for i in IDS] == [None] * len(IDS)
    assert [every.mode_for(i, False) for i in IDS] == ["usage_only"] * len(IDS)
