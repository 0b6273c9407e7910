"""``auditgate verify`` on a trail whose checkpoint signature was forged with characters beyond
ASCII: reported as a bad signature, like any other forgery, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditgate.cli.main import main
from tests.cli.test_verify import KEY, findings, trail

__all__ = ["trail"]  # the fixture, shared with test_verify


def test_a_non_ascii_signature_is_a_bad_signature(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint at seq 4 signed 'é…' instead of its hex HMAC: exit 1, that checkpoint a
    bad signature (and its record modified), the final one still good."""
    lines = trail.read_text().splitlines()
    record = json.loads(lines[4])
    signature = record["metadata"]["signature"]
    record["metadata"]["signature"] = "\u00e9" * len(signature)
    lines[4] = json.dumps(record)
    trail.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("DYN_AUDIT_INTEGRITY_KEY", KEY)
    capsys.readouterr()
    code = main(["verify", "--json", str(trail)])
    report = json.loads(capsys.readouterr().out)
    kinds = sorted({kind for kind, seq, _ in findings(report) if seq == 4})
    assert (code, "bad_signature" in kinds) == (1, True), findings(report)
