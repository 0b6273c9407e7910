"""A durable gateway with integrity on, killed (SIGKILL) mid-load: the gateway that restarts on
its spool seals the killed writer's chain with a signed recovery checkpoint, so ``auditgate
verify`` finds every trail sealed (DESIGN §3, §6)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.test_durable import _sqlite_ids, load_until_killed, wait_for
from tests.e2e.test_full_volume import answer_all
from tests.support.gateway import clean_env, start_gateway

KEY = "recovery-seal-key"


def verify(source: str, cwd: Path) -> tuple[int, dict[str, Any], str]:
    """``auditgate verify SOURCE`` (JSON, then text) with the key in the environment: exit
    code, JSON report, text report."""
    env = clean_env({"DYN_AUDIT_INTEGRITY_KEY": KEY})
    runs = [
        subprocess.run(
            [sys.executable, "-m", "auditgate", "verify", *flags, source],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for flags in (["--json"], [])
    ]
    assert runs[0].returncode == runs[1].returncode, runs[1].stdout + runs[1].stderr
    return runs[0].returncode, json.loads(runs[0].stdout), runs[1].stdout


def summary(writer: dict[str, Any]) -> tuple[bool, bool, str | None, list[str]]:
    """(intact, final, sealed_by, kinds of damage found) of one writer's report."""
    damage = [f["kind"] for f in writer["findings"] if f["damage"]]
    return writer["intact"], writer["final"], writer["sealed_by"], damage


def test_a_killed_writers_chain_is_sealed_on_recovery(tmp_path: Path) -> None:
    """SIGKILL mid-load with integrity on, restart, clean stop: verify reports the jsonl and
    the SQLite trail intact, the killed writer sealed on recovery by its successor, nothing
    unsealed or open."""
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_DURABILITY": "durable",
        "DYN_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        "DYN_AUDIT_SINKS": "jsonl,sqlite",
        "DYN_AUDIT_OUTPUT_PATH": str(tmp_path / "audit.jsonl"),
        "DYN_AUDIT_SQLITE_PATH": str(tmp_path / "audit.db"),
        "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": "10",
        "DYN_AUDIT_INTEGRITY": "1",
        "DYN_AUDIT_INTEGRITY_KEY": KEY,
        "DYN_AUDIT_CHECKPOINT_EVERY": "64",
        "AUDITGATE_MOCK_ITL_MS": "1",
    }
    gateway = start_gateway(env, log_dir=tmp_path)
    try:
        answered = {rid for rid, ok in load_until_killed(gateway, kill_after=150) if ok}
    finally:
        if gateway.process.poll() is None:  # the load failed before the kill: no leftover
            gateway.process.kill()
            gateway.process.wait(10)
    assert gateway.process.returncode == -signal.SIGKILL
    killed = gateway.log().split("writer=")[1].split()[0]
    restarted = start_gateway(env, log_dir=tmp_path)
    try:
        answered |= set(answer_all(restarted, 10))
        stored = wait_for(lambda: _sqlite_ids(tmp_path / "audit.db"), answered)
        assert answered - set(stored) == set()
    finally:
        assert restarted.stop() == 0
    successor = restarted.log().split("writer=")[1].split()[0]
    for source in ("audit.jsonl", "audit.db"):
        code, report, text = verify(str(tmp_path / source), tmp_path)
        writers = {w["writer"]: summary(w) for w in report["writers"]}
        assert (code, report["intact"], report["invalid"]) == (0, True, []), text
        assert writers == {
            killed: (True, True, successor, []),
            successor: (True, True, None, []),
        }
        assert f"(final, sealed on recovery by {successor})" in text
